"""Landlock scoping for a job: no connect() to abstract Unix sockets made outside it, no signal to outside.

Abstract Unix sockets have no path, so no mount hides them: they belong to the network namespace, which a job
with the network shares with the machine (an X server, some D-Bus buses, agents listen there). Landlock (Linux
6.12, ABI 6) scopes them, and signals, to the job's own domain. Set in the child that becomes bwrap, before
exec: inherited by everything the job starts. Where the kernel has no such Landlock, the job goes without.
"""

from __future__ import annotations

import ctypes
import os
import platform

from ..procs import libc

_SYSCALLS = {"x86_64": (444, 446), "aarch64": (444, 446)}  # landlock_create_ruleset, landlock_restrict_self
_CREATE_RULESET_VERSION = 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1
_SCOPE_SIGNAL = 2
_PR_SET_NO_NEW_PRIVS = 38
_SCOPED_ABI = 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


# Resolved now, in the runner: a child between fork and exec must not load anything.
_syscall = getattr(libc, "syscall", None)
_prctl = getattr(libc, "prctl", None)
_numbers = _SYSCALLS.get(platform.machine())
_ATTR = _RulesetAttr(0, 0, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)


def available() -> bool:
    """Whether this kernel can scope abstract sockets and signals (Landlock ABI 6 or later)."""
    if _syscall is None or _numbers is None:
        return False
    _syscall.restype = ctypes.c_long
    version = _syscall(_numbers[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return version >= _SCOPED_ABI


def scope_self() -> None:
    """In a child before exec: confine it and its descendants to their own abstract sockets and signals."""
    assert _syscall is not None and _prctl is not None and _numbers is not None
    fd = _syscall(_numbers[0], ctypes.byref(_ATTR), ctypes.c_size_t(ctypes.sizeof(_ATTR)), ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    failed = (_prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
              or _syscall(_numbers[1], ctypes.c_int(fd), ctypes.c_uint32(0)) != 0)
    errno = ctypes.get_errno()
    os.close(fd)
    if failed:
        raise OSError(errno, "landlock_restrict_self")
