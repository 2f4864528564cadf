"""Every message tuici components exchange: typed, and validated by msgspec as it is decoded.

A frame body (see ``framing``) decodes to exactly one of the ``Message`` structs, tagged by their ``type``
field. Kinds and states are ``Literal``s, so a value outside them is refused on the way in.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal, Union

import msgspec

# Bumped whenever a message changes shape in a way the other side's decoder would refuse; the dispatcher refuses
# a hello of another version. 2: ``Refused.permanent``. 3: test cases (``TestCases``, the tests, history and
# flaky requests, the jobs' ``failed_tests`` and ``flaky_tests``); branch and history events,
# ``JobInfo.log_deleted``, ``StatusReply.history``, ``gc``, and a ``StatusReply`` in an event stream that resumed
# past deleted events; tries and log streams (``TryRequest``, ``LogRequest``), skipped commits, superseded jobs
# (``CommitsSeen.cancel_superseded``, ``BranchGone.cancel_queued``), status tips; ``Refused.active`` and the
# ``dispatcher.active`` event of a group sharing a store;
# ``CommitsSeen.untested`` and ``order``, bisections.
PROTOCOL_VERSION = 3

Role = Literal["runner", "observer", "control"]
JobState = Literal["queued", "running", "passed", "failed", "error", "cancelled"]
# What a job tests: a commit the observer reported on a branch, or a snapshot of a work tree (`tuici try`).
JobKind = Literal["commit", "try"]
RunnerState = Literal["idle", "busy", "lost"]
FINAL_STATES = frozenset({"passed", "failed", "error", "cancelled"})
# How an attempt ended ("" while it runs): a job's final state, or the runner lost, or the job's timeout.
AttemptOutcome = Literal["", "passed", "failed", "error", "cancelled", "lost", "timeout"]
# What a supervisor reports about its processes (and the dispatcher publishes as events of the same kind).
NoticeKind = Literal["process.started", "process.exited", "process.restarted", "process.stopped"]
# branch.broken/fixed: a branch's verdict changed (its newest tested commit failed where the one before passed,
# or the other way); history.pruned: retention deleted old job logs and events.
EventKind = Literal[
    "commit.seen", "branch.deleted", "branch.broken", "branch.fixed",
    "job.queued", "job.started", "job.finished", "job.requeued",
    "runner.joined", "runner.idle", "runner.lost", "runner.left",
    "history.pruned",
    "dispatcher.active",  # a dispatcher of a group took over (its message names it)
    "bisection.started", "bisection.job", "bisection.found", "bisection.abandoned",
    NoticeKind,
]
# Which of a branch's queued new commits goes first when runners are scarce (``order`` in tuici.toml).
Order = Literal["newest-first", "oldest-first"]
BisectionState = Literal["running", "found", "abandoned"]

# A full object id (SHA-1 or SHA-256): never an option or a path. Checked where a sha comes in: in what an
# observer reports (the dispatcher queues it) and in what a runner is told to check out. Control clients only
# show what the dispatcher checked on the way in, and skip the check (a third of decoding 10,000 jobs).
# Anchored with \A and \Z: `$` would also match before a trailing newline.
Sha = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{40}([0-9a-f]{24})?\Z")]
# As git allows it: no control characters (a NUL could not even go into a test command's environment).
Branch = Annotated[str, msgspec.Meta(pattern=r"\A[^\x00-\x1f\x7f]+\Z")]
# Unix seconds, finite: SQLite would store a NaN as NULL and refuse the whole batch it is in.
Timestamp = Annotated[float, msgspec.Meta(ge=-1e11, le=1e11)]
Offset = Annotated[int, msgspec.Meta(ge=0)]

# A test's result, as a JUnit XML file says it (see ``tuici.testcases``): the file is written by the code under
# test, so every text in it is bounded here too, and checked where it comes in (the dispatcher's decoder).
TestOutcome = Literal["passed", "failed", "error", "skipped", "xfailed", "xpassed"]
MAX_TEST_NAME = 2000
MAX_TEST_MESSAGE = 1000
MAX_TEST_DETAILS = 4000
MAX_LISTED_TESTS = 20  # names a job lists of its failed tests, and of its flaky ones
ListedTests = Annotated[list[Annotated[str, msgspec.Meta(max_length=MAX_TEST_NAME)]],
                        msgspec.Meta(max_length=MAX_LISTED_TESTS)]


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    pass


# ----------------------------------------------------------------- shared records


class CommitInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    sha: str
    branch: str
    author: str = ""
    subject: str = ""
    time: Timestamp = 0.0  # committer time
    skipped: bool = False  # its message says [skip ci] or [ci skip]: it gets no job (a rerun still queues one)


class ReportedCommit(CommitInfo):
    """A commit as an observer reports it: its sha and branch are checked (see ``Sha``)."""

    sha: Sha
    branch: Branch


class JobInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    id: int
    commit: str
    branch: str
    state: JobState
    runner: str | None = None
    attempts: int = 0
    exit_code: int | None = None
    duration_s: float | None = None
    passed: int | None = None
    failed: int | None = None
    skipped: int | None = None
    error: str = ""
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    log_size: int = 0
    priority: int = 0  # a ``Priority`` level (reruns: 1 and up); the order is ``dispatch_order``
    env: str = ""  # the key of the environment ``setup`` made (none without setup)
    env_reused: bool = False  # whether that environment was reused rather than made for this job
    failed_tests: list[str] = []  # the first MAX_LISTED_TESTS tests that failed (or erred)
    flaky_tests: list[str] = []  # the first MAX_LISTED_TESTS that failed, then passed when retried
    log_deleted: bool = False  # retention deleted its log (``log_size`` still says how much it printed)
    # "try": a snapshot of a work tree, not a commit of its branch (``branch`` is the one its HEAD was on); tip
    # statuses, superseding and the commits list leave it out
    kind: JobKind = "commit"


class Priority(enum.IntEnum):
    """Where a queued job stands (``JobInfo.priority``): a higher level is handed out first."""

    # Under order = "newest-first", a branch's older new commits wait behind every other level, newest first:
    BACKFILL = -3  # the older commits of one report (a push of several commits)
    SUPERSEDED = -2  # a branch's newest commit, gone behind when a newer one came: what someone pushed
    BISECT = -1  # a commit a bisection tests: behind every new commit, so new work is never starved by one
    NEW = 0  # a new commit: under "newest-first", the newest of its branch
    FRONT = 1  # `tuici rerun` (and tries, to come): 1 and up, each above every job queued before it


def dispatch_order(job: JobInfo) -> tuple[int, int]:
    """The key queued jobs are handed out by, smallest first: the highest priority, then the oldest job, except
    that older commits left behind by newer ones go newest first (the nearer the tip, the more it tells)."""
    return -job.priority, -job.id if job.priority < Priority.BISECT else job.id


class RunnerInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    name: str
    host: str
    pid: int
    state: RunnerState
    job: int | None = None
    jobs_done: int = 0
    last_heartbeat: float = 0.0


class AttemptInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    job_id: int
    attempt: int
    runner: str
    started_at: float
    ended_at: float | None = None
    outcome: AttemptOutcome = ""
    reason: str = ""


class TestCase(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One test's result in a job: its id (pytest's node id where the JUnit XML allows), how it ended, and for a
    failure the message and the first lines of its traceback."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEST_NAME)]
    outcome: TestOutcome
    duration_s: Annotated[float, msgspec.Meta(ge=0, le=1e9)] = 0.0
    message: Annotated[str, msgspec.Meta(max_length=MAX_TEST_MESSAGE)] = ""
    details: Annotated[str, msgspec.Meta(max_length=MAX_TEST_DETAILS)] = ""
    flaky: bool = False  # failed, then passed when retried (``retry_failed``)


class Change(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Where a test's outcome changed on its branch (from passing to failing, or back): between ``after``, the
    last tested commit with the old outcome ("" when none is on record), and ``since``, the first tested commit
    with the new one. ``commit`` is the commit that changed it, once known: ``since``, when no commit between
    the two went untested; else null, and ``untested`` commits (a bisect's range) are in question."""

    commit: str | None
    since: str
    after: str = ""
    untested: int = 0


