"""The control center's keys and behaviour against a recorded session (no processes)."""

from __future__ import annotations

import pytest

from tuici import wire as p
from tuici.errors import NotARepository
from tuici.ui.app import ControlCenter
from tuici.ui.backend import BackendError
from tuici.ui.components.confirm import ConfirmScreen
from tuici.ui.components.help import HelpScreen
from tuici.ui.components.status_bar import StatusBar
from tuici.ui.launch import config_problem, run_app
from tuici.ui.settings import load_settings

from ui_fixtures import (  # noqa: F401
    NOW,
    SHAS,
    TRY_SHAS,
    RecordedBackend,
    events_with_tries,
    frozen_clock,
    isolated_config,
    make_app,
    requests_done,
    settle,
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
        assert {"Add runner", "Kill runner", "Rerun", "Cancel", "Show output", "Follow output", "Filter commits",
                "Help", "Quit", "Theme"} <= titles


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
