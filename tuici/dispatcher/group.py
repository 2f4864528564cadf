"""A dispatcher as one of a group sharing a PostgreSQL store: it stands by, leads while it holds the lease, and
steps down the moment it may have lost it.

Standing by, it serves its addresses all the same, answering every peer with the active one's address (which
clients follow, ``wire.handshake``). Leading, it renews the lease every quarter of its length and trusts it only
until ``LEASE_TRUST`` of its length after the last renewal began, by its own monotonic clock: past that, or once
a write is refused for a newer epoch, it hands out no job and stops. Its successor loads the record after the last
write the old one made (``pgstore``), and runners and observers move to it with what they hold.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import time

from .. import wire as p
from ..errors import ConfigError, LeaseLost
from ..pgstore import PgJobLogs, PgStore
from ..statedir import StateDir

log = logging.getLogger("tuici.dispatcher")

LEASE_TRUST = 0.8  # of the lease's length after a renewal began: how long we act on it without another
STANDBY_POLL = 0.2  # seconds between a standby's tries to take the lease (a killed leader frees it at once)
PAUSE_AFTER_LOSS = 1.0  # before standing by again after stepping down


class Leadership:
    """What a dispatcher of a group knows of its standing; ``Dispatcher`` asks it before every job it hands out."""

    def __init__(self, dsn: str, name: str, address: str, lease_seconds: float):
        self.lease_seconds = lease_seconds
        self.store = PgStore(dsn, holder=name, address=address, lease_seconds=lease_seconds)
        self.logs = PgJobLogs(dsn, name)
        self.name = name
        self.address = address
        self.active_address = ""  # the active dispatcher's, as a standby last read it (ours once we lead)
        self.epoch = 0
        self.deadline = 0.0  # monotonic: act on the lease until then
        self.lost_reason = ""
        self._lost = asyncio.Event()
        self.members: list[p.DispatcherInfo] = []  # the group as last read, for status

    async def read_members(self) -> None:
        rows = await self.store.group(within=3 * self.lease_seconds)
        self.members = [p.DispatcherInfo(name=h, address=a, role="active" if lead else "standby", seen_at=seen)
                        for h, a, lead, seen in rows]

    def may_act(self) -> bool:
        return self.epoch > 0 and not self.lost_reason and time.monotonic() < self.deadline

    def lost(self, reason: str) -> None:
        if not self.lost_reason:
            self.lost_reason = reason
            self._lost.set()

    async def stand_by(self, stop: asyncio.Event) -> bool:
        """Wait until we hold the lease (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            began = time.monotonic()
            try:
                epoch = await self.store.try_lead()
                if epoch is not None:
                    self.epoch, self.deadline = epoch, began + self.lease_seconds * LEASE_TRUST
                    self.active_address = self.address
                    return True
                leader = await self.store.leader()
                self.active_address = leader[1] if leader else ""
                await self.store.seen()
            except Exception as exc:  # the database unreachable: keep standing by, say so
                log.warning("standing by: cannot reach the store %s: %s", self.store.path, exc)
                await asyncio.sleep(1.0)
            try:
                await asyncio.wait_for(stop.wait(), STANDBY_POLL)
            except asyncio.TimeoutError:
                pass
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew the lease until ``stop`` is set or we lose it (then ``lost_reason`` says why)."""
        interval = self.lease_seconds / 4
        while not stop.is_set() and not self.lost_reason:
            waiter = asyncio.ensure_future(self._lost.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait([waiter, stopper], timeout=max(0.0, min(interval, self.deadline - time.monotonic())),
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if stop.is_set() or self.lost_reason:
                return
            began = time.monotonic()
            if began >= self.deadline:
                self.lost(f"the lease was not renewed in time (it is {self.lease_seconds:g} s)")
                return
            # Not wait_for: cancelling a query on a dead link can take psycopg seconds, and we must not wait.
            renewal = asyncio.ensure_future(self.store.renew())
            done, _ = await asyncio.wait([renewal], timeout=max(0.05, self.deadline - began))
            if not done:
                renewal.cancel()
                self.lost(f"the lease could not be renewed within its {self.lease_seconds:g} s (the database "
                          "is out of reach)")
                return
            try:
                renewed = renewal.result()
            except Exception as exc:  # the database's error: try again while the lease lasts
                log.warning("could not renew the lease: %s", exc)
                continue
            if not renewed:
                self.lost("another dispatcher holds the lease now")
                return
            self.deadline = began + self.lease_seconds * LEASE_TRUST
            try:
                await self.read_members()
            except Exception as exc:  # only status shows it
                log.warning("could not read the group's members: %s", exc)


async def run_group_member(state: StateDir, tcp: p.TcpAddress | None, dsn: str, lease_seconds: float,
                           advertise: str, stop: asyncio.Event, tls: ssl.SSLContext | None = None,
                           socks: list[socket.socket] | None = None, **kwargs) -> None:
    """Serve as one dispatcher of the group on ``dsn`` until ``stop``: stand by, lead, step down, stand by again."""
    from .server import Dispatcher

    state.ensure()
    bound = socks or p.listeners(str(state.socket), tcp)
    first = True
    try:
        while not stop.is_set():
            group = Leadership(dsn, name=f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
                               address=advertise or _default_advertise(state, bound), lease_seconds=lease_seconds)
            try:
                await group.store.connect()
            except ConfigError as exc:
                if first:  # a wrong URL or password: say so and stop
                    raise
                log.warning("cannot stand by yet: %s", exc)
                await asyncio.sleep(PAUSE_AFTER_LOSS)
                continue
            first = False
            _keep_token(state, await group.store.group_token())
            dispatcher = Dispatcher(state, tcp, tls=tls, socks=[sock.dup() for sock in bound], group=group, **kwargs)
            try:
                await dispatcher.start()
                log.info("dispatcher %s stands by (store %s, lease %g s)", group.name, group.store.path,
                         lease_seconds)
                if not await group.stand_by(stop):
                    return
                await dispatcher.activate()
                await group.read_members()
                dispatcher.announce_active()
                log.info("dispatcher %s is active (epoch %d)", group.name, group.epoch)
                await group.hold(stop)
                if group.lost_reason:
                    log.error("stepping down: %s", group.lost_reason)
            except LeaseLost as exc:
                log.error("stepping down: %s", exc)
            finally:
                await dispatcher.stop()
            if not stop.is_set():
                await asyncio.sleep(PAUSE_AFTER_LOSS)
    finally:
        if not socks:
            for sock in bound:
                sock.close()
            p.remove_socket_file(str(state.socket))


def _default_advertise(state: StateDir, socks: list[socket.socket]) -> str:
    """A TCP address we listen on (for other machines), else our Unix socket (a group on one machine)."""
    for sock in socks:
        if sock.family != socket.AF_UNIX:
            return str(p.address_of(sock))
    return str(p.UnixAddress(str(state.socket)))


def _keep_token(state: StateDir, token: str) -> None:
    """The group's token in our state dir, where local clients look for it."""
    try:
        if state.token() == token:
            return
    except FileNotFoundError:
        pass
    tmp = state.token_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    tmp.replace(state.token_file)
