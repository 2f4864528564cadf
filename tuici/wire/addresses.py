"""Where a dispatcher is and how to reach it: addresses, endpoints, listening sockets, TLS contexts.

Neither asyncio nor ssl is imported here (ssl only where a context is made): the one-shot commands (status,
log, rerun, cancel) use a blocking socket and start ~30 ms sooner without them.
"""

from __future__ import annotations

import errno
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Union

from ..statedir import StateDir, resolve_token
from .errors import NoDispatcher

if TYPE_CHECKING:
    import ssl

BACKLOG = 1024  # connections the kernel queues per listening socket until they are accepted (somaxconn caps it)


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UnixAddress:
    """A Unix socket, for components on the dispatcher's machine: it is in the state dir, which the sandbox hides
    from the code under test (that shares 127.0.0.1 with everything local)."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


Address = Union[TcpAddress, UnixAddress]


@dataclass(eq=False)
class Endpoint:
    """Where a dispatcher is and how to join it: one address, or those of a group of dispatchers sharing one
    store, of which one is active at a time. The one that last answered is tried first."""

    addresses: tuple[Address, ...]
    token: str
    tls: ssl.SSLContext | None = None  # over TCP, verifies the dispatcher's certificate when set
    preferred: int = 0

    @property
    def address(self) -> Address:
        return self.addresses[self.preferred]

    def in_turn(self) -> list[Address]:
        """Every address, the preferred first, then the rest in their order."""
        return [*self.addresses[self.preferred:], *self.addresses[:self.preferred]]

    def prefer(self, address: Address) -> None:
        """Try ``address`` first from now on (added when a standby named one we did not know)."""
        if address not in self.addresses:
            self.addresses = (*self.addresses, address)
        self.preferred = self.addresses.index(address)

    def __str__(self) -> str:
        return ",".join(map(str, self.in_turn())) if len(self.addresses) > 1 else str(self.address)


class Tour:
    """The addresses a client tries, one after the other, to reach the active dispatcher of an endpoint: the
    preferred first, then the rest; a standby's pointer to the active one (``follow``) goes next. Each address
    once, so two standbys naming each other end the tour. Pure: the caller connects and reports."""

    def __init__(self, endpoint: Endpoint):
        self._pending = endpoint.in_turn()
        self._tried: list[Address] = []

    def next(self) -> Address | None:
        """The next address to try, or None when every one has been."""
        while self._pending:
            address = self._pending.pop(0)
            if address not in self._tried:
                self._tried.append(address)
                return address
        return None

    def follow(self, active: str) -> None:
        """A standby named ``active`` as the active dispatcher: try it next (unless it names no address)."""
        try:
            self._pending.insert(0, parse_address(active))
        except ValueError:
            pass


def client_tls(cafile: str | None) -> ssl.SSLContext | None:
    if not cafile:
        return None
    import ssl

    return ssl.create_default_context(cafile=cafile)


def server_tls(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if not certfile:
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def address_of(sock: socket.socket) -> TcpAddress:
    """A listening TCP socket's address."""
    host, port = sock.getsockname()[:2]
    return TcpAddress(host, port)


def parse_address(text: str) -> Address:
    """``HOST:PORT``, ``[v6]:PORT`` or ``unix:/ABSOLUTE/PATH`` into an address, with a clear error."""
    if text.startswith("unix:"):
        if not os.path.isabs(text[5:]):
            raise ValueError(f"address {text!r} is not unix:/ABSOLUTE/PATH")
        return UnixAddress(text[5:])
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {text!r} is not HOST:PORT or unix:/ABSOLUTE/PATH")
    return TcpAddress(host.strip("[]"), int(port))


def parse_addresses(text: str) -> tuple[Address, ...]:
    """A comma-separated list of addresses (the dispatchers of a group), each as ``parse_address`` takes it."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("no dispatcher address given")
    return tuple(parse_address(part) for part in parts)


SUN_PATH_MAX = 107  # the bytes of a path a Unix socket address holds (Linux: 108, with the NUL)


@contextmanager
def socket_path(path: str) -> Iterator[str]:
    """``path`` as bind() and connect() take it: itself, or, when it is longer than a socket address holds (a
    repository deep in a temp dir), the same file through a descriptor of its directory: /proc/self/fd/N/NAME
    (Linux). The socket stays in the state dir, where the sandbox hides it; a short path elsewhere (/tmp) would
    not be hidden."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    folder, name = os.path.split(path)
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def _unix_listener(path: str) -> socket.socket:
    """A socket listening at ``path`` that only its owner may connect to. A socket file left there by a dispatcher
    that is gone is replaced; one that still answers is not (``OSError`` EADDRINUSE)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_path(path) as short:
            try:
                sock.bind(short)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or _answers(short):
                    raise
                os.unlink(short)
                sock.bind(short)
            os.chmod(short, 0o600)  # before listen(): until then nobody can connect
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _answers(path: str) -> bool:
    """Whether something listens at the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:  # refused: nobody listens there any more
            return False
    return True


