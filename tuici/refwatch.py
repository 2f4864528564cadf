"""Watching a git dir's refs: a callback each time a ref may have moved (a branch committed to, created, deleted,
packed; HEAD moved), at once, and nothing at all in between.

On Linux the kernel's inotify is read by a thread blocked in ``poll()``: it costs nothing while no ref moves and
hears of a move as git renames the ref's lock file into place. Everywhere else, and on Linux where inotify cannot
be had (the user's instances or watches used up, a kernel without it), watchfiles does the watching. watchfiles
(notify, in rust) cannot do the first: its loop wakes every ``step`` ms to look for events, even when there are
none, and reports a change only once a step passed without another. Watching refs that way cost an idle observer
~80 wake-ups and 0.3% of a core a second, against none with inotify read directly (profile: README, "How it
works"), and added 12-24 ms to every commit's latency.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import sys
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("tuici.refwatch")

# Top-level files of a git dir that hold refs (the loose ones are under refs/, reftable's under reftable/).
TOP_FILES = frozenset({"packed-refs", "HEAD"})
# watchfiles looks for events every `step` ms, even when there are none, and reports a change one to two steps
# after it: short for loose refs (commits and pushes, where latency matters), long for the top of the git dir
# (packed-refs: deleting a packed branch; HEAD).
REFS_STEP_MS = 12
TOP_STEP_MS = 500
# watchfiles sets up its watches (polling: takes its first look) in its own thread, some time after it started:
# one more look this long after the start catches a ref that moved meanwhile.
WATCHFILES_SETTLE_S = 1.0

# From <sys/inotify.h>.
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# A ref is written to NAME.lock and renamed to NAME (moved to), or deleted; written in place by hand (closed
# after a write). Directories: created or moved in (watched in turn), deleted or moved out.
WATCH_MASK = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_ONLYDIR
              | IN_DONT_FOLLOW)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
READ_SIZE = 64 * 1024

OnChange = Callable[[], None]
OnError = Callable[[BaseException], None]


class WatchUnavailable(OSError):
    """inotify cannot be had here: the caller watches with watchfiles instead."""


class _Inotify:
    """inotify's system calls, through the C library (a watch goes when its directory does)."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise WatchUnavailable(errno.ENOSYS, "inotify is Linux's")
        libc = ctypes.CDLL(None, use_errno=True)  # the C library we run on (find_library would spawn ldconfig)
        if not hasattr(libc, "inotify_init1"):
            raise WatchUnavailable(errno.ENOSYS, "this C library has no inotify_init1")
        self._init1 = libc.inotify_init1
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = self._init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise WatchUnavailable(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add(self, path: str) -> int | None:
        """The watch descriptor for the directory ``path``; None if it is gone or not a directory (any more)."""
        wd = self._add(self.fd, os.fsencode(path), WATCH_MASK)
        if wd >= 0:
            return wd
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR):
            return None
        if err == errno.ENOSPC:
            raise WatchUnavailable(err, f"inotify_add_watch {path}: the user's inotify watches are used up "
                                        "(fs.inotify.max_user_watches)")
        raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")

    def close(self) -> None:
        os.close(self.fd)


