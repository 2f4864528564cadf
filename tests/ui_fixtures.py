"""A recorded event stream and a backend that replays it, so UI tests need no processes.

Times, pids, hosts and durations are frozen: ``NOW`` is the clock the app is given, and
every record below is written relative to it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import msgspec
import pytest

from tuici import wire as p
from tuici.ui.app import ControlCenter
from tuici.ui.backend import Backend, BackendError, ProcessInfo

NOW = 1_700_000_000.0
HOST = "ci-host"


def frozen_clock() -> float:
    return NOW


@pytest.fixture(autouse=True)
def isolated_config(tmp_path_factory, monkeypatch):
    """Settings go to a temp dir, never the user's ~/.config."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


def _sha(n: int) -> str:
    return f"{n:x}" * 40


COMMITS = [
    p.CommitInfo(sha=_sha(1)[:40], branch="main", author="Alice Liddell", subject="Initial commit", time=NOW - 5400),
    p.CommitInfo(sha=_sha(2)[:40], branch="feature/login", author="Bob Stone", subject="Add login form",
                 time=NOW - 3600),
    p.CommitInfo(sha=_sha(3)[:40], branch="main", author="Alice Liddell", subject="Read tuici.toml from the tree",
                 time=NOW - 2700),
    p.CommitInfo(sha=_sha(4)[:40], branch="fix/typo", author="Carol Reyes", subject="Fix typo in README",
                 time=NOW - 1800),
    p.CommitInfo(sha=_sha(5)[:40], branch="main", author="Dave Okafor", subject="Refactor the dispatcher queue",
                 time=NOW - 600),
    p.CommitInfo(sha=_sha(6)[:40], branch="feature/ui", author="Erin Park",
                 subject="Evil \x1b]0;pwned\x07title \x1b[2Jand [bold]markup[/bold]", time=NOW - 300),
    p.CommitInfo(sha=_sha(7)[:40], branch="main", author="Alice Liddell", subject="Bump version to 0.2",
                 time=NOW - 120),
    p.CommitInfo(sha=_sha(8)[:40], branch="feature/login", author="Bob Stone", subject="Handle an empty password",
                 time=NOW - 60),
    p.CommitInfo(sha=_sha(9)[:40], branch="main", author="Dave Okafor", subject="Retry the flaky network test",
                 time=NOW - 30),
]
SHAS = [c.sha for c in COMMITS]


def _job(job_id: int, commit: int, state: str, **fields) -> p.JobInfo:
    c = COMMITS[commit - 1]
    return p.JobInfo(id=job_id, commit=c.sha, branch=c.branch, state=state, queued_at=c.time + 1, **fields)


def _runner(name: str, pid: int, state: str, job: int | None = None, done: int = 0, beat: float = 2) -> p.RunnerInfo:
    return p.RunnerInfo(name=name, host=HOST, pid=pid, state=state, job=job, jobs_done=done, last_heartbeat=NOW - beat)


