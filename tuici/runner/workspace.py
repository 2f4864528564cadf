"""A runner's kept clone, set to exactly one commit per job, whose git dir no job can write.

The git dir lives beside the work tree, not in it: the job sees it read-only (at ``.git`` of its checkout),
so nothing a test writes (hooks, ``core.fsmonitor``, attributes in ``info/``) is ever read by the git commands
the runner runs outside the sandbox. Those commands also run with hooks and fsmonitor switched off, whatever
any config says.

The clone borrows the repository's objects through an alternates entry that is a relative path to a link
beside the git dir, ``.repo-objects``. The job's sandbox binds the repository's objects read-only at the same
relative place, so git works inside it (``git describe`` for a version, say) while the repository's own
directory stays out of sight.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path
from typing import IO

from ..errors import JobError

# Run by every git command of the runner: no hook, no fsmonitor daemon, no prompt, whatever a config says.
SAFE_GIT = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.sshCommand=ssh",
            "-c", "protocol.ext.allow=never", "-c", "credential.helper=")
ALTERNATES = "../../../.repo-objects"  # from <root>/git/.git/objects to <root>/.repo-objects


def git_env() -> dict[str, str]:
    """The environment for the runner's git: none of the caller's GIT_* variables (GIT_DIR would redirect)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


class Workspace:
    """``root/checkout`` (the work tree), ``root/git/.git`` (its git dir), ``root/tmp`` (the job's /tmp)."""

    def __init__(self, root: Path):
        self.root = root
        self.checkout = root / "checkout"
        self.git_dir = root / "git" / ".git"
        self.objects_link = root / ".repo-objects"
        self.tmp = root / "tmp"
        self.cache = root / "cache"  # the job's fresh cache dir (~/.cache)
        self.junit = root / "junit"  # where the job writes its JUnit XML, also emptied between jobs
        self._url: str | None = None
        self._config = b""  # the clone's config as we wrote it
        self._clean = False  # released: no untracked file in the checkout, /tmp, cache and JUnit dirs empty
        self._lock = threading.Lock()  # a cancelled job's prepare may still be running in its thread
        self._made: dict[Path, _DirIdentity | None] = {}  # the job dirs as we made them
        self.repo_objects: Path | None = None  # the watched repository's objects dir, when the clone borrows it
        # The watched repository's work tree (or bare git dir) and git dir, when it is on this machine: what a
        # job's sandbox hides. Resolved once per repository.
        self.repo_dirs: tuple[Path, ...] = ()
        self.objects = ObjectReader(self.git_dir)

    # ------------------------------------------------------------------ git

    def git(self, *args: str, check: bool = True) -> bytes:
        """Run git on the clone; its output (``CalledProcessError`` on failure, when ``check``)."""
        done = subprocess.run(["git", *SAFE_GIT, f"--git-dir={self.git_dir}", f"--work-tree={self.checkout}", *args],
                              capture_output=True, stdin=subprocess.DEVNULL, env=git_env(), check=check)
        return done.stdout

    # ------------------------------------------------------------------ jobs

    def prepare(self, url: str, sha: str, gitfile: bool) -> Path:
        """Check out exactly ``sha`` with nothing else in the work tree; an empty /tmp and cache beside it.

        ``gitfile``: the checkout gets a ``.git`` file naming its git dir, for a job without a sandbox (which
        binds the git dir there read-only instead), so that git works in it as in any clone.
        """
        with self._lock:
            self._open_at(url, sha)
            self._restore_git_dir()
            self._set_gitfile(gitfile)
            try:
                self.git("checkout", "--force", "--detach", "--quiet", sha)
                if not self._clean:
                    self.git("clean", "-ffdxq")
            except subprocess.CalledProcessError as exc:
                raise JobError(f"cannot check out {sha} cleanly: {_text(exc.stderr)}") from None
            if not self._clean:
                self._empty_job_dirs()
            self._clean = False
            return self.checkout

    def open_at(self, url: str, sha: str) -> None:
        """Have the clone of ``url`` (made at the first job) hold commit ``sha``, fetching it if need be."""
        with self._lock:
            self._open_at(url, sha)

    def _open_at(self, url: str, sha: str) -> None:
        self._open(url)
        if self.objects.read(f"{sha}^{{commit}}", 0) is None:
            self._fetch()
            if self.objects.read(f"{sha}^{{commit}}", 0) is None:
                raise JobError(f"commit {sha} is not in the repository {url}")

    def is_clean(self, url: str) -> bool:
        """Released after a job of ``url``: checking out a commit now changes tracked files only (nothing beside
        them is removed or made), so a sandbox may be set up on the checkout meanwhile."""
        return self._clean and self._url == url

    def _empty_job_dirs(self) -> None:
        """The job's /tmp, cache and JUnit dirs as new. One the job left as we made it (the same directory, its
        mode, owner and extended attributes such as a default ACL unchanged, nothing in it) is kept: on a busy
        disk, removing and making three directories costs milliseconds per job."""
        for path in (self.tmp, self.cache, self.junit):
            made = self._made.get(path)
            if made is None or _identity(path) != made or not _is_empty(path):
                _remove(path)
                path.mkdir(parents=True)
                self._made[path] = _identity(path)

    def _restore_git_dir(self) -> None:
        """Undo what a job without a sandbox may have written into the git dir that our git would act on: its
        config (filter drivers, aliases, fsmonitor), hooks, attributes and excludes."""
        config = self.git_dir / "config"
        try:
            if config.read_bytes() != self._config:
                config.write_bytes(self._config)
        except OSError:
            config.write_bytes(self._config)
        for path in (self.git_dir / "hooks", self.git_dir / "info"):
            if path.is_symlink() or path.exists():
                _remove(path)

    def _set_gitfile(self, wanted: bool) -> None:
        dot_git = self.checkout / ".git"
        if wanted:
            if dot_git.is_dir() and not dot_git.is_symlink():
                dot_git.rmdir()  # the sandbox's mount point, empty
            dot_git.write_text(f"gitdir: {self.git_dir}\n")
        elif dot_git.is_file() or dot_git.is_symlink():
            dot_git.unlink()

    def release(self) -> None:
        """Clean up after a job, once all of its processes are gone.

        Everything the job wrote goes: its untracked files (``__pycache__`` too: a cache the test could write
        must never be trusted by the next job), its /tmp and cache dir. Whatever git cannot remove (a directory
        the test made unreadable) makes us start over from a fresh clone.
        """
        with self._lock:
            if self._url is None:
                return
            self._restore_git_dir()
            try:
                self.git("clean", "-ffdxq")
                cleaned = True
            except subprocess.CalledProcessError:
                _remove(self.checkout)
                self.checkout.mkdir()
                self.git("reset", "--quiet", check=False)
                cleaned = False
            _remove_special_files(self.checkout)
            self._empty_job_dirs()
            self._clean = cleaned

    def tracked(self, sha: str) -> list[tuple[str, str, str]]:
        """(mode, blob sha, path) of every file the commit tracks."""
        out = self.git("ls-tree", "-r", "-z", "--full-tree", sha)
        entries = []
        for record in out.split(b"\0"):
            if record:
                info, _, path = record.partition(b"\t")
                mode, _, obj = info.decode().split(" ")
                entries.append((mode, obj, os.fsdecode(path)))
        return entries

    def helpers(self) -> frozenset[int]:
        """The pids of the workspace's own long-running processes (not a job's: spared when those are killed)."""
        pid = self.objects.pid
        return frozenset() if pid is None else frozenset((pid,))

    def close(self) -> None:
        """Stop the clone's long-running git (the runner is leaving)."""
        self.objects.close()

    # ------------------------------------------------------------------ the clone

    def _fetch(self) -> None:
        """Branches, tags and tries (`tuici try`: commits only ``refs/tuici/try/*`` points to), for a clone that
        does not borrow the repository's objects (it finds them through its alternates otherwise)."""
        self.git("fetch", "--quiet", "--no-write-fetch-head", "--prune", "origin",
                 "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*",
                 "+refs/tuici/try/*:refs/tuici/try/*", check=False)

    def _open(self, url: str) -> None:
        if self._url == url:
            return
        if not url:
            raise JobError("the dispatcher does not know the repository's location yet")
        # Made anew by each runner process: a clone kept from before may carry what a job wrote into it.
        self.objects.close()  # it may have the old clone's files open
        self.repo_objects, self.repo_dirs = None, ()
        for path in (self.git_dir.parent, self.checkout, self.objects_link):
            _remove(path)
        self.checkout.mkdir(parents=True)
        try:
            subprocess.run(["git", *SAFE_GIT, "init", "--quiet", str(self.git_dir.parent)], check=True,
                           capture_output=True, env=git_env())
            objects = _objects_dir(url)
            if objects is not None:
                self.objects_link.symlink_to(objects)
                self.repo_objects = objects.resolve()
                (self.git_dir / "objects" / "info" / "alternates").write_text(ALTERNATES + "\n")
            self.git("remote", "add", "origin", url)
            # No reflog: it would grow by a line at every job's checkout, as long as the runner lives.
            self.git("config", "core.logAllRefUpdates", "false")
            _remove(self.git_dir / "hooks")  # git init's samples: nothing of ours runs hooks
        except subprocess.CalledProcessError as exc:
            raise JobError(f"cannot set up a clone of {url}: {_text(exc.stderr)}") from None
        self._config = (self.git_dir / "config").read_bytes()
        self._fetch()
        if os.path.isdir(url):
            objects_parent = () if self.repo_objects is None else (self.repo_objects.parent,)
            self.repo_dirs = tuple(dict.fromkeys((Path(url).resolve(), *objects_parent)))
        self._url, self._clean = url, False


