"""The observer: turns new commits on watched branches into reports to the dispatcher.

It keeps no state of its own. The dispatcher remembers the last tip it acknowledged
per branch; on every (re)connect the observer compares the repository against those
tips, which is how commits made while either was down are caught up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

import git
import msgspec

from . import config as cfg
from . import refwatch
from . import wire as p
from .statedir import find_git_dir

log = logging.getLogger("tuici.observer")

REPORT_CHUNK = 1000  # commits per message
# Commit metadata comes from git log -z in this format: NUL-separated fields (git prints no NUL in them), each
# record closed by its sha again. A commit's own sha cannot occur in its own metadata, so even a field that
# some git version printed with a NUL in it cannot shift the fields of the commits after it. The whole message
# (%B) is only looked at for [skip ci], then dropped.
LOG_FORMAT = "--format=%H%x00%ct%x00%an%x00%s%x00%B%x00%H"
SKIP_MARKS = (b"[skip ci]", b"[ci skip]")  # anywhere in a commit's message, in any case: the commit gets no job
# At most this many characters of a name or subject: 1000 commits a message stay far below the frame limit.
MAX_AUTHOR = 200
MAX_SUBJECT = 500
UNREADABLE_AUTHOR = "?"
UNREADABLE_SUBJECT = "(unreadable commit metadata)"
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
# What git's check_refname_format rejects (for-each-ref skips such refs): a component starting with "." or
# ending with ".lock", "..", "@{", control characters, space and ~^:?*[\, a trailing ".", the name "@".
_BAD_REF_NAME = re.compile(r"(^|/)\.|\.lock(/|$)|\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|\.$|^@$")


@dataclass
class Report:
    branch: str
    tip: str
    commits: list[p.ReportedCommit]  # oldest first
    untested: set[str] = field(default_factory=set)  # among commits: those recorded without a job
    order: p.Order = "newest-first"
    cancel_superseded: bool = False  # the tip's config: the branch's older queued jobs are cancelled


@dataclass
class Gone:
    """A branch that is gone (or no longer watched)."""

    branch: str
    cancel_queued: bool = False  # its last known tip's config said cancel_superseded


class Source:
    """Where commits come from: a local repository, or a mirror of a remote one refreshed by polling."""

    def __init__(self, repo: str, mirror_dir: Path | None = None):
        self.remote = not os.path.isdir(repo)
        if self.remote:
            if mirror_dir is None:
                raise ValueError("a remote repository needs a directory for its mirror")
            self.url = repo
            self.git_dir = mirror_dir
        else:
            top, self.git_dir = find_git_dir(repo)
            self.url = str(top)
        self._repo: git.Repo | None = None
        self._commits: set[str] = set()  # shas known to be commits (an object's type never changes)
        self._configs: dict[str, cfg.RepoConfig] = {}  # by commit sha: a commit's files never change either

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            if self.remote and not (self.git_dir / "HEAD").exists():
                git.Repo.clone_from(self.url, self.git_dir, mirror=True, quiet=True)
            self._repo = git.Repo(self.git_dir)
        return self._repo

    def fetch(self) -> None:
        self.repo.git.fetch("--prune", "--quiet", "origin")

    def config(self, sha: str | None) -> cfg.RepoConfig:
        """The config committed in ``sha`` (the defaults for None, or if it is broken: logged once).

        Read from git's objects, never a work tree, and once per commit: the observer wakes on every ref
        change, and most branches have not moved.
        """
        if sha is None:
            return cfg.RepoConfig()
        conf = self._configs.get(sha)
        if conf is None:
            try:
                conf = cfg.load(cfg.read_committed(self.repo, sha))
            except cfg.ConfigError as exc:
                log.error("config of commit %s: %s; using the defaults", sha[:10], exc)
                conf = cfg.RepoConfig()
            if len(self._configs) > 1000:
                self._configs.clear()  # bounded; it only saves reading a commit again
            self._configs[sha] = conf
        return conf

    def default_branch(self, branches: dict[str, str]) -> str | None:
        """The branch whose committed config says which branches are watched: the one HEAD names (a
        mirror's HEAD is the remote's default branch), else main or master; None if none of them exists."""
        head = self._head_branch()
        return next((name for name in (head, "main", "master") if name in branches), None)

    def _head_branch(self) -> str | None:
        """The branch HEAD names, None if it is detached."""
        if (self.git_dir / "reftable").is_dir():  # HEAD is only a stub file: ask git
            try:
                ref = self.repo.git.symbolic_ref("-q", "HEAD")
            except git.GitCommandError:
                return None
        else:
            try:
                with open(self.git_dir / "HEAD", "rb") as fh:
                    content = fh.read(4096).decode("utf-8", "replace")
            except OSError:
                return None
            if not content.startswith("ref:"):
                return None
            ref = content[4:].strip()
        return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None

    def branches(self) -> dict[str, str]:
        """Each branch that points to a commit, with its tip."""
        tips = self._read_heads()
        if tips is None:
            return self._for_each_ref()
        return {name: sha for name, sha in tips.items() if self._is_commit(sha)}

    def _read_heads(self) -> dict[str, str] | None:
        """Branch tips read from the ref files, without spawning git; None if refs are not kept in files.

        Loose refs are read before packed-refs, as git does: a concurrent pack-refs writes packed-refs
        before it deletes the loose files, so no branch can be missed between the two.
        """
        if (self.git_dir / "reftable").is_dir():
            return None
        tips: dict[str, str] = {}
        symbolic: list[str] = []
        heads = self.git_dir / "refs" / "heads"
        for folder, _, files in os.walk(heads):
            for file in files:
                name = os.path.relpath(os.path.join(folder, file), heads).replace(os.sep, "/")
                if _BAD_REF_NAME.search(name):
                    continue
                try:
                    with open(os.path.join(folder, file), "rb") as fh:
                        content = fh.read(4096).decode("ascii", "replace").strip()
                except OSError:  # deleted meanwhile: packed-refs may still hold it, as it would for git
                    continue
                if content.startswith("ref:"):
                    symbolic.append(name)
                elif _SHA.fullmatch(content):
                    tips[name] = content
        for line in self._read_packed_refs():
            sha, _, ref = line.partition(" ")
            if ref.startswith("refs/heads/") and _SHA.fullmatch(sha):
                name = ref[len("refs/heads/"):]
                if not _BAD_REF_NAME.search(name):
                    tips.setdefault(name, sha)  # a loose ref is newer than its packed copy
        for name in symbolic:  # rare: let git resolve them, through its running cat-file
            try:
                header: bytes | str = self.repo.git.get_object_header(f"refs/heads/{name}")[0]
                tips[name] = header.decode() if isinstance(header, bytes) else header  # bytes, whatever the stubs say
            except (ValueError, git.GitCommandError):
                tips.pop(name, None)
        return tips

    def _read_packed_refs(self) -> list[str]:
        try:
            with open(self.git_dir / "packed-refs", encoding="utf-8", errors="replace") as fh:
                return [line.rstrip("\n") for line in fh if line[:1] not in ("#", "^")]
        except FileNotFoundError:
            return []

    def _for_each_ref(self) -> dict[str, str]:
        out = self.repo.git.for_each_ref("--format=%(refname:short)%00%(objectname)%00%(objecttype)", "refs/heads")
        heads = {}
        for line in out.splitlines():
            name, sha, kind = line.split("\0")
            if kind == "commit":
                heads[name] = sha
        return heads

    def _is_commit(self, sha: str) -> bool:
        if sha in self._commits:
            return True
        if self._type(sha) != b"commit":
            return False
        if len(self._commits) > 10_000:
            self._commits.clear()  # bounded; it only saves asking git again
        self._commits.add(sha)
        return True

    def new_commits(self, tip: str, exclude: list[str]) -> list[p.ReportedCommit]:
        """Commits reachable from ``tip`` but from none of ``exclude``, oldest first."""
        return self._log(tip, "--not", *exclude, "--reverse", "--topo-order")

    def first_parent_chain(self, tip: str, exclude: list[str]) -> set[str]:
        """The commits reachable from ``tip`` through first parents only, but from none of ``exclude``."""
        return set(self.repo.git.rev_list("--first-parent", tip, "--not", *exclude, "--").split())

    def has(self, sha: str) -> bool:
        """Whether the object is still in the repository (a force-push and gc may have dropped it)."""
        return self._type(sha) is not None

    def restart_cat_file(self) -> None:
        """Let ``has`` ask a new git cat-file: the running one keeps the packs it opened, so after a gc
        deleted one it still finds the commits that only that pack held."""
        self.repo.git.clear_cache()

    def _type(self, sha: str) -> bytes | None:
        try:
            return self.repo.odb.info(bytes.fromhex(sha)).type
        except (ValueError, git.BadName, git.BadObject, OSError, git.GitCommandError):
            return None

    def tip_alone(self, sha: str) -> list[p.ReportedCommit]:
        """The commit ``sha`` without its history (empty only if git printed nothing readable)."""
        return self._log(sha, "-1")

    def _log(self, *args: str) -> list[p.ReportedCommit]:
        out = self.repo.git.log("-z", "--encoding=UTF-8", LOG_FORMAT, *args, "--", stdout_as_string=False)
        return parse_log(out)


def parse_log(out: bytes) -> list[p.ReportedCommit]:
    """Commits from ``git log -z`` output in LOG_FORMAT. Whatever the metadata holds, each commit is returned:
    one whose fields cannot be told apart gets placeholders (and a logged warning), never an exception."""
    fields = out.split(b"\0")
    commits = []
    start = 0
    while start + 1 < len(fields):  # the last field is the empty one after the final terminator
        sha = fields[start].decode("ascii", "replace")
        try:
            end = fields.index(fields[start], start + 1)
        except ValueError:
            end = -1
        if end < 0 or not _SHA.fullmatch(sha):  # not with LOG_FORMAT; should it happen, nothing beats garbage
            log.warning("git log printed %r where a commit was expected; skipping the rest", fields[start][:100])
            break
        commits.append(_commit_info(sha, fields[start + 1:end]))
        start = end + 1
    return commits


def skips_ci(message: bytes) -> bool:
    """Whether a commit message asks for no CI run: [skip ci] or [ci skip] on any line, in any case."""
    lowered = message.lower()
    return any(mark in lowered for mark in SKIP_MARKS)


def _commit_info(sha: str, fields: list[bytes]) -> p.ReportedCommit:
    if len(fields) != 4:
        log.warning("commit %s: unreadable metadata (%d fields); reporting it with placeholders", sha, len(fields))
        return p.ReportedCommit(sha=sha, branch="", author=UNREADABLE_AUTHOR, subject=UNREADABLE_SUBJECT)
    ctime, author, subject, message = fields
    try:
        time = msgspec.convert(int(ctime), p.Timestamp)  # git prints nothing for a missing or broken date
    except (ValueError, msgspec.ValidationError):
        log.warning("commit %s: unreadable committer time %r; reporting it as 0", sha, ctime[:30])
        time = 0.0
    return p.ReportedCommit(sha=sha, branch="", author=_text(author, MAX_AUTHOR), subject=_text(subject, MAX_SUBJECT),
                            time=time, skipped=skips_ci(message))


def _text(raw: bytes, limit: int) -> str:
    """``raw`` decoded (bad UTF-8 replaced) and cut to ``limit`` characters, ending in "…" where it was cut."""
    text = raw[:4 * limit].decode("utf-8", "replace")  # enough bytes for ``limit`` characters, whatever they are
    if len(text) > limit or len(raw) > 4 * limit:
        text = text[:limit - 1] + "…"
    return text


def plan(source: Source, known: dict[str, str]) -> tuple[list[Report], list[Gone]]:
    """What to tell the dispatcher, given the tips it knows: reports for changed branches, and gone ones.

    Which branches are watched comes from the default branch's committed config; which new commits get a job
    (``coalesce``, ``first_parent``, ``[skip ci]``), in which order (``order``) and whether they cancel older
    queued jobs (``cancel_superseded``), from each branch tip's own (a gone branch's: its last known tip's, if git
    still has it). Every new commit is reported, those without a job as ``untested``: bisections test them.
    """
    branches = source.branches()
    default = source.default_branch(branches)
    conf = source.config(branches.get(default) if default is not None else None)
    heads = {b: sha for b, sha in branches.items() if conf.watches(b)}
    tips = set(branches.values())  # present for sure; only known tips that are no longer anyone's are looked up
    exclude = sorted(sha for sha in set(known.values()) if sha in tips or source.has(sha))
    reports = []
    for branch in sorted(heads):
        tip = heads[branch]
        if known.get(branch) == tip:
            continue
        try:
            report = _new_commits(source, branch, tip, exclude)
        except git.GitCommandError:
            # A gc may have pruned a known tip since ``has`` found it (or found it in a pack that it still
            # held open, deleted since): look again, with a new cat-file, and try once more.
            source.restart_cat_file()
            exclude = [sha for sha in exclude if sha in tips or source.has(sha)]
            try:
                report = _new_commits(source, branch, tip, exclude)
            except git.GitCommandError as exc:  # a broken commit object: the other branches are still reported
                log.error("cannot list the new commits of %s at %s: %s", branch, tip, exc.stderr.strip())
                continue
        for c in report.commits:
            c.branch = branch
        reports.append(report)
    gone = [Gone(b, source.config(known[b] if source.has(known[b]) else None).cancel_superseded)
            for b in sorted(known) if b not in heads]
    return reports, gone


def _new_commits(source: Source, branch: str, tip: str, exclude: list[str]) -> Report:
    conf = source.config(tip)
    if not exclude:
        # First start (or every known tip is gone): the tip only, not the whole history.
        return Report(branch, tip, source.tip_alone(tip), order=conf.order, cancel_superseded=conf.cancel_superseded)
    commits = source.new_commits(tip, exclude)
    tested = [c.sha for c in commits]
    if conf.first_parent:
        chain = source.first_parent_chain(tip, exclude)
        tested = [sha for sha in tested if sha in chain]
    if conf.coalesce:
        tested = tested[-1:]
    return Report(branch, tip, commits, {c.sha for c in commits} - set(tested), conf.order, conf.cancel_superseded)


class Observer:
    def __init__(self, source: Source, endpoint: p.Endpoint, poll: float | None = None):
        self.source = source
        self.endpoint = endpoint
        self.poll = poll
        self.changed = asyncio.Event()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        watcher = None
        if not self.poll:  # watching before the first look at the refs: no move between the two goes unseen
            loop = asyncio.get_running_loop()

            def tell(fn, *args) -> None:
                try:
                    loop.call_soon_threadsafe(fn, *args)
                except RuntimeError:  # the loop is closed: we are exiting
                    pass

            try:
                watcher = await asyncio.to_thread(refwatch.watch_refs, self.source.git_dir,
                                                  lambda: tell(self.changed.set),
                                                  lambda exc: tell(self._watch_failed, exc))
            except OSError as exc:
                self._watch_failed(exc)
                return
        try:
            await p.reconnect(self._connect, self.stopping)
        finally:
            if watcher is not None:
                await asyncio.to_thread(watcher.stop)

    async def _connect(self) -> bool:
        """One session with the dispatcher, if it answers; whether it did."""
        hello = p.Hello(role="observer", token=self.endpoint.token, pid=os.getpid(), repo_url=self.source.url)
        joined = await p.join(self.endpoint, hello, log)
        if joined is None:
            return False
        conn, welcome = joined
        log.info("connected to dispatcher %s; it knows %d branch tips", self.endpoint, len(welcome.tips))
        try:
            await self._session(conn, dict(welcome.tips))
        except (OSError, ConnectionError, p.ProtocolError, asyncio.TimeoutError) as exc:
            log.warning("lost the dispatcher: %s", exc)
        finally:
            await conn.close()
        return True

    async def _session(self, conn: p.Connection, known: dict[str, str]) -> None:
        closed = asyncio.ensure_future(conn.reader.read(0x10000))  # the dispatcher sends nothing unasked
        try:
            while not self.stopping.is_set():
                self.changed.clear()
                if self.poll:
                    try:
                        await asyncio.to_thread(self.source.fetch)
                    except git.GitCommandError as exc:
                        log.error("fetch from %s failed: %s", self.source.url, exc.stderr.strip())
                reports, gone = await asyncio.to_thread(plan, self.source, known)
                await _stop_reading(closed)
                for report in reports:
                    await self._report(conn, report)
                    known[report.branch] = report.tip
                for branch in gone:
                    await conn.request(p.BranchGone(branch=branch.branch, cancel_queued=branch.cancel_queued))
                    known.pop(branch.branch, None)
                closed = asyncio.ensure_future(conn.reader.read(0x10000))
                waits = [closed, asyncio.ensure_future(self.stopping.wait())]
                if self.poll:
                    waits.append(asyncio.ensure_future(asyncio.sleep(self.poll)))
                else:
                    waits.append(asyncio.ensure_future(self.changed.wait()))
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits[1:]:
                    w.cancel()
                if closed.done():
                    raise ConnectionError("dispatcher closed the connection")
        finally:
            closed.cancel()

    async def _report(self, conn: p.Connection, report: Report) -> None:
        commits = report.commits
        chunks = [commits[i:i + REPORT_CHUNK] for i in range(0, len(commits), REPORT_CHUNK)] or [[]]
        for i, chunk in enumerate(chunks):
            tip = report.tip if i == len(chunks) - 1 else chunk[-1].sha
            untested = [c.sha for c in chunk if c.sha in report.untested]
            seen = p.CommitsSeen(branch=report.branch, tip=tip, commits=chunk, untested=untested, order=report.order,
                                 cancel_superseded=report.cancel_superseded)
            ack = await asyncio.wait_for(conn.request(seen), 30)
            p.expect(ack, p.TipsAck)
        if commits:
            log.info("reported %d new commit(s) on %s", len(commits), report.branch)

    def _watch_failed(self, exc: BaseException) -> None:
        # Without file events we would miss commits: exit, to be restarted (by serve) rather than go blind.
        log.error("watching %s failed; stopping", self.source.git_dir, exc_info=exc)
        self.stopping.set()


async def _stop_reading(read: asyncio.Future) -> None:
    """Cancel a pending read of the connection and wait until it has let go of the reader (else our next
    read fails: "readexactly() called while another coroutine is already waiting")."""
    read.cancel()
    await asyncio.wait([read])
    if read.cancelled():
        return
    if not read.result():
        raise ConnectionError("dispatcher closed the connection")
    raise p.ProtocolError("the dispatcher sent something unasked")


def mirror_dir_for(url: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "tuici" / "mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]


async def run_observer(source: Source, endpoint: p.Endpoint, poll: float | None) -> None:
    observer = Observer(source, endpoint, poll)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, observer.stopping.set)
    await observer.run()