class InotifyWatcher:
    """Refs watched through inotify, read by a thread blocked in poll() (see the module's docstring).

    ``on_change`` is called from that thread after the watches cover whatever appeared, so a caller that looks at
    the refs after a call sees every move up to it; ``on_error`` once if the thread fails (then it has ended)."""

    def __init__(self, git_dir: Path, on_change: OnChange, on_error: OnError):
        self.git_dir = git_dir
        self.on_change = on_change
        self.on_error = on_error
        self._inotify = _Inotify()
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory
        self._top: int | None = None
        try:
            self._top = self._inotify.add(str(git_dir))
            if self._top is None:
                raise OSError(errno.ENOENT, f"{git_dir} is not a directory")
            self._dirs[self._top] = str(git_dir)
            for sub in ("refs", "reftable"):
                self._add_tree(str(git_dir / sub))
        except BaseException:
            self._inotify.close()
            raise
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name=f"inotify {git_dir}", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Wake the thread, wait for it to end and let go of its descriptors."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._inotify.close()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _add_tree(self, top: str) -> None:
        """Watch ``top`` and every directory below it (git makes one per slash in a branch name)."""
        wd = self._inotify.add(top)
        if wd is None:
            return
        self._dirs[wd] = top
        for folder, subdirs, _ in os.walk(top):
            for sub in subdirs:
                path = os.path.join(folder, sub)
                wd = self._inotify.add(path)
                if wd is not None:
                    self._dirs[wd] = path

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._inotify.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_r in ready:
                    return
                if self._handle(self._read()):
                    self.on_change()
        except BaseException as exc:  # noqa: BLE001 - told to the owner, who stops rather than go blind
            self.on_error(exc)

    def _read(self) -> bytes:
        """Whole events, as many as fit (poll() says so again if more wait)."""
        try:
            return os.read(self._inotify.fd, READ_SIZE)
        except BlockingIOError:
            return b""

    def _handle(self, data: bytes) -> bool:
        """Take in a batch of events (watching new directories); whether a ref may have moved."""
        moved = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = data[offset:offset + length].rstrip(b"\0").decode(errors="surrogateescape")
            offset += length
            if mask & IN_Q_OVERFLOW:  # events were lost: watch whatever is there now, and look
                for sub in ("refs", "reftable"):
                    self._add_tree(str(self.git_dir / sub))
                moved = True
                continue
            if mask & IN_IGNORED:  # the directory went away (or its watch was removed)
                self._dirs.pop(wd, None)
                continue
            folder = self._dirs.get(wd)
            if folder is None:
                continue
            if wd == self._top:
                if mask & IN_ISDIR and name in ("refs", "reftable") and mask & (IN_CREATE | IN_MOVED_TO):
                    self._add_tree(os.path.join(folder, name))
                    moved = True
                elif not mask & IN_ISDIR and name in TOP_FILES and mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE):
                    moved = True
                continue
            if mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO):
                    # Refs written into it before it was watched are seen by the look that this change asks for.
                    self._add_tree(os.path.join(folder, name))
                moved = True
            elif not name.endswith(".lock") and mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE):
                moved = True
        return moved


class WatchfilesWatcher:
    """Refs watched through watchfiles, two threads: loose refs (recursively, a short step) and the top of the git
    dir (packed-refs and HEAD, a long step). ``force_polling`` where inotify cannot be had on Linux."""

    def __init__(self, git_dir: Path, on_change: OnChange, on_error: OnError, force_polling: bool = False):
        self.git_dir = git_dir
        self.on_change = on_change
        self.on_error = on_error
        self.force_polling = force_polling
        self._stop = threading.Event()  # looked at by watchfiles (in rust) after each step
        self._threads = [
            threading.Thread(target=self._watch, args=(git_dir / "refs", _ref_file, True, REFS_STEP_MS),
                             name="watch refs", daemon=True),
            threading.Thread(target=self._watch, args=(git_dir, _top_file, False, TOP_STEP_MS),
                             name="watch top", daemon=True),
        ]
        self._settled = threading.Timer(WATCHFILES_SETTLE_S, on_change)
        self._settled.daemon = True

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._settled.start()

    def stop(self) -> None:
        self._stop.set()
        self._settled.cancel()
        for thread in [*self._threads, self._settled]:
            thread.join()

    def _watch(self, path: Path, flt: Callable[[object, str], bool], recursive: bool, step: int) -> None:
        import watchfiles

        try:
            for _ in watchfiles.watch(path, watch_filter=flt, debounce=200, step=step, rust_timeout=0,
                                      recursive=recursive, stop_event=self._stop, raise_interrupt=False,
                                      force_polling=self.force_polling or None):
                self.on_change()
        except Exception as exc:  # noqa: BLE001 - told to the owner, who stops rather than go blind
            if not self._stop.is_set():
                self.on_error(exc)


def _ref_file(change: object, path: str) -> bool:
    return not path.endswith(".lock")


def _top_file(change: object, path: str) -> bool:
    return os.path.basename(path) in TOP_FILES


RefWatcher = InotifyWatcher | WatchfilesWatcher


def watch_refs(git_dir: Path, on_change: OnChange, on_error: OnError) -> RefWatcher:
    """A started watcher of ``git_dir``'s refs: inotify on Linux, else (or where inotify cannot be had)
    watchfiles."""
    watcher: RefWatcher
    try:
        watcher = InotifyWatcher(git_dir, on_change, on_error)
    except WatchUnavailable as exc:
        linux = sys.platform.startswith("linux")
        if linux:  # elsewhere watchfiles is the way, nothing to warn about
            log.warning("watching %s with watchfiles, polling: %s", git_dir, exc.strerror)
        watcher = WatchfilesWatcher(git_dir, on_change, on_error, force_polling=linux)
    watcher.start()
    return watcher