def remove_socket_file(path: str) -> None:
    """Remove the file of a Unix socket we bound, once we stop listening: left behind, it would look served."""
    with socket_path(path) as short:
        try:
            os.unlink(short)
        except FileNotFoundError:
            pass


def _tcp_listener(address: TcpAddress) -> socket.socket:
    """A socket listening at ``address`` (IPv4 or IPv6, as the host resolves)."""
    family = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((address.host, address.port), family=family, backlog=BACKLOG)


def listeners(path: str, tcp: TcpAddress | None) -> list[socket.socket]:
    """The dispatcher's listening sockets: its Unix socket at ``path``, and a TCP one at ``tcp`` if given. If one
    cannot be bound, none stays bound, and the ``OSError`` names its address (as ``filename``)."""
    socks: list[socket.socket] = []
    try:
        addresses: list[UnixAddress | TcpAddress] = [UnixAddress(path), *([tcp] if tcp else [])]
        for address in addresses:
            try:
                socks.append(_unix_listener(path) if isinstance(address, UnixAddress) else _tcp_listener(address))
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror or str(exc), str(address)) from None
    except BaseException:
        if socks:
            remove_socket_file(path)
        for sock in socks:
            sock.close()
        raise
    return socks


DEAD_PEER_SECONDS = 6  # over TCP: a dispatcher unheard of this long (its machine gone, the link cut) is dropped


def notice_dead_peers(sock: socket.socket, *, unread_too: bool = True) -> None:
    """Have the kernel end a TCP connection whose peer vanished without closing it, within ``DEAD_PEER_SECONDS``
    (by default it retries for ~15 minutes): no answer to keepalive probes once idle, and with ``unread_too``
    data unacknowledged, or left unread (a zero window), that long. A client then moves to another dispatcher of
    a group instead of waiting on a dead one; a dispatcher drops a runner whose host vanished, and takes its job
    back, though an idle runner sends nothing. The dispatcher's side goes without ``unread_too``: a subscriber
    that stops reading (a paused control center) is one its bounded buffers wait for, not a dead one, and a
    runner holding a job has the job's lease. The probes are the kernel's: no process wakes for them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [("TCP_KEEPIDLE", 3), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)]
    if unread_too:
        options.append(("TCP_USER_TIMEOUT", DEAD_PEER_SECONDS * 1000))
    for name, value in options:
        if hasattr(socket, name):  # Linux has them all; elsewhere, what there is
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def connect(address: Address, timeout: float) -> socket.socket:
    """A blocking socket connected to ``address`` (TLS, over TCP, is the caller's to add)."""
    if isinstance(address, TcpAddress):
        sock = socket.create_connection((address.host, address.port), timeout)
        notice_dead_peers(sock)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with socket_path(address.path) as path:
            sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def endpoint_for(state: StateDir | None, token: str | None = None) -> Endpoint:
    """This repository's dispatcher (or $TUICI_DISPATCHER), joined with its token, and over TCP with the CA in
    $TUICI_TLS_CA. Without a state dir (on another machine), $TUICI_DISPATCHER and the token must be given."""
    text = os.environ.get("TUICI_DISPATCHER") or (state.address() if state is not None else None)
    if not text:
        if state is None:
            raise NoDispatcher("no repository here: set TUICI_DISPATCHER (and TUICI_TOKEN) to reach a dispatcher")
        raise NoDispatcher(f"no dispatcher has run for this repository ({state.path} has no address)")
    try:
        addresses = parse_addresses(text)
    except ValueError as exc:
        raise NoDispatcher(str(exc)) from None
    tls = None
    if any(isinstance(address, TcpAddress) for address in addresses):
        # A dispatcher serving TLS (for runners on other hosts) is trusted through the CA in TUICI_TLS_CA.
        try:
            tls = client_tls(os.environ.get("TUICI_TLS_CA"))
        except OSError as exc:  # ssl.SSLError included
            raise NoDispatcher(f"cannot load the CA file in TUICI_TLS_CA: {exc}") from None
    return Endpoint(addresses, resolve_token(token, state), tls)