def recorded_events() -> list[p.Event]:
    """A session with every job state: passed, failed, error, cancelled, running (2), queued (2, and a rerun)."""
    kinds: list[tuple[str, dict]] = [
        ("process.started", {"message": "dispatcher: pid 4101"}),
        ("process.started", {"message": "observer: pid 4102"}),
        ("runner.joined", {"runner": _runner("runner-1", 4103, "idle")}),
        ("runner.joined", {"runner": _runner("runner-2", 4104, "idle")}),
        ("runner.joined", {"runner": _runner("runner-3", 4105, "idle")}),
        ("runner.joined", {"runner": _runner("runner-4", 4106, "idle")}),
    ]
    finished = {
        1: ("passed", dict(exit_code=0, duration_s=3.2, passed=42, failed=0, skipped=1)),
        2: ("failed", dict(exit_code=1, duration_s=74.5, passed=40, failed=2, skipped=0)),
        3: ("error", dict(error="bad config: tuici.toml: key 'command': must not be empty", duration_s=0.1)),
        4: ("cancelled", dict(exit_code=-15, duration_s=12.0)),
        9: ("failed", dict(exit_code=1, duration_s=21.0, passed=11, failed=1, skipped=0)),
    }
    for n, commit in enumerate(COMMITS, 1):
        kinds.append(("commit.seen", {"commit": commit}))
        kinds.append(("job.queued", {"job": _job(n, n, "queued")}))
    for n, (state, result) in finished.items():
        started = COMMITS[n - 1].time + 2
        kinds.append(("job.started", {"job": _job(n, n, "running", runner="runner-1", attempts=1, started_at=started)}))
        kinds.append(("job.finished", {"job": _job(n, n, state, runner="runner-1", attempts=1, started_at=started,
                                                   finished_at=started + 5, **result)}))
    kinds += [
        ("job.started", {"job": _job(5, 5, "running", runner="runner-1", attempts=1, started_at=NOW - 95),
                         "runner": _runner("runner-1", 4103, "busy", job=5, done=4)}),
        ("job.started", {"job": _job(6, 6, "running", runner="runner-2", attempts=1, started_at=NOW - 8),
                         "runner": _runner("runner-2", 4104, "busy", job=6)}),
        ("runner.lost", {"runner": _runner("runner-4", 4106, "lost", beat=31), "message": "no heartbeat for 5.1 s"}),
        ("job.queued", {"job": _job(10, 9, "queued", priority=1)}),  # a rerun of a failed commit: at the front
    ]
    return [p.Event(seq=seq, ts=NOW, **{"kind": kind, **fields}) for seq, (kind, fields) in enumerate(kinds, 1)]


FORM_FIELDS = ["email", "password", "remember_me", "next_url", "csrf_token", "locale", "timezone", "theme", "avatar",
               "display_name", "phone", "country", "zip", "city", "street", "birthday", "newsletter", "terms",
               "referrer", "company", "title", "website", "bio", "github", "twitter", "linkedin", "pronouns",
               "language", "currency", "units", "signature", "backup_email", "recovery_code", "totp", "sms",
               "push", "webauthn", "api_key", "ssh_key"]


def recorded_tests() -> dict[int, list[p.TestReport]]:
    """What job 2 (feature/login: 40 passed, 2 failed) reported, as the dispatcher sends it: failures first."""
    return {2: [
        p.TestReport(name="tests/test_login.py::test_login_form", outcome="failed", duration_s=0.04,
                     message="AssertionError: assert 'Sign in' in ''", details="def test_login_form(client):\n>   ...",
                     broken_by=p.Change(commit=SHAS[1], since=SHAS[1], after=SHAS[0]), history="..........F"),
        p.TestReport(name="tests/test_session.py::TestSession::test_expiry[short]", outcome="error", duration_s=0.01,
                     message="failed on setup with \"KeyError: 'SECRET'\"",
                     broken_by=p.Change(commit=None, since=SHAS[1], after=SHAS[0], untested=3), history="--........E"),
        p.TestReport(name="tests/test_login.py::test_captcha", outcome="passed", duration_s=1.52, flaky=True,
                     message="TimeoutError: captcha service did not answer", history="...F......."),
        *(p.TestReport(name=f"tests/test_forms.py::test_field[{field}]", outcome="passed", duration_s=0.002 * n)
          for n, field in enumerate(FORM_FIELDS)),
    ]}


def failing_log_lines() -> list[str]:
    """Job 2's log: pytest's progress, then its report of each failure."""
    lines = ["tuici: runner-1 testing 2222222222 (feature/login), attempt 1", "$ python -m pytest"]
    lines += [f"tests/test_forms.py::test_field[{field}] PASSED" for field in FORM_FIELDS]
    lines += ["", "==================================== ERRORS ====================================",
              "_________________ ERROR at setup of TestSession.test_expiry[short] _________________"]
    lines += [f"    fixture line {n}" for n in range(20)] + ["E   KeyError: 'SECRET'"]
    lines += ["=================================== FAILURES ===================================",
              "_______________________________ test_login_form ________________________________"]
    lines += [f"    traceback line {n}" for n in range(20)] + ["E   AssertionError: assert 'Sign in' in ''"]
    lines += ["=========================== short test summary info ============================",
              "FAILED tests/test_login.py::test_login_form - AssertionError: assert 'Sign in' in ''",
              "ERROR tests/test_session.py::TestSession::test_expiry[short] - KeyError: 'SECRET'",
              "======================== 2 failed, 40 passed in 74.50s ========================="]
    return lines


