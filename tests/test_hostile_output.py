"""Test commands that behave badly: floods of output, terminal escapes, binary, and process trees that will not die.

Their output is stored as it came; it reaches the user's terminal (``tuici log``, ``tuici status``,
``tuici serve``) only through tuici.sanitize, which keeps colours and drops everything that could move the
cursor, clear the screen, set the title or reach the clipboard.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuici import wire as p
from tuici.sanitize import StreamCleaner, clean, one_line

from conftest import PeakRss, _env, _wait_or_kill, job_processes, toml_command, tuici_processes, wait_for

MiB = 1 << 20
SGR = re.compile(r"\x1b\[[0-9;:]*m")
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all C0 but \t and \n, DEL, all C1; ESC included


def assert_terminal_safe(text: str, colour: bool = True) -> None:
    """Nothing in ``text`` but printable characters, tabs, newlines and (if allowed) colour sequences."""
    rest = SGR.sub("", text) if colour else text
    bad = CONTROLS.search(rest)
    if bad is not None:
        context = rest[max(0, bad.start() - 30):bad.end() + 30]
        pytest.fail(f"raw control {bad.group()!r} at {bad.start()}: {context!r}")


def tuici(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuici", *args], cwd=cwd, capture_output=True, env=_env(),
                          timeout=120, check=True)


# ---------------------------------------------------------------------- sanitize, unit by unit

HOSTILE = (
    b"\x1b[31mred\x1b[0m \x1b[1;38;5;196mbold\x1b[m plain\n"
    b"\x1b[2J\x1b[H\x1b[10;20Hmoved\x1b[3A\x1b[K\n"           # clear screen, home, cursor moves, erase line
    b"\x1b[?1049h\x1b[?25l\x1b[?1000h"                          # alternate screen, hidden cursor, mouse reporting
    b"\x1b]0;pwned title\x07\x1b]2;pwned again\x1b\\"           # OSC titles, BEL- and ST-terminated
    b"\x1b]52;c;cm0gLXJmIH4K\x07"                               # OSC 52: write the clipboard
    b"\x1b]8;;http://evil.example\x07link\x1b]8;;\x07\n"        # OSC 8 hyperlink
    b"\x1bP+q544e\x1b\\\x1b[6n\x1b[21t\x1bc"                    # DCS query, status and title reports, full reset
    b"\xc2\x9b2J\xc2\x9d0;c1 title\xc2\x9c"                     # 8-bit CSI and OSC, UTF-8 encoded
    b"\x9b2J\x9d raw c1\n"                                      # 8-bit CSI and OSC as raw bytes (not UTF-8)
    b"binary \x00\x01\x02\x07\x08\x7f\xff\xfe\xc3 end\n"        # NUL, BEL, backspace, DEL, invalid UTF-8
    b"progress 10%\rprogress 100%\n"
    b"\xe2\x82\xac euro\n"
)


def test_clean_keeps_colours_and_text_and_drops_everything_else():
    text = clean(HOSTILE.decode("utf-8", errors="replace"))
    assert_terminal_safe(text)
    assert "\x1b[31mred\x1b[0m" in text and "\x1b[1;38;5;196mbold\x1b[m" in text
    assert "moved" in text and "link" in text and "€ euro" in text and "\ufffd" in text
    assert "progress 10%\nprogress 100%" in text
    for payload in ("pwned", "cm0gLXJmIH4K", "evil.example", "544e"):
        assert payload not in text
    assert_terminal_safe(clean(text, colour=False), colour=False)


def test_one_line_is_plain_text_on_one_line():
    line = one_line("\x1b]0;title\x07fix \x1b[31mthe\x1b[0m bug\r\nsecond line\x1b[2J")
    assert line == "fix the bug second line"


@settings(max_examples=3000, derandomize=True, database=None)
@given(st.lists(st.sampled_from([b"\x1b", b"[", b"]", b"P", b"\\", b"\x07", b"0", b";", b"2", b"m", b"J", b"?",
                                 b"\x9b", b"\xc2", b"\x9d", b"\r", b"\n", b"a", b"\x00", b"\xff", b"\xe2\x82"]),
                max_size=60),
       st.lists(st.integers(0, 60), max_size=5))
def test_stream_cleaner_output_is_safe_however_the_stream_is_split(pieces, cuts):
    data = b"".join(pieces)
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    cleaner = StreamCleaner()
    pieces = zip(bounds, bounds[1:], strict=False)
    out = "".join(cleaner.feed(data[a:b]) for a, b in pieces) + cleaner.feed(b"", final=True)
    assert_terminal_safe(out)
    assert_terminal_safe(one_line(data.decode(errors="replace")), colour=False)
    assert "\n" not in one_line(data.decode(errors="replace"))


def test_stream_cleaner_keeps_characters_split_between_chunks():
    cleaner = StreamCleaner()
    euro = "€".encode()
    assert cleaner.feed(b"a" + euro[:1]) + cleaner.feed(euro[1:] + b"b", final=True) == "a€b"


# ---------------------------------------------------------------------- through a real job

HOSTILE_SCRIPT = f"""\
import sys
out = sys.stdout.buffer
out.write({HOSTILE!r})
out.flush()
out.write(b"\\x1b")  # a lone ESC at the end of a write
out.flush()
out.write(b"\\n")
out.write(b"no newline at the end " + b"y" * (3 << 20))
"""


def test_hostile_output_is_stored_as_it_came_and_tuici_log_shows_it_safely(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("hostile", files={"hostile.py": HOSTILE_SCRIPT}, config=toml_command("python3 hostile.py"))
    job = cluster.wait_job(sha)
    assert job.state == "passed"
    stored = cluster.state.job_log(job.id).read_bytes()
    assert HOSTILE + b"\x1b\nno newline at the end " + b"y" * (3 << 20) in stored
    assert stored.endswith(b"y" * 1000)  # the last line, though it has no newline, is there

    shown = tuici("log", str(job.id), cwd=repo.path).stdout.decode("utf-8")
    assert_terminal_safe(shown)
    assert "\x1b[31mred\x1b[0m" in shown and "moved" in shown and "\ufffd" in shown
    assert "pwned" not in shown and "cm0gLXJmIH4K" not in shown
    assert shown.endswith("no newline at the end " + "y" * (3 << 20))


def test_commit_subjects_branch_names_and_authors_are_shown_safely(repo, cluster, tmp_path):
    branch = "evil\u009b2J\u009d0;t"  # 8-bit CSI and OSC: git allows any non-ASCII byte in a branch name
    repo.git("checkout", "-q", "-b", branch)
    repo.git("config", "user.name", "Mal\x1b[2Jlory\x1b]52;c;QUFBQQ==\x07 Evil")  # git trims controls at the ends only
    subject = "\x1b]0;owned\x07fix \x1b[31mthe\x1b[0m bug \x1b[10;10H\x1b[?1049h"
    cluster.start_runner("r1")
    cluster.start_observer()
    sha = repo.commit(subject, files={"hostile.py": HOSTILE_SCRIPT}, config=toml_command("python3 hostile.py"))
    job = cluster.wait_job(sha)
    commit = next(c for c in cluster.status().commits if c.sha == sha)
    assert (commit.branch, job.branch) == (branch, branch) and "\x1b]52" in commit.author  # stored as they are

    status = tuici("status", cwd=repo.path).stdout.decode()
    assert_terminal_safe(status, colour=False)
    assert "fix the bug" in status and "evil2J0;t" in status
    data = json.loads(tuici("status", "--json", cwd=repo.path).stdout)
    assert any(c["subject"] == subject for c in data["commits"])

    # `serve` prints events for humans: the same names, and with --output the jobs' output, made safe.
    cluster.stop()
    out = tmp_path / "serve.out"
    with open(out, "wb") as fh:
        serve = subprocess.Popen([sys.executable, "-m", "tuici", "serve", str(repo.path), "--runners", "1", "--output"],
                                 stdout=fh, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    try:
        wait_for(lambda: b"runner.joined" in out.read_bytes(), 30, message="serve to start")
        again = repo.commit(subject + " again", files={"again.txt": "x"})
        wait_for(lambda: f"job.finished       job {cluster.jobs()[-1].id} {again[:10]}".encode() in out.read_bytes()
                 and b"y" * 1000 in out.read_bytes(), 60, message="the new commit's job to finish")
    finally:
        serve.terminate()
        _wait_or_kill(serve, 20)
    printed = out.read_bytes().decode("utf-8")
    assert_terminal_safe(printed)
    assert f"{again[:10]} evil2J0;t Mallory Evil: fix the bug" in printed
    assert "\x1b[31mred\x1b[0m" in printed and "pwned" not in printed
    assert tuici_processes() == []


# ---------------------------------------------------------------------- floods


@pytest.mark.timeout(420)
def test_a_gigabyte_on_one_line_is_stored_whole_and_memory_stays_bounded(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    gib = 1 << 30
    sha = repo.commit("a gigabyte without a newline",
                      config=toml_command(f"head -c {gib} /dev/zero | tr '\\0' x; echo; echo the-end", timeout=600))
    dispatcher, runner = cluster.procs["dispatcher"].pid, cluster.procs["r1"].pid
    try:
        with PeakRss(dispatcher, runner) as rss:
            before = dict(rss.peak)
            job = cluster.wait_job(sha, timeout=360)
        assert job.state == "passed"
        path = cluster.state.job_log(job.id)
        size = path.stat().st_size
        assert size == job.log_size and gib < size < gib + 1000
        with open(path, "rb") as fh:
            fh.seek(size - 100)
            assert fh.read() == b"x" * 91 + b"\nthe-end\n"
        for pid, name in ((dispatcher, "dispatcher"), (runner, "runner")):
            grown = rss.peak[pid] - before[pid]
            print(f"1 GiB of output: the {name} grew by {grown // MiB} MiB at most")
            assert grown < 256 * MiB, f"the {name} grew by {grown // MiB} MiB while 1 GiB went through it"
    finally:
        remove_big_logs(cluster)


def _paused_subscriber(address: str, token: str) -> socket.socket:
    """A control client that asks for every event and all live output, then stops reading."""
    tcp = p.parse_address(address)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((tcp.host, tcp.port))
    sock.sendall(p.encode(p.Hello(role="control", token=token)) + p.encode(p.Subscribe(after_seq=0, output=True)))
    return sock


def _read_messages(sock: socket.socket, until) -> list[p.Message]:
    """Messages from a raw socket until ``until(message)``; the output chunks' data is dropped, not kept."""
    buf = bytearray()
    messages: list[p.Message] = []
    while True:
        while len(buf) >= 4 and len(buf) >= 4 + (length := int.from_bytes(buf[:4], "big")):
            msg = p.decode(bytes(buf[4:4 + length]))
            del buf[:4 + length]
            if isinstance(msg, p.JobOutput):
                msg.data = b""
            messages.append(msg)
            if until(msg):
                return messages
        data = sock.recv(1 << 20)
        assert data, "the dispatcher closed the subscription"
        buf += data


