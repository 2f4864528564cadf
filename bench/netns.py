"""A network namespace joined to this one by a veth pair whose link can be cut: a machine that vanishes from the
network without closing anything, for the tests and the bench of dispatcher takeovers. Needs root and ``ip``.

The namespace lives as long as a holder process (``unshare --net sleep``); processes run in it through
``nsenter``. Everything is stopped by pid in ``close``; the veth pair goes with the namespace.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from typing import Any


class NetnsUnavailable(Exception):
    """This machine cannot make a network namespace for us (the message says why)."""


def _ip(*args: str, ns_pid: int | None = None) -> None:
    argv = ["ip", *args] if ns_pid is None else ["nsenter", "-t", str(ns_pid), "-n", "ip", *args]
    res = subprocess.run(argv, capture_output=True, check=False)
    if res.returncode != 0:
        raise NetnsUnavailable(f"{' '.join(argv)}: {res.stderr.decode(errors='replace').strip()}")


class Island:
    """A namespace with one link to ours: ``host_ip`` on our side, ``ip`` on its side."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("making a network namespace needs root")
        for tool in ("ip", "unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise NetnsUnavailable(f"{tool} is not installed")
        net = random.randrange(0, 1 << 14) * 4  # a /30 of 10.200.0.0/16
        base = f"10.{200 + (net >> 16)}.{(net >> 8) & 255}."
        self.host_ip, self.ip = f"{base}{(net & 255) + 1}", f"{base}{(net & 255) + 2}"
        self.network = f"{base}{net & 255}/30"
        tag = f"{os.getpid() % 100000}{random.randrange(1000)}"
        self.host_dev, self.ns_dev = f"tu{tag}h", f"tu{tag}n"
        self.procs: list[subprocess.Popen] = []
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"], start_new_session=True)
        try:
            self._wait_for_namespace()
            _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
            _ip("link", "set", self.ns_dev, "netns", str(self.holder.pid))
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
            _ip("link", "set", self.host_dev, "up")
            _ip("addr", "add", f"{self.ip}/30", "dev", self.ns_dev, ns_pid=self.holder.pid)
            _ip("link", "set", self.ns_dev, "up", ns_pid=self.holder.pid)
            _ip("link", "set", "lo", "up", ns_pid=self.holder.pid)
        except BaseException:
            self.close()
            raise

    def _wait_for_namespace(self) -> None:
        import time

        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/net") != mine:
                    return
            except OSError:
                pass
            if self.holder.poll() is not None:
                raise NetnsUnavailable(f"unshare --net exited with {self.holder.returncode}")
            time.sleep(0.01)
        raise NetnsUnavailable("the namespace did not appear within 10 s")

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside the namespace; stopped in ``close`` if not before."""
        proc = subprocess.Popen(["nsenter", "-t", str(self.holder.pid), "-n", "--", *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def cut(self) -> None:
        """Take the link down: packets are dropped both ways, nobody is told."""
        _ip("link", "set", self.host_dev, "down")

    def mend(self) -> None:
        _ip("link", "set", self.host_dev, "up")

    def close(self) -> None:
        for proc in [*self.procs, self.holder]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", self.host_dev], capture_output=True, check=False)
