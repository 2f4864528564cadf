"""Every message tuici components exchange: typed, and validated by msgspec as it is decoded.

A frame body (see ``framing``) decodes to exactly one of the ``Message`` structs, tagged by their ``type``
field. Kinds and states are ``Literal``s, so a value outside them is refused on the way in.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

# Bumped whenever a message changes shape in a way the other side's decoder would refuse; the dispatcher refuses
# a hello of another version. 2: ``Refused.permanent``. 3: tries and log streams (``TryRequest``, ``LogRequest``),
# skipped commits, superseded jobs (``CommitsSeen.cancel_superseded``, ``BranchGone.cancel_queued``), status tips.
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
EventKind = Literal[
    "commit.seen", "branch.deleted",
    "job.queued", "job.started", "job.finished", "job.requeued",
    "runner.joined", "runner.idle", "runner.lost", "runner.left",
    NoticeKind,
]

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
    priority: int = 0  # dispatch order: the highest first, then the lowest id; a rerun goes above every other
    env: str = ""  # the key of the environment ``setup`` made (none without setup)
    env_reused: bool = False  # whether that environment was reused rather than made for this job
    # "try": a snapshot of a work tree, not a commit of its branch (``branch`` is the one its HEAD was on); tip
    # statuses, superseding and the commits list leave it out
    kind: JobKind = "commit"


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


# ----------------------------------------------------------------- observer


class CommitsSeen(_Msg, tag="commits"):
    branch: Branch
    tip: Sha
    commits: list[ReportedCommit]  # oldest first
    cancel_superseded: bool = False  # the tip's config says so: new commits cancel the branch's older queued jobs


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


class StatusReply(_Msg, tag="status_reply"):
    repo_url: str
    last_seq: int
    commits: list[CommitInfo]
    jobs: list[JobInfo]
    runners: list[RunnerInfo]
    attempts: list[AttemptInfo] = []
    tips: dict[str, str] = {}  # each watched branch's tip, as the observer last reported it


class RerunRequest(_Msg, tag="rerun"):
    commit: str  # full sha or unique prefix


class CancelRequest(_Msg, tag="cancel"):
    job_id: int


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
    Heartbeat, Bye, Assign, CancelJob, Output, JobResult, ResultAck,
    Subscribe, Event, JobOutput, StatusRequest, StatusReply, StatusJson, RerunRequest, CancelRequest, TryRequest,
    LogRequest, Notice, Reply,
]

_json_encoder = msgspec.json.Encoder()


def to_json_bytes(obj: object) -> bytes:
    return _json_encoder.encode(obj)


def to_json(obj: msgspec.Struct) -> str:
    return _json_encoder.encode(obj).decode()