def remove_big_logs(cluster) -> None:
    """Job logs of a gigabyte or so are not worth keeping in the temp dir."""
    for path in (cluster.state.logs / "jobs").glob("*.log"):
        if path.stat().st_size > 64 * MiB:
            path.unlink()


@pytest.mark.timeout(300)
def test_paused_subscribers_cannot_make_the_dispatcher_grow_and_resume_without_gaps(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    token = cluster.state.token()
    dispatcher = cluster.procs["dispatcher"].pid
    paused = [_paused_subscriber(cluster.address, token) for _ in range(3)]
    try:
        size = 300 * MiB
        sha = repo.commit("floods its subscribers", config=toml_command(
            f"yes 'a line of test output that goes on and on' | head -c {size}; echo the-end", timeout=600))
        with PeakRss(dispatcher) as rss:
            before = rss.peak[dispatcher]
            job = cluster.wait_job(sha, timeout=240)
            for later in [repo.commit(f"more events {i}") for i in range(5)]:
                cluster.wait_job(later)
        assert job.state == "passed" and job.log_size > size
        grown = rss.peak[dispatcher] - before
        print(f"300 MiB of output to three paused subscribers: the dispatcher grew by {grown // MiB} MiB at most")
        assert grown < 256 * MiB, f"the dispatcher grew by {grown // MiB} MiB for three paused subscribers"

        # The subscriber reads again: every event is there, in order, none twice; output chunks may be missed.
        last = cluster.status().last_seq
        messages = _read_messages(paused[0], lambda m: isinstance(m, p.Event) and m.seq >= last)
        seqs = [m.seq for m in messages if isinstance(m, p.Event)]
        assert seqs == list(range(1, last + 1))
        assert any(isinstance(m, p.JobOutput) and m.job_id == job.id for m in messages)
    finally:
        for sock in paused:
            sock.close()
        remove_big_logs(cluster)


@pytest.mark.parametrize("report", [
    "echo '<testsuite tests=\"lots\" failures=\"-\"/>' > $TUICI_JUNIT_XML",  # counts that are not numbers
    "mkfifo $TUICI_JUNIT_XML",  # a pipe nobody will ever write to
    "ln -s /dev/zero $TUICI_JUNIT_XML",  # endless
])
def test_a_junit_report_that_lies_or_never_ends_is_ignored(repo, cluster, report):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("odd report", config=f"command = {json.dumps(report)}\n")
    job = cluster.wait_job(sha)
    assert (job.state, job.passed, job.failed) == ("passed", None, None)
    assert cluster.wait_job(repo.commit("next", config=toml_command("true"))).state == "passed"


# ---------------------------------------------------------------------- process trees

TREE_SCRIPT = """\
import os, signal, sys, time

signal.signal(signal.SIGTERM, signal.SIG_IGN)


def forever():
    while True:
        time.sleep(1)


def spawn(how):
    if os.fork():
        return
    if how in ("setsid", "double-fork"):
        if how == "double-fork" and os.fork():
            os._exit(0)  # the middle process goes; its child is orphaned
        os.setsid()  # out of the job's process group and session
    if how == "fork-loop":
        os.setsid()
        while True:  # keeps making children that ignore SIGTERM, as fast as it can
            if os.fork() == 0:
                forever()
            time.sleep(0.005)
    if os.fork() == 0:
        forever()  # a grandchild, ignoring SIGTERM like everyone here
    forever()


for how in ("plain", "setsid", "double-fork", "fork-loop"):
    spawn(how)
print("tree ready", flush=True)
forever()
"""




@pytest.mark.parametrize("end", ["timeout", "cancel"])
def test_a_tree_of_children_that_ignore_sigterm_and_escape_the_group_is_gone_after_the_job(repo, cluster, end):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    timeout = 4 if end == "timeout" else 600
    sha = repo.commit("a stubborn tree", files={"tree.py": TREE_SCRIPT},
                      config=toml_command("python3 tree.py", timeout=timeout))
    try:
        job = cluster.wait_job(sha, states={"running"})
        wait_for(lambda: "tree ready" in cluster.log_of(job.id), message="the tree to be planted")
        assert len(job_processes(sha)) >= 9
        if end == "cancel":
            assert cluster.control(lambda c: c.cancel(job.id)).ok
        job = cluster.wait_job(sha)
        assert job.state == ("failed" if end == "timeout" else "cancelled")
        # SIGKILLed before the result was sent; the kernel may take a moment to tear them down.
        wait_for(lambda: job_processes(sha) == [], 10, message="every process of the tree to be gone")
        # The runner is unharmed and takes the next job.
        assert cluster.wait_job(repo.commit("next", config=toml_command("echo ok"))).state == "passed"
    finally:
        for proc in job_processes(sha):
            proc.kill()
