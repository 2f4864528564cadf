"""The sandbox the code under test runs in: it must not be able to reach tuici itself.

A test command runs as the runner's own user, so without this it could read the token in the state dir,
tamper with the database or with another runner's checkout, or read the token from a tuici process's
/proc files. Linux namespaces close all of that without privileges (the same ones bubblewrap and rootless
containers use):

* a user namespace of its own: the kernel then denies it ptrace-level access to every process outside it
  (``/proc/<pid>/environ``, ``mem``, ``root``), whatever their owner or dumpable flag;
* a mount namespace in which the state dir (and other runners' work dirs) are covered by an empty read-only
  tmpfs, only the job's checkout and JUnit dir are bound back in, and the repository is read-only;
* all of it set up one user namespace further out than the command runs in, so the mounts are locked:
  even root inside cannot unmount them to look underneath.

Everything runs in the forked child before exec (``preexec_fn``): a few system calls, no extra process.
"""

from __future__ import annotations

import ctypes
import errno as errnos
import os
from dataclasses import dataclass
from pathlib import Path

from .procs import libc

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME = 1024, 2048, 1 << 21
_ST_RELATIME = 4096

# Resolved now, in the runner: the child after fork must not load libraries (another thread may hold the lock).
_unshare = getattr(libc, "unshare", None)
_mount = getattr(libc, "mount", None)
if _mount is not None:
    _mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class SandboxError(OSError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(errno, f"{what}: {os.strerror(errno)}")


def _mount_call(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text):
        return None if text is None else os.fsencode(text)
    _check(_mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _own_user_namespace(uid: int, gid: int) -> None:
    """A new user and mount namespace in which we keep our uid and gid (and gain capabilities over it)."""
    _check(_unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def _locked_flags(path: str) -> int:
    """The flags a bind of path inherits and may not drop inside a user namespace (nosuid, noexec, atime...)."""
    f = os.statvfs(path).f_flag
    flags = f & (_MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_NOATIME | _MS_NODIRATIME)
    return flags | (_MS_RELATIME if f & _ST_RELATIME else 0)


@dataclass(frozen=True)
class Sandbox:
    hide: tuple[Path, ...] = ()  # covered by an empty read-only tmpfs
    keep: tuple[Path, ...] = ()  # bound back in, writable, even when under a hidden dir
    read_only: tuple[Path, ...] = ()

    def enter(self, cwd: Path) -> None:
        """In the child before exec: build the sandbox, then start in cwd as seen from inside it."""
        if _unshare is None or _mount is None:
            raise SandboxError(errnos.ENOSYS, "user and mount namespaces need Linux")
        uid, gid = os.getuid(), os.getgid()
        _own_user_namespace(uid, gid)
        _mount_call(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount leaks back out
        kept = [(str(path), os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in self.keep]
        hidden = [str(path) for path in self.hide if path.is_dir()]
        for path in hidden:
            _mount_call("tuici-hidden", path, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "mode=0755,size=64k")
        for path, fd in kept:
            os.makedirs(path, exist_ok=True)
            _mount_call(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            os.close(fd)
        for path in hidden:
            _mount_call(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        for path in (str(p) for p in self.read_only if p.is_dir()):
            _mount_call(path, path, None, _MS_BIND | _MS_REC)
            _mount_call(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _locked_flags(path))
        _own_user_namespace(uid, gid)  # the command runs one namespace in: every mount above is locked to it
        os.chdir(cwd)  # the old working directory is a way under the tmpfs

    def probe(self) -> str | None:
        """None if this machine lets us build the sandbox (and it hides what it should); else why not."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read)
            problem = b""
            try:
                self.enter(Path("/"))
                if any(os.listdir(path) for path in self.hide if path.is_dir()):
                    problem = b"the hidden directories are still visible"
            except OSError as exc:
                problem = str(exc).encode() or b"cannot enter the sandbox"
            except BaseException as exc:
                problem = repr(exc).encode()
            os.write(write, problem)
            os._exit(0)
        os.close(write)
        try:
            with os.fdopen(read, "rb") as fh:
                problem = fh.read()
        finally:
            os.waitpid(pid, 0)
        return problem.decode(errors="replace") or None