class ObjectReader:
    """One long-running ``git cat-file --batch`` on the clone, started at the first read: a job's config costs
    no git process of its own. Objects added to the repository later are found (git looks again on a miss)."""

    def __init__(self, git_dir: Path):
        self.git_dir = git_dir
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def read(self, name: str, limit: int) -> tuple[str, int, bytes | None] | None:
        """(type, size, content) of the object ``name`` (a sha, or ``sha^{tree}``); None if git does not have
        it. The content is None when it is larger than ``limit`` bytes (it is never read into memory)."""
        with self._lock:
            try:
                return self._read(name, limit)
            except (OSError, ValueError):  # it died (or answered nonsense): a new one, once
                self._stop()
                return self._read(name, limit)

    def _read(self, name: str, limit: int) -> tuple[str, int, bytes | None] | None:
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self._proc = subprocess.Popen(["git", *SAFE_GIT, f"--git-dir={self.git_dir}", "cat-file", "--batch"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, env=git_env())
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None  # asked for with PIPE
        stdin.write(name.encode() + b"\n")
        stdin.flush()
        header = stdout.readline()
        if not header.endswith(b"\n"):
            raise ValueError(f"git cat-file ended: {header!r}")
        fields = header.split()
        if len(fields) != 3:  # "<name> missing", "<name> ambiguous"
            return None
        kind, size = fields[1].decode(), int(fields[2])
        if size > limit:
            _skip(stdout, size + 1)
            return kind, size, None
        data = _read_exactly(stdout, size + 1)
        return kind, size, data[:-1]

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:  # its buffer could not be flushed into the closed pipe
                    pass


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("git cat-file ended in the middle of an object")
    return data


def _skip(stream: IO[bytes], size: int) -> None:
    while size > 0:
        size -= len(_read_exactly(stream, min(size, 1 << 16)))


def _objects_dir(url: str) -> Path | None:
    """The objects dir of a repository on this machine, which a clone may borrow from; None for a remote one."""
    if not os.path.isdir(url):
        return None
    done = subprocess.run(["git", *SAFE_GIT, "-C", url, "rev-parse", "--path-format=absolute", "--git-common-dir"],
                          capture_output=True, text=True, env=git_env())
    if done.returncode != 0:
        return None
    objects = Path(done.stdout.strip()) / "objects"
    return objects if objects.is_dir() else None


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    return (data or "").strip()


def _remove(path: Path) -> None:
    """Remove a file, link or tree, including directories a test made unreadable or unwritable."""
    def make_writable(func, name, _exc):
        parent = os.path.dirname(name)
        for target in (parent, name):
            try:
                if not os.path.islink(target):
                    os.chmod(target, stat.S_IRWXU)
            except OSError:
                pass
        func(name)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable)


def _remove_special_files(top: Path) -> None:
    """Remove the FIFOs, sockets and device nodes a job left in its checkout: ``git clean`` passes them over,
    and the next job, of any branch, would open them (a FIFO named like a file it writes blocks it)."""
    pending = [str(top)]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name == ".git" and folder == str(top):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif not entry.is_file(follow_symlinks=False) and not entry.is_symlink():
                    os.unlink(entry.path)
            except OSError:
                pass


_DirIdentity = tuple[int, int, int, int, int, tuple[str, ...]]  # device, inode, mode, owner, group, xattrs


def _identity(path: Path) -> _DirIdentity | None:
    """What makes a directory the one we made, as it was made; None if it is not a directory (or is gone)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return None
        return st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, tuple(sorted(os.listxattr(path)))
    except OSError:  # gone, or no extended attributes on this file system: made anew each time
        return None


def _is_empty(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False
