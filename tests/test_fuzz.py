"""Bad input: the protocol decoder and a live dispatcher fed random, truncated, oversized and ill-typed frames.

Hypothesis draws the inputs (derandomized, so a failure reproduces); ``TUICI_SOAK=1`` draws many more.
The live fuzzer connects from a rotating set of 127.0.x.y source addresses so that the dispatcher's
per-address rate limiter (tested on its own in test_security.py) lets every input reach the decoder.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import os
import socket
import sqlite3
import struct
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuici import wire as p

from conftest import toml_command, wait_for

SOAK = bool(os.environ.get("TUICI_SOAK"))
SHA = "0123456789abcdef" * 2 + "01234567"
fuzz_settings = settings(derandomize=not SOAK, database=None, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
inputs_tried: dict[str, int] = {}


def tried(kind: str) -> None:
    inputs_tried[kind] = inputs_tried.get(kind, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_inputs_tried():
    yield
    print(f"\nfuzz inputs tried: {sum(inputs_tried.values())} {inputs_tried}")


# ---------------------------------------------------------------------- samples of every message

_commit = p.CommitInfo(sha=SHA, branch="main", author="Dev", subject="s", time=1.5)
_job = p.JobInfo(id=1, commit=SHA, branch="main", state="passed", runner="r1", attempts=1, exit_code=0)
_runner = p.RunnerInfo(name="r1", host="h", pid=1, state="idle")
_case = p.TestCase(name="t.py::t", outcome="failed", duration_s=0.5, message="m", details="d")
_bisection = p.BisectionInfo(branch="main", good=SHA, bad=SHA, first_bad=SHA, state="found", jobs=[1])
SAMPLES: list[p.Message] = [
    p.Hello(role="runner", token="t", name="n", host="h", pid=3, held=[p.HeldJob(job_id=1, attempt=1)]),
    p.Welcome(version=1, repo_url="/r", tips={"main": SHA}, log_offsets={1: 5}, name="n"),
    p.Refused(reason="no"),
    p.CommitsSeen(branch="main", tip=SHA, commits=[_commit], untested=[SHA], order="oldest-first"),
    p.BranchGone(branch="main"),
    p.TipsAck(branch="main", tip=SHA, queued=1),
    p.Heartbeat(), p.Bye(),
    p.Assign(job_id=1, attempt=1, commit=SHA, branch="main", repo_url="/r"),
    p.CancelJob(job_id=1),
    p.Output(job_id=1, attempt=1, offset=0, data=b"out"),
    p.JobResult(job_id=1, attempt=1, exit_code=0, duration_s=0.5, log_size=3, passed=1, failed=0, skipped=0,
                flaky_tests=["t.py::t"]),
    p.ResultAck(job_id=1, attempt=1, accepted=True),
    p.Subscribe(after_seq=3, output=True),
    p.Event(seq=1, ts=1.0, kind="job.finished", commit=_commit, job=_job, runner=_runner, message="m"),
    p.Event(seq=2, ts=1.0, kind="bisection.found", bisection=_bisection),
    p.JobOutput(job_id=1, offset=0, data=b"x"),
    p.StatusRequest(limit=2), p.StatusRequest(as_json=True), p.StatusJson(data=b'{"jobs":[', more=True),
    p.StatusReply(repo_url="/r", last_seq=1, commits=[_commit], jobs=[_job], runners=[_runner], bisections=[_bisection],
                  attempts=[p.AttemptInfo(job_id=1, attempt=1, runner="r1", started_at=1.0)]),
    p.RerunRequest(commit="0123"), p.CancelRequest(job_id=1),
    p.GcRequest(), p.GcReply(logs=1, log_bytes=3, events=2, history=p.History(logs=1, log_bytes=3, keep_days=30.0)),
    p.TryRequest(commit=p.ReportedCommit(sha=SHA, branch="main", subject="tuici try")),
    p.LogRequest(job_id=1, offset=0, follow=True),
    p.Notice(kind="process.started", name="x"), p.Reply(ok=True, message="m"),
    p.TestCases(job_id=1, attempt=1, piece=0, cases=[_case]),
    p.TestsRequest(job_id=1, failed_only=True, history=20),
    p.TestsReply(tests=[p.TestReport(name="t.py::t", outcome="failed", message="m", history=".F",
                                     broken_by=p.Change(commit=SHA, since=SHA, after=SHA))], job=_job, more=True),
    p.HistoryRequest(test="t", branch="main", limit=3),
    p.HistoryReply(test="t.py::t", branch="main", entries=[p.HistoryEntry(commit=SHA, job=1, outcome="passed",
                                                                          duration_s=0.1)]),
    p.FlakyRequest(),
    p.FlakyReply(tests=[p.FlakyTest(name="t.py::t", jobs=2, commits=1, last_seen=1.0, last_commit=SHA, last_job=1,
                                    branch="main")]),
]
TAGS = sorted({type(m).__struct_config__.tag for m in SAMPLES})
# Against a live dispatcher: nothing a control client may legitimately do to the test's jobs (cancel, rerun a
# real commit) and no new commits or tries, so that no job can be queued for the fuzzer's own runner.
LIVE_SAMPLES = [m for m in SAMPLES
                if not isinstance(m, (p.CancelRequest, p.RerunRequest, p.CommitsSeen, p.TryRequest))] + [
    p.CommitsSeen(branch="fuzz", tip=SHA, commits=[]), p.RerunRequest(commit="zzzz")]


def test_the_samples_cover_every_message_type():
    assert {type(m) for m in SAMPLES} == set(p.Message.__args__)


def as_dict(msg: p.Message) -> dict:
    """The message as the plain msgpack map a peer would send (bytes stay bytes)."""
    return msgspec.msgpack.decode(p.encode(msg)[4:])


# Anything msgpack can carry.
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_bodies(draw, samples=SAMPLES) -> bytes:
    """A valid message with one thing wrong (or, now and then, nothing wrong)."""
    msg = as_dict(draw(st.sampled_from(samples)))
    fields = [k for k in msg if k != "type"]
    how = draw(st.sampled_from(["retype", "drop", "add", "unknown_type", "nested", "valid"]))
    if how == "retype" and fields:
        msg[draw(st.sampled_from(fields))] = draw(msgpack_values)
    elif how == "drop" and fields:
        del msg[draw(st.sampled_from(fields))]
    elif how == "add":
        msg[draw(st.text(max_size=8))] = draw(msgpack_values)
    elif how == "unknown_type":
        msg["type"] = draw(st.text(max_size=12).filter(lambda t: t not in TAGS) | msgpack_values)
    elif how == "nested" and fields:
        # Reach inside lists of records (commits, held jobs, ...) too.
        key = draw(st.sampled_from(fields))
        if isinstance(msg[key], list) and msg[key] and isinstance(msg[key][0], dict):
            inner = msg[key][0]
            inner[draw(st.sampled_from(sorted(inner)))] = draw(msgpack_values)
    return msgspec.msgpack.encode(msg)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def assert_decodes_to_a_valid_message_or_protocol_error(body: bytes) -> None:
    try:
        msg = p.decode(body)
    except p.ProtocolError:
        return
    assert isinstance(msg, p.Message.__args__)
    # Whatever was accepted is well-typed: encoding it again gives the same message back.
    assert p.decode(p.encode(msg)[4:]) == msg
    for commit in getattr(msg, "commits", []):
        assert math.isfinite(commit.time)


# ---------------------------------------------------------------------- the decoder


@settings(fuzz_settings, max_examples=3000 if SOAK else 500)
@given(st.binary(max_size=300) | st.builds(lambda tag, b: tag + b, st.sampled_from([b"\x81", b"\x82", b"\x83"]),
                                            st.binary(max_size=300)))
def test_decoder_on_random_bytes(body):
    tried("decoder: random bytes")
    assert_decodes_to_a_valid_message_or_protocol_error(body)


@st.composite
def bit_flipped_bodies(draw) -> bytes:
    """A valid body with a few bytes overwritten: lengths, type markers and UTF-8 go wrong."""
    body = bytearray(p.encode(draw(st.sampled_from(SAMPLES)))[4:])
    for _ in range(draw(st.integers(1, 4))):
        body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return bytes(body)


@settings(fuzz_settings, max_examples=5000 if SOAK else 1500)
@given(bit_flipped_bodies())
def test_decoder_on_bit_flipped_frames(body):
    tried("decoder: bit-flipped frames")
    assert_decodes_to_a_valid_message_or_protocol_error(body)


@settings(fuzz_settings, max_examples=5000 if SOAK else 1500)
@given(mutated_bodies())
def test_decoder_on_valid_frames_with_one_thing_wrong(body):
    tried("decoder: ill-typed frames")
    assert_decodes_to_a_valid_message_or_protocol_error(body)


@fuzz_settings
@given(msgpack_values)
def test_decoder_on_arbitrary_msgpack(value):
    tried("decoder: arbitrary msgpack")
    assert_decodes_to_a_valid_message_or_protocol_error(msgspec.msgpack.encode(value))


@pytest.mark.parametrize("body", [
    msgspec.msgpack.encode({"type": "cancel", "job_id": None}),
    b"\x81\xa4type\xa6\xff\xfe\xfd\xfc\xfb\xfa",  # a str that is not UTF-8
    b"\x82\xa4type\xa6cancel\xa6job_id\xa3\xed\xa0\x80",  # a lone surrogate, UTF-8 encoded
    b"\x91" * 100_000 + b"\xc0",  # nesting deeper than any message
    msgspec.msgpack.encode({"type": "commits", "branch": "main", "tip": SHA,
                            "commits": [{"sha": SHA, "branch": "main", "time": math.nan}]}),
    msgspec.msgpack.encode({"type": "commits", "branch": "main", "tip": SHA,
                            "commits": [{"sha": SHA, "branch": "main", "time": math.inf}]}),
    msgspec.msgpack.encode({"type": "commits", "branch": "x\x00y", "tip": SHA, "commits": []}),
    msgspec.msgpack.encode({"type": "commits", "branch": "main", "tip": "--upload-pack=touch pwned", "commits": []}),
    msgspec.msgpack.encode({"type": "commits", "branch": "main", "tip": SHA + "\n", "commits": []}),
    msgspec.msgpack.encode({"type": "commits", "branch": "main\n", "tip": SHA, "commits": []}),
    msgspec.msgpack.encode({"type": "commits", "branch": "main", "tip": SHA,
                            "commits": [{"sha": "--output=/tmp/pwned", "branch": "main"}]}),
    msgspec.msgpack.encode({"type": "commits", "branch": "main", "tip": SHA,
                            "commits": [{"sha": SHA, "branch": "x\x1b]52;c;evil\x07"}]}),
    msgspec.msgpack.encode({"type": "output", "job_id": 1, "attempt": 1, "offset": -5, "data": b"x"}),
])
def test_decoder_rejects_what_would_harm_the_store_or_a_runner(body):
    """None of these may decode. Some once did, or crashed the decoder: invalid UTF-8 escaped as a
    UnicodeDecodeError, a NaN commit time poisoned the SQLite store (NOT NULL), a NUL in a branch name
    cannot go into a test command's environment, a negative offset rewrote a log, a trailing newline
    passed the sha and branch patterns (their `$` matched before it)."""
    tried("decoder: known-bad")
    with pytest.raises(p.ProtocolError):
        p.decode(body)


stream_pieces = st.one_of(
    st.sampled_from(SAMPLES).map(p.encode),
    mutated_bodies().map(frame),
    st.binary(max_size=40),
    st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),  # a header promising anything
    st.sampled_from(SAMPLES).map(p.encode).flatmap(lambda f: st.integers(1, len(f) - 1).map(lambda n: f[:n])),
)


def _frames_read(read, frames: int) -> list[bytes | str]:
    """What ``read`` returns (re-encoded) until a clean end (None) or a ProtocolError ("error")."""
    got: list[bytes | str] = []
    for _ in range(frames + 1):
        try:
            msg = read()
        except p.ProtocolError:
            return got + ["error"]
        if msg is None:
            return got
        assert isinstance(msg, p.Message.__args__)
        got.append(p.encode(msg))
    pytest.fail("read more messages than frames were sent")


@fuzz_settings
@given(st.lists(stream_pieces, max_size=6))
def test_read_message_on_streams_of_good_truncated_and_oversized_frames(pieces):
    """Messages until a clean end (None) or a ProtocolError; never another exception, never a hang.
    The blocking reader of the one-shot commands reads exactly what the asyncio one does."""
    tried("decoder: framed streams")
    data = b"".join(pieces)
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(limit=p.MAX_FRAME + 16, loop=loop)
        reader.feed_data(data)
        reader.feed_eof()
        via_asyncio = _frames_read(lambda: loop.run_until_complete(p.read_message(reader)), len(pieces))
    finally:
        loop.close()
    stream = io.BytesIO(data)
    assert _frames_read(lambda: p.read_message_blocking(stream), len(pieces)) == via_asyncio


def test_hello_is_read_with_a_small_frame_limit():
    """Before a peer has shown the token it may not make the dispatcher buffer a 16 MiB frame."""
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", p.MAX_HELLO + 1))
        with pytest.raises(p.ProtocolError, match="exceeds"):
            await p.read_message(reader, p.MAX_HELLO)
    asyncio.run(go())
    assert len(p.encode(p.Hello(role="runner", token="t" * 100, name="n" * 200, host="h" * 200,
                                held=[p.HeldJob(job_id=1, attempt=1)]))) < p.MAX_HELLO


# ---------------------------------------------------------------------- a live dispatcher


class Peers:
    """Raw sockets from a rotating set of loopback source addresses (127.0.x.y, x >= 10)."""

    def __init__(self, address: str):
        tcp = p.parse_address(address)
        self.host, self.port = tcp.host, tcp.port
        self.sources = itertools.cycle(f"127.0.{x}.{y}" for x in range(10, 14) for y in range(1, 255))

    def exchange(self, payload: bytes, timeout: float = 10.0) -> bytes:
        """Send ``payload``, end our side, and return everything the dispatcher says until it closes."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout,
                                        source_address=(next(self.sources), 0))
        try:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass
            received = b""
            while True:
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    return received
                if not data:
                    return received
                received += data
        finally:
            sock.close()


