"""The control center's keys and behaviour against a recorded session (no processes)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tuici import wire as p
from tuici.errors import NotARepository
from tuici.ui.app import ControlCenter
from tuici.ui.backend import BackendError
from tuici.ui.components.confirm import ConfirmScreen
from tuici.ui.components.help import HelpScreen
from tuici.ui.components.status_bar import StatusBar
from tuici.ui.formatting import LOADING
from tuici.ui.launch import config_problem, run_app
from tuici.ui.settings import load_settings, settings_file

from ui_fixtures import (  # noqa: F401
    COMMITS,
    NOW,
    SHAS,
    TRY_SHAS,
    RecordedBackend,
    events_with_tries,
    failing_log_lines,
    frozen_clock,
    isolated_config,
    make_app,
    recorded_events,
    requests_done,
    settle,
    until,
)

SIZE = (120, 36)


class TestActions:
    async def test_r_reruns_the_selected_commit(self, tmp_path):
        app, backend = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[1])
            await pilot.press("r")
            await requests_done(pilot)
        assert backend.requests == [("rerun", SHAS[1])]

    async def test_c_cancels_the_selected_running_job_and_refuses_a_finished_one(self, tmp_path):
        app, backend = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[0])  # passed: nothing to cancel
            await pilot.press("c")
            app.commits.table.select_key(SHAS[4])  # running job 5
            await pilot.press("c")
            await requests_done(pilot)
        assert backend.requests == [("cancel", 5)]

    async def test_a_try_is_listed_apart_and_its_output_shown_like_any_jobs(self, tmp_path):
        app, backend = make_app(tmp_path, events=events_with_tries())
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.tries.display and app.tries.table.keys == [12, 11]  # newest first
            assert not set(TRY_SHAS) & set(app.commits.table.keys)
            app.tries.table.focus()
            await pilot.press("j", "enter")
            await settle(pilot)
            assert app.output.job.id == 11 and app.log_view.line_count == 2
            app.tries.table.focus()  # c on the running try cancels it
            await pilot.press("k", "c")
            await requests_done(pilot)
        assert backend.requests == [("cancel", 12)]

    async def test_keys_act_on_the_focused_panel(self, tmp_path):
        app, backend = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("tab")  # the queue: job 10 is first, moved to the front
            assert app.queue_panel.selected_job == 10
            await pilot.press("j", "c")
            await pilot.press("tab", "j", "enter")  # the runners: runner-2 runs job 6
            await settle(pilot)
            await requests_done(pilot)
            assert app.output.job.id == 6
        assert backend.requests == [("cancel", 7)]

    async def test_x_asks_and_kills_only_after_yes_while_X_does_not_ask(self, tmp_path):
        app, backend = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.runners.table.focus()
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert not isinstance(app.screen, ConfirmScreen)
            await pilot.press("x", "y")
            await pilot.press("j", "X")
            await requests_done(pilot)
        assert backend.requests == [("kill", "runner-1", False), ("kill", "runner-2", True)]

    async def test_question_mark_opens_the_help_and_escape_closes_it(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

    async def test_the_command_palette_offers_every_action(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"Add runner", "Kill runner", "Rerun", "Cancel", "Show output", "Show tests", "Follow output",
                "Filter commits", "Help", "Quit", "Theme"} <= titles


class TestFilter:
    async def test_slash_filters_by_branch_author_and_text_and_escape_clears(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("slash", *"branch:login")
            assert app.commits.table.keys == [SHAS[7], SHAS[1]]
            await pilot.press("space", *"empty")
            assert app.commits.table.keys == [SHAS[7]]
            await pilot.press("ctrl+u", *"author:alice")
            assert app.commits.table.keys == [SHAS[6], SHAS[2], SHAS[0]]
            await pilot.press("escape")
            assert len(app.commits.table.keys) == len(SHAS)
            assert app.focused is app.commits.table


class TestTestsView:
    async def test_t_shows_the_selected_jobs_tests_failures_first_and_hides_them(self, tmp_path):
        app, backend = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[1])
            await pilot.press("t")
            await settle(pilot)
            assert app.tests.display and app.focused is app.tests.table
            assert app.output.job is not None and app.output.job.id == 2  # its output beside it
            shown = [app.tests.cases[key] for key in app.tests.table.keys]
            assert [(case.name, case.outcome) for case in shown[:2]] == [
                ("tests/test_login.py::test_login_form", "failed"),
                ("tests/test_session.py::TestSession::test_expiry[short]", "error")]
            assert shown[2].flaky and len(shown) == 42
            await pilot.press("slash", *"session")
            assert [app.tests.cases[key].name for key in app.tests.table.keys] == [shown[1].name]
            await pilot.press("escape")
            assert len(app.tests.table.keys) == 42 and app.focused is app.tests.table
            await pilot.press("t")
            assert not app.tests.display and app.focused is app.commits.table
        assert backend.requests == [("tests", 2)]

    async def test_enter_on_a_failure_shows_its_report_in_the_output(self, tmp_path):
        app, _ = make_app(tmp_path)
        lines = failing_log_lines()
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[1])
            await pilot.press("t", "enter")
            await settle(pilot)
            log = app.log_view
            heading = next(n for n, line in enumerate(lines) if line.strip("_ ") == "test_login_form")
            assert log.scroll_y == min(heading, log.max_scroll_y) and not log.follow
            await pilot.press("j", "enter")
            await settle(pilot)
            heading = next(n for n, line in enumerate(lines) if "ERROR at setup of TestSession.test_expiry" in line)
            assert log.scroll_y == heading and not log.follow


class TestOutput:
    async def test_scrolling_up_pauses_and_f_follows_again(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[4])
            await pilot.press("enter")
            await settle(pilot)
            log = app.log_view
            assert log.follow and log.scroll_y == log.max_scroll_y > 0
            log.focus()
            await pilot.press("pageup")
            assert not log.follow
            await pilot.press("f")
            assert log.follow and log.scroll_y == log.max_scroll_y

    async def test_new_output_is_followed_while_at_the_bottom(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[4])
            await pilot.press("enter")
            await settle(pilot)
            before = app.log_view.line_count
            with open(app.log_view.path, "a") as log:
                log.write("".join(f"more output {n}\n" for n in range(100)))
            await pilot.pause(0.3)  # a live log is checked every 0.1 s
            await settle(pilot)
            assert app.log_view.line_count == before + 100
            assert app.log_view.scroll_y == app.log_view.max_scroll_y

    async def test_a_log_of_a_million_lines_opens_and_shows_its_end(self, tmp_path):
        app, _ = make_app(tmp_path)
        with open(tmp_path / "logs" / "1.log", "w") as log:
            log.writelines(f"line {n} of a very long log\n" for n in range(1_000_000))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[0])
            await pilot.press("enter")
            await settle(pilot)
            assert app.log_view.line_count == 1_000_000
            last = app.log_view.render_line(app.log_view.scrollable_content_region.height - 1)
            assert last.text.strip() == "line 999999 of a very long log"


class TestOutputSearch:
    async def open_job_5(self, pilot, app) -> None:
        await settle(pilot)
        app.commits.table.select_key(SHAS[4])  # job 5: 300 lines, FAILED on every 17th test (lines 18, 35 … 290)
        await pilot.press("enter")
        await settle(pilot)
        app.log_view.focus()

    @staticmethod
    def on_screen(log, line: int) -> bool:
        return log.scroll_y <= line < log.scroll_y + log.scrollable_content_region.height

    async def test_slash_searches_the_output_and_n_and_N_go_to_the_next_and_previous_match(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await self.open_job_5(pilot, app)
            log = app.log_view
            await pilot.press("slash")
            assert app.focused.id == "log-search"
            await pilot.press(*"failed", "enter")  # lower case: any case; from the top of the view (at the end)
            await settle(pilot)
            assert app.focused is log and log.search == "failed"
            assert (log.match.line, log.match.column, log.match.wrapped) == (290, 36, False)
            assert "line 291 of 300" in str(app.output.border_subtitle)
            await pilot.press("n")  # past the last match: round to the first
            await settle(pilot)
            assert (log.match.line, log.match.wrapped) == (18, True) and self.on_screen(log, 18) and not log.follow
            await pilot.press("n")
            await settle(pilot)
            assert (log.match.line, log.match.wrapped) == (35, False) and self.on_screen(log, 35)
            await pilot.press("N", "N")
            await settle(pilot)
            assert (log.match.line, log.match.wrapped) == (290, True) and self.on_screen(log, 290)

    async def test_a_capital_matches_only_itself_and_nothing_found_says_so(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await self.open_job_5(pilot, app)
            await pilot.press("slash", *"Failed", "enter")
            await settle(pilot)
            assert app.log_view.match is None and "not found" in str(app.output.border_subtitle)

    async def test_escape_clears_the_search_and_slash_in_a_table_still_filters_commits(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await self.open_job_5(pilot, app)
            await pilot.press("slash", *"PASSED", "enter")
            await settle(pilot)
            assert app.log_view.match is not None
            await pilot.press("slash", "escape")
            assert app.log_view.search == "" and app.log_view.match is None and app.focused is app.log_view
            app.commits.table.focus()
            await pilot.press("slash", *"branch:login")
            assert app.commits.table.keys == [SHAS[7], SHAS[1]]

    async def test_a_match_far_to_the_right_is_scrolled_into_view(self, tmp_path):
        app, _ = make_app(tmp_path)
        (tmp_path / "logs" / "1.log").write_text("short\n" * 50 + "x" * 500 + " needle\n" + "short\n" * 50)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[0])
            await pilot.press("enter")
            await settle(pilot)
            app.log_view.focus()
            await pilot.press("slash", *"needle", "enter")
            await settle(pilot)
            log = app.log_view
            assert log.match.line == 50 and log.scroll_x <= 501 < log.scroll_x + log.scrollable_content_region.width


class TestKeys:
    async def test_y_copies_the_selected_commits_sha(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[2])
            await pilot.press("y")
            assert app.clipboard == SHAS[2]

    async def test_a_keymap_in_the_settings_rebinds_actions_and_bad_entries_are_named(self, tmp_path):
        settings = settings_file()
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text('theme = "tuici-dark"\n[keymap]\nrerun = "R"\ncancel = "r"\nbogus = "z"\n'
                            'follow = "a"\ncopy-sha = 5\nhelp = "ctrl+nope"\n')
        app, backend = make_app(tmp_path)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await settle(pilot)
            app.commits.table.select_key(SHAS[4])  # running job 5
            await pilot.press("R")  # rerun, where r was
            await pilot.press("r")  # cancel, where c was
            await pilot.press("c")  # nothing now
            await requests_done(pilot)
            messages = [n.message for n in app._notifications]
            await pilot.press("question_mark")
            shown = [str(widget.render()) for widget in app.screen.query(".help-key, .help-id")]
        assert backend.requests == [("rerun", SHAS[4]), ("cancel", 5)]
        for key, problem in (("bogus", "no action has this id"), ("follow", "'a' is the key of add-runner already"),
                             ("copy-sha", "must be a string of keys"), ("help", "'ctrl+nope' is not a key")):
            assert any(f"{settings}: key 'keymap.{key}': {problem}" in m for m in messages), key
        assert shown[shown.index("rerun") - 1] == "R" and shown[shown.index("cancel") - 1] == "r"


class TestAlerts:
    async def test_a_branch_that_breaks_is_a_toast_naming_it(self, tmp_path):
        events = recorded_events()
        broken = events[-1].job  # job 10, a rerun of the failed commit 9
        failed = p.JobInfo(id=broken.id, commit=broken.commit, branch="main", state="failed", failed=1, attempts=1)
        seq = events[-1].seq
        events += [p.Event(seq=seq + 1, ts=NOW, kind="job.finished", job=failed),
                   p.Event(seq=seq + 2, ts=NOW, kind="branch.broken", job=failed, commit=COMMITS[8],
                           message="main fails at 9999999999 (job 10); it passed at 1111111111 (job 1)")]
        app, _ = make_app(tmp_path, events=events)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await settle(pilot)
            toasts = [(n.title, n.message, n.severity) for n in app._notifications]
        assert ("main is broken", "9999999999 Retry the flaky network test (failed, 1 failed, job 10)", "error") \
            in toasts

    async def test_a_dispatcher_taking_over_is_a_toast_and_named_in_the_status_bar(self, tmp_path):
        from tuici.ui.components.status_bar import StatusBar

        events = recorded_events()
        events.append(p.Event(seq=events[-1].seq + 1, ts=NOW, kind="dispatcher.active",
                              message="dispatcher b-42-a1b2c3 at b.example:7700 is active (epoch 7)"))
        app, _ = make_app(tmp_path, events=events)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await settle(pilot)
            toasts = [(n.title, n.message) for n in app._notifications]
            bar = str(app.query_one(StatusBar).render())
        assert ("Another dispatcher took over", "dispatcher b-42-a1b2c3 at b.example:7700 is active (epoch 7)") \
            in toasts
        assert "active b.example:7700" in bar


class TestManyCommits:
    async def test_ten_thousand_commits_fill_the_table_newest_first(self, tmp_path):
        events = []
        for n in range(10_000):
            sha = f"{n:040x}"
            commit = p.CommitInfo(sha=sha, branch="main", author="Bulk", subject=f"commit {n}", time=NOW - n)
            events.append(p.Event(seq=n + 1, ts=NOW, kind="commit.seen", commit=commit))
        app, _ = make_app(tmp_path, events=events)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            table = app.commits.table
            assert len(table.keys) == 10_000 and table.keys[0] == f"{9999:040x}"
            await pilot.press("G")
            assert table.selected_key == f"{0:040x}" and table.scroll_y == table.max_scroll_y

    async def test_the_first_page_shows_the_newest_commits_while_the_history_loads(self, tmp_path):
        class Paged(RecordedBackend):
            """Gives the newest two commits at once; the whole status when released."""

            def __init__(self, logs):
                super().__init__(logs)
                self.release = asyncio.Event()

            async def first_page(self):
                return p.StatusReply(repo_url=self.label, last_seq=0, commits=COMMITS[-2:], jobs=[], runners=[],
                                     bisections=[])

            async def status(self, limit: int = 0):
                await self.release.wait()
                return await super().status(limit)

        backend = Paged(tmp_path)
        app = ControlCenter(backend, theme="tuici-dark", clock=frozen_clock)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.commits.table.keys == [SHAS[-1], SHAS[-2]], message="the first page")
            assert app.commits.border_subtitle == LOADING and app.query_one(StatusBar).info.counts is None
            backend.release.set()
            await settle(pilot)
            assert app.commits.table.keys == list(reversed(SHAS)) and app.commits.border_subtitle == str(len(SHAS))
            assert app.query_one(StatusBar).info.counts == app.model.counts

    async def test_the_collector_turned_off_for_the_start_is_back_on_once_the_first_frame_is_up(self, tmp_path):
        app, _ = make_app(tmp_path)
        gc.disable()  # as `tuici` does before it imports the app
        try:
            async with app.run_test(size=SIZE) as pilot:
                await settle(pilot)
                assert gc.isenabled()
        finally:
            gc.enable()


class TestThemes:
    async def test_a_theme_chosen_in_the_app_is_remembered(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.theme = "tuici-light"
            await requests_done(pilot)
        assert load_settings().theme == "tuici-light"
        app, _ = make_app(tmp_path, theme=None)
        assert app.theme == "tuici-light"

    async def test_saving_the_theme_keeps_the_rest_of_the_settings_file(self, tmp_path):
        settings_file().parent.mkdir(parents=True, exist_ok=True)
        settings_file().write_text('# mine\ntheme = "nord"\n\n[keymap]\nrerun = "R"\n')
        app, _ = make_app(tmp_path, theme=None)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.theme = "tuici-light"
            await requests_done(pilot)
        assert settings_file().read_text() == '# mine\ntheme = "tuici-light"\n\n[keymap]\nrerun = "R"\n'
        assert load_settings().keymap == {"rerun": "R"}

    async def test_theme_overrides_the_saved_choice_without_replacing_it(self, tmp_path):
        app, _ = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            app.theme = "tuici-light"
            await requests_done(pilot)
        app, _ = make_app(tmp_path, theme="tuici-dark")
        assert app.theme == "tuici-dark" and load_settings().theme == "tuici-light"

    async def test_a_broken_theme_file_is_a_notification_naming_it(self, tmp_path, monkeypatch):
        config = tmp_path / "config"
        monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
        (config / "tuici" / "themes").mkdir(parents=True)
        broken = config / "tuici" / "themes" / "mine.toml"
        broken.write_text('name = "mine"\nprimary = "blurple"\n')
        app, _ = make_app(tmp_path, theme="mine")
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await settle(pilot)
            messages = [n.message for n in app._notifications]
        assert any(str(broken) in m and "'primary'" in m and "not a colour" in m for m in messages)
        assert any("'mine'" in m and "not available" in m for m in messages)
        assert app.theme == "tuici-dark"


class TestQuit:
    async def test_q_with_jobs_running_asks_first(self, tmp_path):
        app, backend = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("q")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert app.is_running and not backend.stopped
            await pilot.press("q", "y")
            await requests_done(pilot)
        assert backend.stopped and app.return_code == 0

    async def test_q_when_attached_leaves_the_processes_and_does_not_ask(self, tmp_path):
        app, backend = make_app(tmp_path, attached=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("q")
            await requests_done(pilot)
            assert not isinstance(app.screen, ConfirmScreen)
        assert app.return_code == 0



class TestStartProblems:
    async def test_an_engine_that_cannot_start_is_a_message_on_screen(self, tmp_path):
        class CannotStart(RecordedBackend):
            async def start(self) -> None:
                raise BackendError("could not start the engine: the dispatcher exited with 2: "
                                   "cannot listen on 127.0.0.1:8000: Address already in use")

        app = ControlCenter(CannotStart(tmp_path), clock=frozen_clock)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await pilot.pause(0.3)
            assert any("Address already in use" in n.message for n in app._notifications)
            assert app.query_one(StatusBar).info.health == (("dispatcher", "down"), ("observer", "down"))
            await pilot.press("q")
            await requests_done(pilot)
        assert app.return_code == 0

    def test_not_a_git_repository_is_a_message_before_the_app_opens(self, tmp_path):
        with pytest.raises(NotARepository, match="not a git repository"):
            run_app(str(tmp_path), runners=1, theme=None)

    def test_a_broken_config_is_named_with_its_key(self, tmp_path):
        (tmp_path / "tuici.toml").write_text('command = ""\n')
        assert "tuici.toml: key 'command'" in config_problem(tmp_path)
        (tmp_path / "tuici.toml").write_text('command = "make test"\n')
        assert config_problem(tmp_path) is None
