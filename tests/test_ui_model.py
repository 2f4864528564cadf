"""The control center's data side, without a screen: model, feed, log index, themes, settings."""

from __future__ import annotations

import asyncio
import random
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuici import wire as p
from tuici.ui import settings as settings_module
from tuici.ui.backend import BackendError
from tuici.ui.feed import Connection, Feed, Snapshot
from tuici.ui.logindex import STRIDE, LogIndex, display_line
from tuici.ui.model import Model
from tuici.ui.themes import load_theme_file, load_themes, theme_dirs

from ui_fixtures import (  # noqa: F401
    NOW,
    SHAS,
    TRY_SHAS,
    RecordedBackend,
    bisection_events,
    events_with_tries,
    isolated_config,
    recorded_events,
)


def _status(last_seq: int, jobs=(), runners=(), commits=()) -> p.StatusReply:
    return p.StatusReply(repo_url="", last_seq=last_seq, commits=list(commits), jobs=list(jobs), runners=list(runners),
                         bisections=[])


class TestModel:
    def test_the_recorded_session_gives_every_job_state_and_the_newest_commit_first(self):
        model = Model()
        model.load(_status(0))
        for event in recorded_events():
            model.apply(event)
        states = {model.job_for_commit(sha).state for sha in SHAS}
        assert states == {"queued", "running", "passed", "failed", "error", "cancelled"}
        assert list(reversed(model.arrival))[0] == SHAS[-1]
        assert model.counts["running"] == 2 and model.counts["queued"] == 3

    def test_tries_are_kept_apart_from_the_branch_commits_from_events_and_from_a_snapshot(self):
        model = Model()
        for event in events_with_tries():
            model.apply(event)
        assert model.tries == [11, 12] and model.try_commits == set(TRY_SHAS)
        assert not model.try_commits & set(model.arrival) and len(model.arrival) == len(SHAS) + 1  # and the skipped
        fresh = Model()
        fresh.load(_status(model.last_seq, jobs=model.jobs.values(), commits=model.commits.values()))
        assert (fresh.tries, fresh.arrival) == (model.tries, model.arrival)

    def test_untrusted_text_is_made_safe_on_the_way_in(self):
        model = Model()
        for event in recorded_events():
            model.apply(event)
        subject = model.commits[SHAS[5]].subject
        assert "\x1b" not in subject and "\x07" not in subject
        assert subject.startswith("Evil title")

    def test_a_rerun_goes_to_the_front_of_the_queue_and_a_requeued_job_keeps_its_place(self):
        model = Model()
        for event in recorded_events():
            model.apply(event)
        assert [job.id for job in model.queue()] == [10, 7, 8]
        running = model.jobs[5]
        lost = p.Event(seq=1000, ts=NOW, kind="job.requeued",
                       job=p.JobInfo(id=5, commit=running.commit, branch="main", state="queued", attempts=1))
        model.apply(lost)
        assert [job.id for job in model.queue()] == [10, 5, 7, 8]

    def test_a_snapshot_orders_the_queue_by_the_priority_of_reruns_made_before_it(self):
        """Moved to the front (job 2, then 3) and a new job for a finished commit (5): only the priorities tell."""
        def queued(job_id: int, commit: int, priority: int = 0) -> p.JobInfo:
            return p.JobInfo(id=job_id, commit=SHAS[commit], branch="main", state="queued", priority=priority)
        model = Model()
        model.load(_status(9, jobs=[p.JobInfo(id=1, commit=SHAS[0], branch="main", state="passed"),
                                    queued(2, 1, priority=3), queued(3, 2, priority=1), queued(4, 3),
                                    queued(5, 0, priority=2)]))
        assert [job.id for job in model.queue()] == [2, 5, 3, 4]

    def test_the_queue_shows_older_commits_left_behind_newest_first_after_a_bisections_commits(self):
        def queued(job_id: int, priority: int) -> p.JobInfo:
            return p.JobInfo(id=job_id, commit=SHAS[job_id], branch="main", state="queued", priority=priority)
        model = Model()
        model.load(_status(9, jobs=[queued(1, p.Priority.BACKFILL), queued(2, p.Priority.SUPERSEDED),
                                    queued(3, p.Priority.BISECT), queued(4, p.Priority.NEW),
                                    queued(5, p.Priority.BACKFILL), queued(6, p.Priority.FRONT),
                                    queued(7, p.Priority.SUPERSEDED)]))
        assert [job.id for job in model.queue()] == [6, 4, 3, 7, 2, 5, 1]

    def test_a_found_bisection_marks_its_first_bad_commit_and_is_the_latest_news(self):
        model = Model()
        for event in bisection_events():
            model.apply(event)
        assert set(model.first_bad) == {SHAS[6]}
        latest = model.latest_bisection()
        assert latest is not None and (latest.state, latest.first_bad, latest.jobs) == ("found", SHAS[6], [11])
        abandoned = p.BisectionInfo(branch="feature/login", good=SHAS[1], bad=SHAS[7], state="abandoned")
        model.apply(p.Event(seq=900, ts=NOW, kind="bisection.abandoned", bisection=abandoned))
        assert model.latest_bisection() is None and len(model.bisections) == 2

    def test_a_replayed_event_is_applied_once(self):
        model = Model()
        events = recorded_events()
        for event in events + events[:10]:
            model.apply(event)
        assert sum(model.counts.values()) == len(model.jobs)
        assert model.last_seq == events[-1].seq

    def test_a_snapshot_after_a_reconnect_drops_runners_the_dispatcher_forgot(self):
        """A runner that died while the dispatcher was down has no event to say so: only the snapshot knows."""
        model = Model()
        events = recorded_events()
        for event in events:
            model.apply(event)
        assert "runner-3" in model.runners
        survivors = [r for r in model.runners.values() if r.name != "runner-3"]
        model.load(_status(events[-1].seq + 5, runners=survivors))
        replay = p.Event(seq=events[-1].seq + 2, ts=NOW, kind="runner.joined",
                         runner=p.RunnerInfo(name="runner-3", host="h", pid=1, state="idle"))
        model.apply(replay)  # already reflected in the snapshot: must not bring runner-3 back
        assert "runner-3" not in model.runners

    def test_the_whole_status_replaces_the_first_page_with_the_older_commits_before_the_newest(self):
        model = Model()
        for event in recorded_events():
            model.apply(event)
        commits, jobs = list(model.commits.values()), sorted(model.jobs.values(), key=lambda job: job.id)
        newest = jobs[-3:]
        page = _status(model.last_seq, jobs=newest, commits=[c for c in commits if c.sha in {j.commit for j in newest}])
        fresh = Model()
        fresh.load(page, partial=True)
        assert fresh.partial and not fresh.loaded and fresh.last_seq == 0  # events are not followed from a page
        assert list(reversed(fresh.arrival)) == [SHAS[-1], SHAS[-2]]  # the rerun of the newest commit is a page job
        assert fresh.take_changes().reset
        fresh.load(_status(model.last_seq, jobs=jobs, commits=commits, runners=model.runners.values()))
        assert not fresh.partial and fresh.loaded and fresh.last_seq == model.last_seq
        assert fresh.arrival == model.arrival and fresh.counts == model.counts
        assert fresh.jobs.keys() == model.jobs.keys() and fresh.latest_job == model.latest_job
        assert fresh.take_changes().reset

    def test_changes_name_only_the_commits_that_changed(self):
        model = Model()
        for event in recorded_events():
            model.apply(event)
        model.take_changes()
        job = model.jobs[6]
        finished = p.JobInfo(id=6, commit=job.commit, branch=job.branch, state="passed", attempts=1)
        model.apply(p.Event(seq=500, ts=NOW, kind="job.finished", job=finished))
        changes = model.take_changes()
        assert changes.commits == {SHAS[5]} and not changes.commits_added and changes.jobs == {6}


