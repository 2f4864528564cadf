"""What the control center looks like, fed a recorded session with frozen times, pids and durations.

Update after a deliberate change with ``pytest tests/test_ui_snapshots.py --snapshot-update``,
and look at every SVG that changed before keeping it.
"""

from __future__ import annotations

import pytest

from tuici.ui.themes import load_themes, theme_dirs

from ui_fixtures import SHAS, bisection_events, events_with_tries, isolated_config, make_app, settle  # noqa: F401

WIDE = (160, 48)
BUNDLED_THEMES = sorted(theme.name for theme in load_themes(theme_dirs())[0])


def pressing(*keys: str):
    """A ``run_before`` that waits for the recorded session, presses ``keys``, and waits again."""
    async def run_before(pilot) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
    return run_before


def select_commit(sha: str, *then: str):
    """Move the commits cursor to ``sha``, then press ``then``."""
    async def run_before(pilot) -> None:
        await settle(pilot)
        pilot.app.commits.table.select_key(sha)
        for key in then:
            await pilot.press(key)
            await settle(pilot)
    return run_before


class TestMainScreen:
    def test_every_job_state(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        assert snap_compare(app, terminal_size=WIDE, run_before=pressing())

    def test_80x24(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        assert snap_compare(app, terminal_size=(80, 24), run_before=select_commit(SHAS[4], "enter"))


class TestOutputPanel:
    def test_following_a_running_job(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        assert snap_compare(app, terminal_size=WIDE, run_before=select_commit(SHAS[4], "enter"))

    def test_paused_after_scrolling_up(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        assert snap_compare(app, terminal_size=WIDE,
                            run_before=select_commit(SHAS[4], "enter", "shift+tab", "pageup"))


class TestTestsView:
    def test_failures_first_with_their_history_and_the_commit_that_broke_them(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        assert snap_compare(app, terminal_size=WIDE, run_before=select_commit(SHAS[1], "t"))


class TestOutputSearch:
    def test_matches_highlighted_and_the_current_one_marked(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        keys = ["enter", "shift+tab", "slash", *"case_02", "enter", "n", "n"]
        assert snap_compare(app, terminal_size=WIDE, run_before=select_commit(SHAS[4], *keys))


class TestHelpScreen:
    def test_lists_every_key(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        assert snap_compare(app, terminal_size=WIDE, run_before=pressing("question_mark"))


class TestKillConfirmation:
    def test_asks_before_killing_the_selected_runner(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        assert snap_compare(app, terminal_size=WIDE, run_before=pressing("tab", "tab", "j", "x"))


class TestFilter:
    def test_branch_filter(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path)
        keys = ["slash", *"branch:login", "enter"]
        assert snap_compare(app, terminal_size=WIDE, run_before=pressing(*keys))


class TestTries:
    def test_tries_are_listed_apart_and_a_skipped_commit_says_so(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path, events=events_with_tries())
        assert snap_compare(app, terminal_size=WIDE, run_before=pressing())


class TestBisection:
    def test_the_first_bad_commit_is_marked_and_the_status_bar_says_so(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path, events=bisection_events())
        assert snap_compare(app, terminal_size=WIDE, run_before=pressing())


class TestThemes:
    @pytest.mark.parametrize("theme", BUNDLED_THEMES)
    def test_bundled_theme(self, snap_compare, tmp_path, theme):
        app, _ = make_app(tmp_path, theme=theme)
        assert snap_compare(app, terminal_size=(120, 36), run_before=select_commit(SHAS[4], "enter"))

    def test_a_textual_theme_gets_state_colours_from_its_palette(self, snap_compare, tmp_path):
        app, _ = make_app(tmp_path, theme="nord")
        assert snap_compare(app, terminal_size=(120, 36), run_before=pressing())