TRY_SHAS = ["a" * 40, "b" * 40]
SKIPPED_SHA = "c" * 40


def events_with_tries() -> list[p.Event]:
    """The recorded session, then two tries (one passed, one running) and a commit skipped with [skip ci]."""
    events = recorded_events()
    tried = [p.CommitInfo(sha=sha, branch="main", author="Alice Liddell",
                          subject=f"tuici try of main: {n} changed files", time=NOW - 20 + n)
             for n, sha in enumerate(TRY_SHAS, 1)]
    skipped = p.CommitInfo(sha=SKIPPED_SHA, branch="main", author="Dave Okafor", subject="Docs only [skip ci]",
                           time=NOW - 10, skipped=True)

    def try_job(job_id: int, n: int, state: str, **fields) -> p.JobInfo:
        return p.JobInfo(id=job_id, commit=TRY_SHAS[n], branch="main", state=state, kind="try", priority=2 + n,
                         queued_at=tried[n].time, **fields)

    more: list[tuple[str, dict]] = [
        ("commit.seen", {"commit": tried[0]}), ("job.queued", {"job": try_job(11, 0, "queued")}),
        ("job.finished", {"job": try_job(11, 0, "passed", runner="runner-3", attempts=1, exit_code=0, duration_s=4.2,
                                         passed=42, failed=0, skipped=1, started_at=NOW - 18,
                                         finished_at=NOW - 14)}),
        ("commit.seen", {"commit": skipped}),
        ("commit.seen", {"commit": tried[1]}), ("job.queued", {"job": try_job(12, 1, "queued")}),
        ("job.started", {"job": try_job(12, 1, "running", runner="runner-3", attempts=1, started_at=NOW - 5)}),
    ]
    first = len(events) + 1
    return events + [p.Event(seq=seq, ts=NOW, **{"kind": kind, **fields})
                     for seq, (kind, fields) in enumerate(more, first)]


def bisection_events() -> list[p.Event]:
    """The recorded session, then a bisection on main between commit 1 (passed) and commit 9 (failed): it tests
    commit 7 (job 11), which fails, and finds it the first failing commit."""
    events = recorded_events()
    good, bad, first_bad = SHAS[0], SHAS[8], SHAS[6]
    running = p.BisectionInfo(branch="main", good=good, bad=bad)
    probe = _job(11, 7, "queued", priority=p.Priority.BISECT)
    started = dict(runner="runner-3", attempts=1, started_at=NOW - 20)
    more: list[tuple[str, dict]] = [
        ("bisection.started", {"bisection": running}),
        ("job.queued", {"job": probe}),
        ("bisection.job", {"bisection": msgspec.structs.replace(running, jobs=[11])}),
        ("job.started", {"job": msgspec.structs.replace(probe, state="running", **started)}),
        ("job.finished", {"job": msgspec.structs.replace(probe, state="failed", exit_code=1, duration_s=6.0, passed=11,
                                                         failed=1, skipped=0, finished_at=NOW - 14, **started)}),
        ("bisection.found", {"bisection": msgspec.structs.replace(running, jobs=[11], state="found",
                                                                  first_bad=first_bad),
                             "message": f"first failing commit {first_bad[:10]}"}),
    ]
    return events + [p.Event(seq=seq, ts=NOW, **{"kind": kind, **fields})
                     for seq, (kind, fields) in enumerate(more, len(events) + 1)]


def running_log_lines(count: int = 300) -> list[str]:
    """What job 5 has printed so far: pytest-like lines, some coloured, one with a control sequence to strip."""
    lines = ["tuici: runner-1 testing 5555555555 (main), attempt 1", "$ python -m pytest"]
    for n in range(1, count - 2):
        status = "\x1b[32mPASSED\x1b[0m" if n % 17 else "\x1b[31mFAILED\x1b[0m"
        lines.append(f"tests/test_queue.py::test_case_{n:04d} {status}")
    lines.append("\x1b]0;set the title\x07still collecting…")
    return lines