def replies(data: bytes) -> list[p.Message]:
    """The dispatcher's answer, frame by frame: it never sends anything but valid messages."""
    out = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        out.append(p.decode(data[4:4 + length]))
        data = data[4 + length:]
    return out


def check_store(db_path, commits: set[str]) -> None:
    """Everything stored decodes as the record it should be, and nothing refers to what is not there."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {sha: t for sha, t in db.execute("SELECT sha, time FROM commits")}
        assert commits <= set(stored)
        for sha, t in stored.items():  # only what passed as an observer's report was stored
            msgspec.convert({"sha": sha, "branch": "b", "time": t}, p.ReportedCommit)
        for body, sha in db.execute("SELECT body, commit_sha FROM jobs"):
            job = msgspec.msgpack.decode(body, type=p.JobInfo)
            assert job.commit == sha and sha in stored
        for (body,) in db.execute("SELECT body FROM attempts"):
            msgspec.msgpack.decode(body, type=p.AttemptInfo)
        seqs = [seq for (seq,) in db.execute("SELECT seq FROM events ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))
        for (body,) in db.execute("SELECT body FROM events"):
            msgspec.msgpack.decode(body, type=p.Event)
    finally:
        db.close()


@st.composite
def attacks(draw, token: str, taken_name: str, job_ids: list[int]) -> tuple[str, bytes]:
    """What one connection sends: (kind, bytes)."""
    kind = draw(st.sampled_from(["random bytes", "truncated frame", "huge length prefix", "wrong token",
                                 "after hello", "runner reports", "taken name"]))
    if kind == "random bytes":
        return kind, draw(st.binary(min_size=1, max_size=200))
    if kind == "truncated frame":
        whole = p.encode(p.Hello(role=draw(st.sampled_from(["control", "runner", "observer"])), token=token))
        return kind, whole[:draw(st.integers(1, len(whole) - 1))]
    if kind == "huge length prefix":
        length = draw(st.integers(p.MAX_HELLO + 1, 2**32 - 1) | st.integers(1000, p.MAX_HELLO))
        return kind, struct.pack(">I", length) + draw(st.binary(max_size=100))
    if kind == "wrong token":
        return kind, p.encode(p.Hello(role="control", token=draw(st.text(max_size=50).filter(lambda t: t != token))))
    if kind == "taken name":
        return kind, p.encode(p.Hello(role="runner", token=token, name=taken_name, pid=1))
    if kind == "runner reports":
        # A runner of its own reporting on jobs that do not exist or are another runner's.
        hello = p.Hello(role="runner", token=token, name="fuzz", pid=os.getpid())
        job_id = draw(st.sampled_from(job_ids) | st.integers(0, 2**63 - 1))
        attempt = draw(st.integers(0, 5))
        msgs = draw(st.lists(st.sampled_from([
            p.JobResult(job_id=job_id, attempt=attempt, exit_code=0, duration_s=0.1, log_size=0),
            p.Output(job_id=job_id, attempt=attempt, offset=0, data=b"forged"),
            p.Heartbeat(),
        ]), min_size=1, max_size=3))
        return kind, b"".join(p.encode(m) for m in [hello, *msgs])
    role = draw(st.sampled_from(["control", "runner", "observer"]))
    hello = p.Hello(role=role, token=token, name="fuzz" if role == "runner" else "", pid=os.getpid())
    body = mutated_bodies(LIVE_SAMPLES) | st.binary(max_size=60) | msgpack_values.map(msgspec.msgpack.encode)
    bodies = draw(st.lists(body, min_size=1, max_size=3))
    return kind, p.encode(hello) + b"".join(frame(b) for b in bodies)


@pytest.mark.timeout(300)
def test_a_live_dispatcher_survives_fuzzing_and_keeps_serving_everyone_else(repo, cluster, tmp_path, outside):
    cluster.start_observer()
    cluster.start_runner("r1")
    first = repo.head()
    assert cluster.wait_job(first).state == "passed"
    gate = outside / "go"
    blocked = repo.commit("waits for the fuzzing to end",
                          config=toml_command(f"echo begun; while [ ! -e {gate} ]; do sleep 0.05; done; echo finished",
                                              timeout=600))
    held = cluster.wait_job(blocked, states={"running"})
    token = cluster.state.token()
    peers = Peers(cluster.address)
    dispatcher = cluster.procs["dispatcher"]
    seen = {"welcome": 0, "refused": 0, "rejected result": 0}

    @settings(fuzz_settings, max_examples=3000 if SOAK else 1500)
    @given(attacks(token, "r1", [1, held.id, held.id + 1]))
    def attack(kind_and_payload):
        kind, payload = kind_and_payload
        tried(f"live: {kind}")
        answer = replies(peers.exchange(payload))
        assert dispatcher.poll() is None, "the dispatcher died"
        for msg in answer:
            if isinstance(msg, p.Welcome):
                seen["welcome"] += 1
            elif isinstance(msg, p.Refused):
                seen["refused"] += 1
                assert kind in ("wrong token", "taken name"), msg
            elif isinstance(msg, p.ResultAck):
                assert not msg.accepted, f"a forged result was accepted: {msg}"
                seen["rejected result"] += 1
            elif isinstance(msg, p.Assign):
                pytest.fail(f"the fuzzer's runner was given a job: {msg}")
        if kind == "taken name":
            assert isinstance(answer[0], p.Refused) and "already registered" in answer[0].reason
        if kind == "wrong token":
            assert answer == [p.Refused(reason="wrong token")]

    attack()
    assert seen["welcome"] and seen["refused"] and seen["rejected result"]

    # Everyone else kept working: the held job is still r1's, and finishes as r1's.
    status = cluster.status()
    runner = {r.name: r for r in status.runners}["r1"]
    assert (runner.state, runner.job) == ("busy", held.id)
    gate.touch()
    job = cluster.wait_job(blocked)
    assert (job.state, job.runner, job.attempts) == ("passed", "r1", 1)
    log = cluster.log_of(job.id)
    assert log.rstrip().endswith("finished") and "forged" not in log
    after = repo.commit("after the fuzzing")
    assert cluster.wait_job(after).state == "passed"
    dispatcher_log = cluster.component_log("dispatcher")
    assert "internal error" not in dispatcher_log and "Traceback" not in dispatcher_log
    check_store(cluster.state.db, {first, blocked, after})
    attempts = [a for a in cluster.status().attempts if a.job_id == job.id]
    assert [(a.runner, a.outcome) for a in attempts] == [("r1", "passed")]


def test_unauthenticated_peers_cannot_make_the_dispatcher_buffer_big_frames(repo, cluster):
    """Thirty peers each announce a frame just under the 16 MiB limit and send 8 MiB of it."""
    import psutil

    dispatcher = psutil.Process(cluster.procs["dispatcher"].pid)
    before = dispatcher.memory_info().rss
    tcp = p.parse_address(cluster.address)
    payload = struct.pack(">I", p.MAX_FRAME - 1) + b"\0" * (8 << 20)
    socks = []
    try:
        for i in range(30):
            sock = socket.create_connection((tcp.host, tcp.port), timeout=10,
                                            source_address=(f"127.0.20.{i + 1}", 0))
            socks.append(sock)
            try:
                sock.sendall(payload)
            except OSError:
                pass  # cut off after the header, as it should be
        time.sleep(0.5)
        grown = dispatcher.memory_info().rss - before
        assert grown < 60 << 20, f"the dispatcher grew by {grown >> 20} MiB holding unauthenticated frames"
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: cluster.component_log("dispatcher").count("exceeds") >= 30, message="thirty logged refusals")
    assert cluster.status().repo_url
