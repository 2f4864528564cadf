"""Virtualenvs made for jobs by their ``setup`` command, kept and reused while what they were made from holds.

An environment is keyed by everything that could change what ``setup`` makes: the repository, the branch, the
interpreter, the setup command, the content of the commit's ``cache_key`` files and the path the environment
and the checkout have while the job runs. The branch is in the key because ``setup`` runs the commit's own
code (a build backend, a ``setup.py``): a commit on one branch must not be able to plant anything in an
environment that another branch's jobs reuse. The package caches uv and pip fill during ``setup`` are kept
per branch for the same reason; uv copies files out of its cache (``UV_LINK_MODE=copy``) rather than
hard-linking them, so that a write into an environment never reaches the cache it came from.

Several runners share the cache: an environment is made under an exclusive lock and used under a shared one,
and the least recently used are removed (never one in use) while the whole cache is over its size limit.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tuici.runner")

DEFAULT_LIMIT = 10 * 1024**3  # bytes of environments and package caches kept, over every repository
# ``envs/<key>.ready``, written once an environment's setup succeeded: its size in bytes. Beside the environment,
# never in it: setup can write there (a link planted in its place would make us write through it).


def find_uv() -> str | None:
    """uv's binary, which comes with tuici as a Python package; None where it cannot be had."""
    try:
        import uv
    except ImportError:
        return shutil.which("uv")
    try:
        return uv.find_uv_bin()
    except FileNotFoundError:
        return shutil.which("uv")


@dataclass(frozen=True)
class EnvSpec:
    repo: str
    branch: str
    python: str
    setup: list[str]
    inputs: tuple[tuple[str, str], ...]  # (path, blob sha) of the commit's files that match cache_key
    place: str  # the environment's path while the job runs
    source: str  # the checkout's path while the job runs (editable installs point there)

    @property
    def key(self) -> str:
        text = json.dumps([self.repo, self.branch, self.python, self.setup, self.inputs, self.place, self.source])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def branch_key(self) -> str:
        return hashlib.sha256(json.dumps([self.repo, self.branch]).encode()).hexdigest()[:20]


def matching_files(tracked: list[tuple[str, str, str]], patterns: list[str]) -> tuple[tuple[str, str], ...]:
    """(path, blob) of the tracked files that match a cache_key pattern (fnmatch, over the path from the top)."""
    return tuple(sorted((path, obj) for mode, obj, path in tracked
                        if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)))


class Lease:
    """A lock on one environment: exclusive while it is made, shared while a job uses it."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def exclusive(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def share(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


class EnvCache:
    """``root/envs/<key>`` (environments), ``root/packages/<branch key>`` (uv's and pip's caches)."""

    def __init__(self, root: Path, limit: int = DEFAULT_LIMIT):
        self.root = root
        self.limit = limit
        self.envs = root / "envs"
        self.packages = root / "packages"

    def env_dir(self, spec: EnvSpec) -> Path:
        return self.envs / spec.key

    def package_dir(self, spec: EnvSpec) -> Path:
        path = self.packages / spec.branch_key
        path.mkdir(parents=True, exist_ok=True)
        os.utime(path)
        return path

    def lease(self, spec: EnvSpec) -> tuple[Lease, bool]:
        """Take the environment's lock (blocking); (the lease, whether the environment is ready to use).

        Shared if it is ready, so that any number of jobs use it at once; exclusive if it is not, for the
        caller to make it (and another runner that wanted the same one then finds it ready).
        """
        self.envs.mkdir(parents=True, exist_ok=True)
        lease = Lease(self.envs / f"{spec.key}.lock")
        lease.share()
        if self.ready(spec):
            return lease, True
        lease.exclusive()  # flock lets go of the shared lock first: look again once we hold this one
        if self.ready(spec):
            lease.share()
            return lease, True
        return lease, False

    def _marker(self, spec: EnvSpec) -> Path:
        return self.envs / f"{spec.key}.ready"

    def ready(self, spec: EnvSpec) -> bool:
        marker = self._marker(spec)
        if not marker.is_file():
            return False
        os.utime(marker)  # recently used
        return True

    def start(self, spec: EnvSpec) -> Path:
        """An empty directory for the environment (a half-made one from a failed setup is removed)."""
        self._marker(spec).unlink(missing_ok=True)
        path = self.env_dir(spec)
        _remove_tree(path)
        path.mkdir(parents=True)
        return path

    def finish(self, spec: EnvSpec) -> None:
        self._marker(spec).write_text(str(_size(self.env_dir(spec))))

    def discard(self, spec: EnvSpec) -> None:
        _remove_tree(self.env_dir(spec))

    def evict_quietly(self) -> None:
        """``evict``, for a background thread: a failure is logged, not raised into nothing."""
        try:
            self.evict()
        except OSError:
            log.exception("cannot bring the environment cache under its limit")

    def evict(self) -> list[Path]:
        """Remove the least recently used environments and package caches while over the limit; what went."""
        entries: list[tuple[float, int, Path, Path | None]] = []  # (last used, size, path, its lock or None)
        if self.envs.is_dir():
            for lock_file in self.envs.glob("*.lock"):
                marker = lock_file.with_suffix(".ready")
                try:
                    entries.append((marker.stat().st_mtime, int(marker.read_text() or 0), lock_file.with_suffix(""),
                                    lock_file))
                except (OSError, ValueError):
                    continue
        if self.packages.is_dir():
            for path in self.packages.iterdir():
                try:
                    entries.append((path.stat().st_mtime, _size(path), path, None))
                except OSError:
                    continue
        total = sum(size for _, size, _, _ in entries)
        removed = []
        for _, size, path, lock in sorted(entries, key=lambda e: e[0]):
            if total <= self.limit:
                break
            if lock is not None:
                fd = os.open(lock, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # in use
                try:
                    lock.with_suffix(".ready").unlink(missing_ok=True)
                    _remove_tree(path)
                finally:
                    os.close(fd)
            else:
                _remove_tree(path)
            total -= size
            removed.append(path)
        return removed


def _size(path: Path) -> int:
    """Bytes on disk below ``path`` (links are counted, never followed)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            # A package that made read-only files: make them writable and try once more.
            for folder, dirs, _ in os.walk(path):
                for name in dirs:
                    os.chmod(os.path.join(folder, name), 0o700)
            shutil.rmtree(path, ignore_errors=True)