class TestReport(TestCase, omit_defaults=False):
    """A job's test case as `tuici tests` lists it: with where it broke or was fixed, and its latest outcomes on
    the branch (``history``: one letter each, oldest first, this job's last; . passed, F failed, E error,
    s skipped, x xfailed, X xpassed, - not run), for the failing and flaky ones when asked for."""

    broken_by: Change | None = None
    fixed_by: Change | None = None
    history: str = ""


class HistoryEntry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A test's outcome in one job of its branch."""

    commit: str
    job: int
    outcome: TestOutcome
    duration_s: float
    flaky: bool = False


class FlakyTest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A test seen both passing and failing on the same commit (on retry, or in a rerun)."""

    __test__ = False

    name: str
    jobs: int  # jobs in which it was seen flaky
    commits: int  # on how many commits
    last_seen: float  # when it last was (unix seconds)
    last_commit: str
    last_job: int
    branch: str


class BisectionInfo(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A search for the first failing commit between a passing one (``good``) and a failing one (``bad``) of a
    branch, over the commits between them that have no verdict; ``jobs`` are those it queued or moved up."""

    branch: str
    good: str
    bad: str
    first_bad: str | None = None  # null until found
    state: BisectionState = "running"
    jobs: list[int] = []


class HeldJob(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A job a reconnecting runner still owns: running, or finished with an undelivered result."""

    job_id: int
    attempt: int
    finished: bool = False


# ----------------------------------------------------------------- handshake


class Hello(_Msg, tag="hello"):
    role: Role
    token: str
    version: int = PROTOCOL_VERSION
    name: str = ""
    host: str = ""
    pid: int = 0
    repo_url: str = ""
    held: list[HeldJob] = []


class Welcome(_Msg, tag="welcome"):
    version: int
    repo_url: str = ""
    tips: dict[str, str] = {}  # observer: branch -> last reported tip
    log_offsets: dict[int, int] = {}  # runner: held job id -> bytes already stored
    name: str = ""  # runner: the name the dispatcher registered


class Refused(_Msg, tag="refused"):
    """The dispatcher will not serve this peer; ``permanent`` unless asking again may help (a runner's name
    still held by a session the dispatcher has not yet seen end). It defaults to true, so the refusals an
    older peer must be able to read (a wrong token, another version) keep the shape it decodes."""

    reason: str
    permanent: bool = True
    active: str = ""  # from a dispatcher standing by: the address of the active one, to go to instead


# ----------------------------------------------------------------- observer


class CommitsSeen(_Msg, tag="commits"):
    branch: Branch
    tip: Sha
    commits: list[ReportedCommit]  # oldest first
    cancel_superseded: bool = False  # the tip's config says so: new commits cancel the branch's older queued jobs
    # Commits recorded without a job (coalesced, or off the first-parent chain), for bisections to test.
    untested: list[Sha] = []
    order: Order = "newest-first"  # the branch's own, from its tip's config


class BranchGone(_Msg, tag="branch_gone"):
    branch: Branch
    cancel_queued: bool = False  # its last tip's config says cancel_superseded: its queued jobs are cancelled


class TipsAck(_Msg, tag="tips_ack"):
    branch: str
    tip: str
    queued: int


# ----------------------------------------------------------------- runner


class Heartbeat(_Msg, tag="heartbeat"):
    pass


class Bye(_Msg, tag="bye"):
    """A runner leaving on purpose (as opposed to being lost)."""


class Assign(_Msg, tag="assign"):
    job_id: int
    attempt: int
    commit: Sha
    branch: Branch
    repo_url: str


class CancelJob(_Msg, tag="cancel_job"):
    job_id: int


class Output(_Msg, tag="output"):
    job_id: int
    attempt: int
    offset: Offset
    data: bytes


class JobResult(_Msg, tag="result"):
    job_id: int
    attempt: int
    exit_code: int | None
    duration_s: float
    log_size: int
    passed: int | None = None
    failed: int | None = None
    skipped: int | None = None
    error: str = ""  # set when tuici, not the tests, could not run the job
    cancelled: bool = False
    timed_out: bool = False
    env: str = ""
    env_reused: bool = False
    test_cases: Annotated[int, msgspec.Meta(ge=0)] = 0  # TestCases the runner sent ahead of this result, in pieces
    failed_tests: ListedTests = []
    flaky_tests: ListedTests = []


class TestCases(_Msg, tag="test_cases"):
    """A piece of a job's test cases, sent ahead of its result (``JobResult.test_cases`` counts them all):
    ``TESTS_PER_PIECE`` at most, so a suite of any size goes in frames well below the limit. Piece 0 starts
    over (a runner that reconnected sends them all again)."""

    __test__ = False

    job_id: int
    attempt: int
    piece: Annotated[int, msgspec.Meta(ge=0)]
    cases: list[TestCase]


class ResultAck(_Msg, tag="result_ack"):
    """The answer to a result; also sent unasked (``accepted=False``) when the dispatcher took the job back from
    a runner that did not end it in time after a cancel: either way the runner drops the job."""

    job_id: int
    attempt: int
    accepted: bool
    reason: str = ""


# ----------------------------------------------------------------- control


class Subscribe(_Msg, tag="subscribe"):
    after_seq: int = 0
    output: bool = False


class Event(_Msg, tag="event"):
    seq: int
    ts: float
    kind: EventKind
    commit: CommitInfo | None = None
    job: JobInfo | None = None
    runner: RunnerInfo | None = None
    bisection: BisectionInfo | None = None
    message: str = ""


class JobOutput(_Msg, tag="job_output"):
    """Live output for subscribers that asked for it; not sequenced: the stored log is the record."""

    job_id: int
    offset: Offset
    data: bytes


class StatusRequest(_Msg, tag="status"):
    limit: int = 0  # newest N jobs; 0 for all
    as_json: bool = False  # answer with StatusJson chunks instead of one StatusReply


class StatusJson(_Msg, tag="status_json"):
    """A piece of the status as the JSON document `tuici status --json` prints (a StatusReply's fields).

    The dispatcher encodes it once, and the client writes it out undecoded: on 10,000 jobs that saves
    decoding and re-encoding 5 MB. Sent in pieces of ``OUTPUT_CHUNK``, so a long history has no frame limit.
    """

    data: bytes
    more: bool = False  # another piece follows


class History(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """What the kept history takes, and what retention keeps (see ``localconfig``)."""

    logs: int = 0  # job logs kept
    log_bytes: int = 0  # their size
    db_bytes: int = 0  # the database, with its write-ahead log
    keep_days: float = 0.0
    keep_bytes: int = 0
    events_from: int = 0  # the oldest event kept (its number); those before it were deleted
    last_gc: float = 0.0  # when retention last ran


DispatcherRole = Literal["active", "standby"]


class DispatcherInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """A dispatcher of a group sharing a PostgreSQL store, as the active one last read the group."""

    name: str
    address: str
    role: DispatcherRole
    seen_at: float


class StatusReply(_Msg, tag="status_reply"):
    """The whole state at event ``last_seq``. Also sent in an event stream, first, when the events after the
    subscriber's cursor were deleted by retention: the stream goes on after ``last_seq``."""

    repo_url: str
    last_seq: int
    commits: list[CommitInfo]
    jobs: list[JobInfo]
    runners: list[RunnerInfo]
    bisections: list[BisectionInfo]  # always there, even empty: scripts look for it
    attempts: list[AttemptInfo] = []
    history: History = msgspec.field(default_factory=History)
    dispatchers: list[DispatcherInfo] = []  # with a shared store: the group, the active one first
    tips: dict[str, str] = {}  # each watched branch's tip, as the observer last reported it


class TestsRequest(_Msg, tag="tests"):
    """A job's test cases, failures first; answered by ``TestsReply`` pieces, or a ``Reply`` saying why not."""

    __test__ = False

    job_id: int
    failed_only: bool = False
    history: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0  # outcomes on the branch per failing or flaky test


class TestsReply(_Msg, tag="tests_reply"):
    __test__ = False

    tests: list[TestReport]
    job: JobInfo | None = None  # in the first piece
    more: bool = False  # another piece follows


class HistoryRequest(_Msg, tag="history"):
    """A test's outcomes on a branch, newest first. ``test`` is its name, or a part of it that names one test
    alone; ``branch`` defaults to the one it last ran on."""

    test: str
    branch: str = ""
    limit: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: every one


class HistoryReply(_Msg, tag="history_reply"):
    test: str  # the full name
    branch: str
    entries: list[HistoryEntry]
    more: bool = False


class FlakyRequest(_Msg, tag="flaky"):
    pass


class FlakyReply(_Msg, tag="flaky_reply"):
    tests: list[FlakyTest]
    more: bool = False


class RerunRequest(_Msg, tag="rerun"):
    commit: str  # full sha or unique prefix


class CancelRequest(_Msg, tag="cancel"):
    job_id: int


class GcRequest(_Msg, tag="gc"):
    """Apply retention now (it also runs at start and every hour)."""


class GcReply(_Msg, tag="gc_reply"):
    logs: int  # job logs deleted
    log_bytes: int  # bytes they held
    events: int  # events deleted
    history: History  # what is kept now


class TryRequest(_Msg, tag="try"):
    """Test a snapshot of a work tree (`tuici try`): a commit no branch points to, queued at the front. The
    dispatcher replies with the job (a ``Reply``)."""

    commit: ReportedCommit  # its branch is the one the work tree's HEAD was on


class LogRequest(_Msg, tag="log"):
    """A job's stored output from ``offset`` on, as ``JobOutput`` pieces, then a ``Reply`` with the job once all
    of it is sent: at once, or with ``follow``, when the job is final. Output of an attempt that was lost is
    dropped from the log: the next piece then starts again at offset 0. The last request on its connection."""

    job_id: int
    offset: Offset = 0
    follow: bool = False


class Notice(_Msg, tag="notice"):
    """A supervisor telling the dispatcher what happened to a process, to publish as an event."""

    kind: NoticeKind
    name: str
    message: str = ""


class Reply(_Msg, tag="reply"):
    ok: bool
    message: str = ""
    job: JobInfo | None = None


Message = Union[
    Hello, Welcome, Refused,
    CommitsSeen, BranchGone, TipsAck,
    Heartbeat, Bye, Assign, CancelJob, Output, TestCases, JobResult, ResultAck,
    Subscribe, Event, JobOutput, StatusRequest, StatusReply, StatusJson, RerunRequest, CancelRequest, TryRequest,
    LogRequest, GcRequest, GcReply, Notice, Reply, TestsRequest, TestsReply, HistoryRequest, HistoryReply,
    FlakyRequest, FlakyReply,
]

_json_encoder = msgspec.json.Encoder()


def to_json_bytes(obj: object) -> bytes:
    return _json_encoder.encode(obj)


def to_json(obj: msgspec.Struct) -> str:
    return _json_encoder.encode(obj).decode()