class FlakyBackend(RecordedBackend):
    """Drops the connection after every few events, as a restarted dispatcher would."""

    def __init__(self, logs, drop_every: int):
        super().__init__(logs)
        self.drop_every = drop_every
        self.subscriptions: list[int] = []

    async def events(self, after_seq: int):
        self.subscriptions.append(after_seq)
        sent = 0
        for event in self.recorded:
            if event.seq > after_seq:
                if sent == self.drop_every:
                    raise ConnectionResetError("dispatcher went away")
                sent += 1
                yield event
        self.replayed.set()
        await asyncio.Event().wait()


class TestFeed:
    async def test_it_resumes_after_the_last_event_seen_so_nothing_is_missed_or_repeated(self, tmp_path):
        backend = FlakyBackend(tmp_path, drop_every=7)
        received: list = []
        feed = Feed(backend, received.append)
        task = asyncio.ensure_future(feed.run())
        try:
            await asyncio.wait_for(backend.replayed.wait(), 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        seqs = [update.seq for update in received if isinstance(update, p.Event)]
        assert seqs == [event.seq for event in backend.recorded]
        assert backend.subscriptions[:3] == [0, 7, 14]
        assert Connection("reconnecting") in received
        assert sum(isinstance(update, Snapshot) for update in received) == len(backend.subscriptions)

    async def test_the_first_page_is_drawn_before_the_whole_status_is_asked_for(self, tmp_path):
        page = _status(3, commits=[p.CommitInfo(sha=SHAS[0], branch="main")])
        asked: list[str] = []

        class Paged(FlakyBackend):
            async def first_page(self):
                asked.append("page")
                return page

            async def status(self, limit: int = 0):
                asked.append("status")
                return await super().status(limit)

        async def drawn() -> None:
            asked.append("drawn")

        backend = Paged(tmp_path, drop_every=7)
        received: list = []
        feed = Feed(backend, received.append, drawn)

        async def follow() -> None:
            await feed.first_page()
            await feed.run()
        task = asyncio.ensure_future(follow())
        try:
            await asyncio.wait_for(backend.replayed.wait(), 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        snapshots = [update for update in received if isinstance(update, Snapshot)]
        assert snapshots[0] == Snapshot(page, partial=True) and not any(s.partial for s in snapshots[1:])
        assert asked[:3] == ["page", "drawn", "status"] and asked.count("page") == 1  # not on reconnecting
        assert backend.subscriptions[0] == 0  # from the whole status's last event, not the page's

    async def test_a_dispatcher_that_cannot_be_asked_is_retried(self, tmp_path):
        class Unreachable(RecordedBackend):
            async def status(self, limit: int = 0):
                raise BackendError("no dispatcher answers")

        received: list = []
        task = asyncio.ensure_future(Feed(Unreachable(tmp_path), received.append).run())
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert received.count(Connection("reconnecting")) >= 2
        assert Connection("connected") not in received


class TestLogIndex:
    def test_every_line_is_found_while_the_file_grows_in_odd_pieces(self, tmp_path):
        rng = random.Random(3)
        lines = ["x" * rng.randint(0, 90) + f" {n}" for n in range(1000)]
        data = ("\n".join(lines)).encode()  # the last line has no newline yet
        path = tmp_path / "job.log"
        path.write_bytes(b"")
        index = LogIndex(path)
        written = 0
        while written < len(data):
            step = rng.randint(1, 400)
            with open(path, "ab") as fh:
                fh.write(data[written:written + step])
            written += step
            index.scan(budget=rng.randint(1, 700))
        while index.scan()[1]:
            pass
        state = index.state
        blocks = range((state.lines + STRIDE - 1) // STRIDE)
        shown = [line.plain for block in blocks for line in index.read_block(block)]
        assert shown == lines

    def test_a_truncated_log_is_indexed_again_from_the_start(self, tmp_path):
        path = tmp_path / "job.log"
        path.write_text("one\ntwo\nthree\n")
        index = LogIndex(path)
        first, _ = index.scan()
        path.write_text("again\n")
        second, _ = index.scan()
        assert (first.lines, second.lines) == (3, 1)
        assert second.generation == first.generation + 1
        assert [line.plain for line in index.read_block(0)] == ["again"]

    def test_control_sequences_are_stripped_but_colour_stays(self, tmp_path):
        path = tmp_path / "job.log"
        path.write_bytes(b"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m\rprogress 50%\rprogress 100%\n")
        index = LogIndex(path)
        index.scan()
        (line,) = index.read_block(0)
        assert line.plain == "progress 100%"
        path.write_bytes(b"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m\n")
        index.scan()
        (line,) = index.read_block(0)
        assert line.plain == "red" and line.spans[0].style.color.number == 1  # ANSI red

    FRAGMENTS = [b"FAILED", b"fai", b"led", b"Failed", b"\x1b[31m", b"\x1b[0m", b"\x1b]0;t\x07", b"\t", b"\r", b"\x01",
                 b" ", b"x", "\u00e9".encode(), b"\xff", "\u0085".encode()]

    @settings(derandomize=True, database=None, deadline=None, max_examples=150,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=8).map(b"".join), min_size=1, max_size=300))
    def test_a_search_finds_exactly_the_lines_whose_shown_text_matches(self, tmp_path, lines):
        """Whatever the bytes (colour, controls, tabs, carriage returns, bad UTF-8), n finds the lines whose text
        as drawn holds the needle, each once, in order, and wraps round to the first."""
        path = tmp_path / "search.log"
        path.write_bytes(b"\n".join(lines) + b"\n")
        index = LogIndex(path)
        while index.scan()[1]:
            pass
        for needle in ("failed", "Failed", "ai", "x x"):
            fold = needle == needle.lower()
            expected = [n for n, raw in enumerate(lines)
                        if needle in (display_line(raw).plain.lower() if fold else display_line(raw).plain)]
            found, match = [], index.find(needle, -1)
            while match is not None and not match.wrapped:
                found.append(match.line)
                match = index.find(needle, match.line)
            assert found == expected, needle
            if expected:
                assert match is not None and match.line == expected[0]  # round to the first
                assert index.find(needle, expected[0], forward=False).line == expected[-1]

    def test_a_match_split_by_colour_or_controls_is_found_in_a_block_of_plain_lines(self, tmp_path):
        """Each odd line alone in a block of plain ones, where the block's bytes do not hold the needle."""
        odd = {70: b"\x1b[31mFAI\x1b[0mLED", 140: b"FA\x01ILED", 210: b"\xc2\x85FA\xc2\x85ILED", 280: b"FAIL\rFAILED",
               350: b"\x1b]0;FAILED\x07not this one", 420: b"tab\tFAILED"}
        path = tmp_path / "job.log"
        path.write_bytes(b"".join(odd.get(n, b"plain line") + b"\n" for n in range(500)))
        index = LogIndex(path)
        while index.scan()[1]:
            pass
        found, match = [], index.find("failed", -1)
        while match is not None and not match.wrapped:
            found.append((match.line, match.column))
            match = index.find("failed", match.line)
        assert found == [(70, 0), (140, 0), (210, 0), (280, 0), (420, 8)]

    def test_a_missing_log_is_no_error(self, tmp_path):
        index = LogIndex(tmp_path / "not-yet.log")
        state, more = index.scan()
        assert (state.exists, state.lines, more) == (False, 0, False)


class TestThemes:
    def test_a_wheel_ships_the_bundled_themes_and_every_package(self):
        """pyproject.toml lists the packages by hand, to map themes/ into the package: a new one must be listed."""
        root = Path(__file__).resolve().parent.parent
        setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
        assert setup["package-dir"] == {"tuici.themes": "themes"}
        assert setup["package-data"]["tuici.themes"] == ["*.toml"]
        packages = {".".join(init.parent.relative_to(root).parts) for init in (root / "tuici").rglob("__init__.py")}
        assert set(setup["packages"]) == packages | {"tuici.themes"}

    def test_bundled_themes_load_and_set_every_state_colour(self):
        themes, problems = load_themes(theme_dirs())
        assert problems == []
        ours = {theme.name: theme for theme in themes}
        assert {"tuici-dark", "tuici-light"} <= set(ours)
        assert ours["tuici-dark"].dark and not ours["tuici-light"].dark
        for theme in ours.values():
            assert {"pass", "fail", "running", "queued"} <= set(theme.variables)

    @pytest.mark.parametrize("text, problem", [
        ('name = "x"\nprimary = "#123456"\nbogus = 1\n', "unknown key 'bogus'"),
        ('name = "x"\nprimary = "not a colour"\n', "key 'primary'"),
        ('primary = "#123456"\n', "key 'name' is required"),
        ('name = "x"\nprimary = "#123456"\n[variables]\npass = "nope"\n', "key 'variables.pass'"),
        ('name = "x\n', "invalid TOML"),
    ])
    def test_a_broken_theme_file_names_its_problem(self, tmp_path, text, problem):
        path = tmp_path / "broken.toml"
        path.write_text(text)
        themes, problems = load_themes([tmp_path])
        assert themes == []
        assert len(problems) == 1 and str(path) in problems[0] and problem in problems[0]
        with pytest.raises(Exception, match="."):
            load_theme_file(path)


class TestSettings:
    def test_the_theme_choice_is_saved_under_xdg_config_home(self, tmp_path, monkeypatch):
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
        settings_module.save_settings(settings_module.Settings(theme='odd "name"'))
        assert (tmp_path / "tuici" / "settings.toml").is_file()
        assert settings_module.load_settings().theme == 'odd "name"'

    def test_a_broken_settings_file_is_reported_with_its_path(self, tmp_path, monkeypatch):
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
        (tmp_path / "tuici").mkdir()
        (tmp_path / "tuici" / "settings.toml").write_text("theme = [")
        with pytest.raises(settings_module.SettingsError, match="settings.toml"):
            settings_module.load_settings()
