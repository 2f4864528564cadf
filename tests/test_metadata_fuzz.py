"""Hostile commit metadata: names and subjects with separators, controls, escapes, bad encodings, megabytes.

Whatever a commit's author, subject, encoding header or date hold, the observer reports it (with placeholders
where git's output cannot be read) and every commit after it, in messages the dispatcher accepts; the text that
reaches a terminal is neutralised. Commits are real objects, written as raw bytes where `git commit` would
refuse or clean the input.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuici import wire as p
from tuici.observer import (
    MAX_AUTHOR,
    MAX_SUBJECT,
    REPORT_CHUNK,
    UNREADABLE_AUTHOR,
    UNREADABLE_SUBJECT,
    Source,
    parse_log,
    plan,
)
from tuici.sanitize import one_line
from tuici.ui.model import Model

from conftest import GitRepo, wait_for
from test_hostile_output import assert_terminal_safe
from test_serve_cli import events, serve, tuici  # noqa: F401 (serve is a fixture)

SOAK = bool(os.environ.get("TUICI_SOAK"))
ESCAPES = b"\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;pwned\x1b\\\x1b[2J\x1b[H\x9b31m\xc2\x9b2J"  # clipboard, title, clear


def raw_commit(repo: GitRepo, parent: str, author: bytes = b"Dev", subject: bytes = b"subject",
               time: bytes = b"1700000000", encoding: bytes | None = None) -> str:
    """A commit object written as given, byte for byte (git's own checks skipped), on ``parent``'s tree."""
    headers = [b"tree " + repo.head(f"{parent}^{{tree}}").encode(), b"parent " + parent.encode(),
               b"author " + author + b" <dev@example.com> " + time + b" +0000",
               b"committer Dev <dev@example.com> " + time + b" +0000"]
    if encoding is not None:
        headers.append(b"encoding " + encoding)
    body = b"\n".join(headers) + b"\n\n" + subject + b"\n"
    return subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--literally", "--stdin"], cwd=repo.path,
                          input=body, capture_output=True, check=True).stdout.decode().strip()


def assert_reportable(commits: list[p.CommitInfo], branch: str = "main") -> None:
    """Bounded, and accepted by the dispatcher's decoder in a report of REPORT_CHUNK commits like these."""
    for c in commits:
        assert len(c.author) <= MAX_AUTHOR and len(c.subject) <= MAX_SUBJECT
        for text in (c.author, c.subject):
            shown = one_line(text)
            assert_terminal_safe(shown, colour=False)
            assert "\t" not in shown and "\n" not in shown
        c.branch = branch
    chunk = (commits * (REPORT_CHUNK // len(commits) + 1))[:REPORT_CHUNK]
    frame = p.encode(p.CommitsSeen(branch=branch, tip=commits[-1].sha, commits=chunk))
    assert len(frame) - 4 <= p.MAX_FRAME
    decoded = p.decode(frame[4:])
    assert isinstance(decoded, p.CommitsSeen)
    fields = [(c.sha, c.author, c.subject, c.time) for c in commits]
    assert [(c.sha, c.author, c.subject, c.time) for c in decoded.commits[:len(commits)]] == fields


# ---------------------------------------------------------------------- against Source, one commit at a time

HOSTILE_PIECES = [b"\x1f", b"\x1e", b"\x00", b"\t", b"\n", b"\r", b"\r\n", b"\x7f", b"\x9b", b"\xff", b"\xc3",
                  b"\xe9", b"\xf0\x9f\x98", "€".encode(), b"<", b">", b" ", b"plain", b"\x1b", b"]52;c;", b"\x07",
                  b"[2J", ESCAPES]
hostile_bytes = st.lists(st.sampled_from(HOSTILE_PIECES) | st.binary(max_size=6), max_size=24).map(b"".join)
encodings = st.sampled_from([None, b"UTF-8", b"ISO-8859-1", b"UTF-16", b"UTF-16LE", b"SHIFT_JIS", b"no-such"])
times = st.sampled_from([b"1700000000", b"0", b"", b"abc", b"-5", b"99999999999999999999", b"1e5"]) \
    | st.integers(0, 1 << 40).map(lambda n: str(n).encode())


@pytest.fixture(scope="module")
def meta(tmp_path_factory) -> tuple[GitRepo, Source]:
    repo = GitRepo(tmp_path_factory.mktemp("meta") / "repo")
    repo.commit("base")
    return repo, Source(str(repo.path))


@settings(max_examples=1000 if SOAK else 60, derandomize=not SOAK, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(author=hostile_bytes, subject=hostile_bytes, encoding=encodings, time=times)
def test_any_metadata_gives_the_commit_and_every_one_after_it(meta, author, subject, encoding, time):
    repo, source = meta
    base = repo.head()
    hostile = raw_commit(repo, base, author, subject, time, encoding)
    after = raw_commit(repo, hostile, subject=b"after")
    commits = source.new_commits(after, [base])
    assert [c.sha for c in commits] == [hostile, after]
    assert (commits[1].author, commits[1].subject, commits[1].time) == ("Dev", "after", 1700000000.0)
    assert_reportable(commits)


def test_the_field_separator_in_a_name_no_longer_stops_the_observer(repo):
    """The bug: an author name with \\x1f (the old separator) made every start of the observer crash."""
    known = {"main": repo.head()}
    name = "Eve\x1fSep\x1eRec\tTab\x1b]0;title\x07 End"  # git trims controls at the ends only
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_COMMITTER_NAME": name}
    (repo.path / "evil.txt").write_text("evil\n")
    repo.git("add", "evil.txt")
    subprocess.run(["git", "commit", "-q", "-m", "sep\x1fin\x1fsubject\rtoo"], cwd=repo.path, env=env, check=True)
    evil = repo.head()
    after = repo.commit("after")
    reports, _ = plan(Source(str(repo.path)), known)
    commits = reports[0].commits
    assert [c.sha for c in commits] == [evil, after]
    assert (commits[0].author, commits[0].subject) == (name, "sep\x1fin\x1fsubject\rtoo")  # stored as they are
    assert_reportable(commits)


def test_other_encodings_are_decoded_and_bad_bytes_replaced(repo):
    base = repo.head()
    (repo.path / "message").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    repo.git("-c", "i18n.commitEncoding=ISO-8859-1", "commit", "-q", "--allow-empty", "-F", "message")
    latin = repo.head()
    broken = raw_commit(repo, latin, author=b"Bad \xff\xfe", subject=b"bad \xc3 utf-8", encoding=b"UTF-8")
    unknown = raw_commit(repo, broken, subject=b"unknown \xe9", encoding=b"no-such-encoding")
    commits = Source(str(repo.path)).new_commits(unknown, [base])
    assert [c.subject for c in commits] == ["café crème", "bad \ufffd utf-8", "unknown \ufffd"]
    assert commits[1].author == "Bad \ufffd\ufffd"
    assert_reportable(commits)


def test_a_megabyte_subject_or_name_is_cut_and_a_full_report_fits_in_a_frame(repo):
    base = repo.head()
    emoji = "😀" * 300_000  # 1.2 MB of 4-byte characters: the most bytes per character UTF-8 has
    (repo.path / "message").write_text(emoji + "\n\nbody\n")
    repo.git("commit", "-q", "--allow-empty", "-F", "message")
    big_subject = repo.head()
    big_name = raw_commit(repo, big_subject, author=b"N" * (1 << 20), subject=b"x" * (1 << 20))
    commits = Source(str(repo.path)).new_commits(big_name, [base])
    assert [c.sha for c in commits] == [big_subject, big_name]
    assert commits[0].subject == "😀" * (MAX_SUBJECT - 1) + "…"
    assert commits[1].author == "N" * (MAX_AUTHOR - 1) + "…" and commits[1].subject == "x" * (MAX_SUBJECT - 1) + "…"
    assert_reportable(commits)  # REPORT_CHUNK commits like these in one message


def test_unreadable_dates_are_reported_as_0(repo):
    base = repo.head()
    shas = [base]
    for time in (b"", b"99999999999999999999", b"-99999999999"):
        shas.append(raw_commit(repo, shas[-1], subject=b"dated " + time, time=time))
    commits = Source(str(repo.path)).new_commits(shas[-1], [base])
    assert [(c.sha, c.time) for c in commits] == [(sha, 0.0) for sha in shas[1:]]
    assert_reportable(commits)


def test_a_record_whose_fields_cannot_be_told_apart_gets_placeholders_and_the_next_is_read(caplog):
    """git 2.39 cuts a field at a NUL, but a version that printed it whole would split the field in two."""
    first, second = "1" * 40, "2" * 64
    out = (f"{first}\0" "1700000000\0" "Na\0me\0" "subject\0" "subject\n\0" f"{first}\0"
           f"{second}\0" "1700000001\0" "Dev\0" "next\0" "next\n\0" f"{second}\0").encode()
    commits = parse_log(out)
    assert [(c.sha, c.author, c.subject, c.time) for c in commits] == [
        (first, UNREADABLE_AUTHOR, UNREADABLE_SUBJECT, 0.0), (second, "Dev", "next", 1700000001.0)]
    assert f"commit {first}: unreadable metadata" in caplog.text
    assert parse_log(b"not a commit\0" + out) == []  # lost track: nothing rather than garbage


def test_a_broken_commit_object_on_one_branch_does_not_stop_the_others(repo, caplog):
    known = {"main": repo.head()}
    broken = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--literally", "--stdin"], cwd=repo.path,
                            input=f"tree zzz\nparent {repo.head()}\n\nno tree\n".encode(), capture_output=True,
                            check=True).stdout.decode().strip()  # git log cannot walk it
    (repo.path / ".git" / "refs" / "heads" / "broken").write_text(broken + "\n")  # update-ref would refuse it
    after = repo.commit("after")
    reports, _ = plan(Source(str(repo.path)), known)
    assert {r.branch: [c.sha for c in r.commits] for r in reports} == {"main": [after]}
    assert "cannot list the new commits of broken" in caplog.text


# ---------------------------------------------------------------------- shown: the control center's model

@settings(max_examples=300, derandomize=True, database=None)
@given(st.lists(st.sampled_from(HOSTILE_PIECES), max_size=30).map(b"".join))
def test_the_control_center_keeps_names_and_subjects_safe(data):
    text = data.decode("utf-8", "replace")
    sha = "a" * 40
    model = Model()
    model.load(p.StatusReply(repo_url="", last_seq=0, jobs=[], runners=[], bisections=[],
                             commits=[p.CommitInfo(sha=sha, branch="main", author=text, subject=text)]))
    for shown in (model.commits[sha].author, model.commits[sha].subject):
        assert_terminal_safe(shown, colour=False)
        assert "\t" not in shown and "\n" not in shown


# ---------------------------------------------------------------------- end to end, with `tuici serve`

def test_serve_tests_every_commit_around_hostile_ones_and_status_shows_them(repo, serve, tmp_path):  # noqa: F811
    first = repo.head()
    wait_for(lambda: any(e.get("kind") == "job.finished" and e["job"]["commit"] == first for e in events(serve)),
             60, message="the first commit to be tested")
    # Made in another repository and pushed, as a developer would, by an author with a hostile name.
    work = GitRepo(tmp_path / "work")
    work.git("fetch", "-q", str(repo.path), "main")
    work.git("checkout", "-q", "-b", "hostile", "FETCH_HEAD")
    name = "Eve\x1f\x1e\t" + ESCAPES.decode("utf-8", "replace")
    work.git("config", "user.name", name)
    shas = [work.commit("sep\x1fin subject\r" + ESCAPES.decode("utf-8", "replace"))]
    shas.append(raw_commit(work, shas[-1], author=b"Nul\x00Name " + ESCAPES, subject=b"bad \xff\xfe " + ESCAPES,
                           time=b"", encoding=b"UTF-8"))
    shas.append(raw_commit(work, shas[-1], author=b"Big", subject=b"M" * (1 << 20)))
    work.git("reset", "-q", "--soft", shas[-1])  # the branch takes the raw commits, which have its tree
    shas.append(work.commit("after the hostile ones"))
    work.git("push", "-q", str(repo.path), "hostile")

    def tested():
        finished = {e["job"]["commit"]: e["job"]["state"] for e in events(serve) if e.get("kind") == "job.finished"}
        return finished if all(sha in finished for sha in shas) else None
    states = wait_for(tested, 90, message="a job for every pushed commit")
    assert [states[sha] for sha in shas] == ["passed"] * len(shas)
    assert not any(e.get("kind") == "process.restarted" for e in events(serve))  # the observer never crashed

    shown = tuici("status", cwd=repo.path).stdout
    assert_terminal_safe(shown, colour=False)
    assert "\t" not in shown
    for sha in shas:
        assert sha[:10] in shown
    assert "sepin subject" in shown and "pwned" not in shown
    data = json.loads(tuici("status", "--json", cwd=repo.path).stdout)
    commits = {c["sha"]: c for c in data["commits"]}
    assert commits[shas[0]]["author"] == name  # JSON carries them as they are, escaped
    assert commits[shas[1]]["subject"] == "bad \ufffd\ufffd " + ESCAPES.decode("utf-8", "replace")
    assert commits[shas[1]].get("time", 0) == 0
    assert commits[shas[2]]["subject"] == "M" * (MAX_SUBJECT - 1) + "…"