class RecordedBackend(Backend):
    """Replays ``events`` (after an empty snapshot) and records the requests the app makes."""

    def __init__(self, logs: Path, events: list[p.Event] | None = None, attached: bool = False):
        self.logs = logs
        self.recorded = recorded_events() if events is None else events
        self.attached = attached
        self.can_supervise = not attached
        self.replayed = asyncio.Event()
        self.requests: list[tuple] = []
        self.stopped = False
        self._processes = {} if attached else {
            "dispatcher": ProcessInfo("dispatcher", "dispatcher", "running", 4101),
            "observer": ProcessInfo("observer", "observer", "running", 4102),
            **{f"runner-{n}": ProcessInfo(f"runner-{n}", "runner", "running", 4102 + n) for n in (1, 2, 3)},
        }

    @property
    def label(self) -> str:
        return "/work/demo"

    async def start(self) -> None:
        pass

    async def status(self, limit: int = 0) -> p.StatusReply:
        return p.StatusReply(repo_url=self.label, last_seq=0, commits=[], jobs=[], runners=[], bisections=[])

    async def events(self, after_seq: int) -> AsyncIterator[p.Event]:
        for event in self.recorded:
            if event.seq > after_seq:
                yield event
        self.replayed.set()
        await asyncio.Event().wait()  # a live stream with nothing more to say

    async def rerun(self, sha: str) -> p.Reply:
        self.requests.append(("rerun", sha))
        return p.Reply(ok=True, message="job 11 queued at the front")

    async def cancel(self, job_id: int) -> p.Reply:
        self.requests.append(("cancel", job_id))
        return p.Reply(ok=True, message=f"job {job_id} is being cancelled")

    async def tests(self, job_id: int) -> list[p.TestReport]:
        self.requests.append(("tests", job_id))
        return recorded_tests().get(job_id, [])

    async def add_runner(self) -> str:
        raise BackendError("the recorded backend starts no processes")

    async def kill_runner(self, name: str, force: bool) -> None:
        self.requests.append(("kill", name, force))

    def processes(self) -> dict[str, ProcessInfo]:
        return dict(self._processes)

    def job_log(self, job_id: int) -> Path:
        return self.logs / f"{job_id}.log"

    async def stop(self) -> None:
        self.stopped = True


def make_app(tmp_path: Path, theme: str | None = "tuici-dark", events: list[p.Event] | None = None,
             **kwargs) -> tuple[ControlCenter, RecordedBackend]:
    """The control center on a recorded session, with job 5's log written so far."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "5.log").write_text("\n".join(running_log_lines()) + "\n")
    (logs / "1.log").write_text("tuici: runner-1 testing 1111111111 (main), attempt 1\n42 passed, 1 skipped\n")
    (logs / "2.log").write_text("\n".join(failing_log_lines()) + "\n")
    (logs / "11.log").write_text("tuici: runner-3 testing aaaaaaaaaaaa (main), attempt 1\n42 passed, 1 skipped\n")
    backend = RecordedBackend(logs, events, **kwargs)
    return ControlCenter(backend, theme=theme, clock=frozen_clock), backend


async def settle(pilot, timeout: float = 10.0) -> None:
    """Wait until the replay is applied, and the output and tests panels have read what they show."""
    app: ControlCenter = pilot.app
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.wait_for(app.backend.replayed.wait(), timeout)

    def reading() -> bool:
        return any(w.group in ("tests", "log-find") and not w.is_finished for w in app.workers)
    while loop.time() < deadline:
        app.flush()
        await pilot.pause()
        if not app.pending and app.log_view.settled and not reading():
            await pilot.pause()
            if app.log_view.settled:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the app did not settle")


async def requests_done(pilot) -> None:
    """Wait for the requests that keys started (not for the feed, which never ends)."""
    await pilot.pause()
    app = pilot.app
    started = [w for w in app.workers if w.group in ("actions", "settings", "quit")]
    if started:  # an empty list would mean every worker
        await app.workers.wait_for_complete(started)
    await pilot.pause()


async def until(pilot, predicate, timeout: float = 30.0, message: str = "condition"):
    """Let the app run until ``predicate()`` is truthy (for tests against real processes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        pilot.app.flush()
        result = predicate()
        if result:
            return result
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
