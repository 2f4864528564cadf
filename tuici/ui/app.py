"""The control center: `tuici [REPO]` opens it on a repository.

It starts (or attaches to) the engine through a ``Backend``, follows its events through
a ``Feed``, and applies them in batches on a short timer, so a burst of events costs one
repaint, not one each. Everything that may block (the engine, the disk) happens in
workers that report back; the UI thread only draws.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from textual.app import App, ComposeResult, SuspendNotSupported, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from .. import wire as p
from ..notify import Notification
from ..sanitize import StreamCleaner
from . import themes
from .actions import bindings_for, palette_actions
from .backend import Backend, BackendError
from .components.commits import CommitsPanel
from .components.confirm import ConfirmScreen
from .components.help import HelpScreen
from .components.output import LogView, OutputPanel
from .components.queue import QueuePanel
from .components.runners import RunnerRow, RunnersPanel
from .components.status_bar import StatusBar, StatusInfo
from .components.tests import TestsPanel
from .components.tries import TriesPanel
from .feed import Connection, Feed, Heartbeats, Snapshot, Update
from .logindex import failure_heading, find_line
from .model import Model
from .settings import Settings, SettingsError, load_settings, save_settings

FLUSH_INTERVAL = 0.1  # events are applied at most this often
TICK_INTERVAL = 1.0  # ages, heartbeats and process states are redrawn this often

# A supervised process's state, as the status bar calls it.
_SUPERVISED_HEALTH = {"running": "up", "starting": "starting", "restarting": "restarting", "stopping": "down",
                      "stopped": "down"}
# The last process.* event about a process we do not supervise, as the status bar calls it.
_REPORTED_HEALTH = {"started": "up", "restarted": "up", "exited": "restarting", "stopped": "down"}


@dataclass(frozen=True)
class ProcessEvent:
    """The supervisor telling us a process started, exited, was restarted or stopped."""

    kind: str
    name: str
    message: str


class ControlCenter(App[None]):
    CSS_PATH = ["global.tcss", "app.tcss"]
    TITLE = "tuici"
    BINDINGS = [*bindings_for("app"), Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]

    def __init__(
        self,
        backend: Backend,
        *,
        theme: str | None = None,
        clock: Callable[[], float] = time.time,
        theme_dirs: list[Path] | None = None,
        warnings: Iterable[str] = (),
        bell: bool = True,
    ):
        super().__init__()
        self.backend = backend
        self.bell_on = bell  # ring the terminal bell when a branch breaks or is fixed (``notify`` in config.toml)
        self.clock = clock
        self.model = Model()
        self.pending: list[Update | ProcessEvent] = []
        self.connection = "connecting"
        self.warnings = list(warnings)
        self._start_failed = False
        self._note = ""
        self._stopped = False
        self._quitting = False
        self._remember_theme = False
        backend.on_process_event = lambda kind, name, message: self.receive(ProcessEvent(kind, name, message))
        try:
            self.settings = load_settings()
        except SettingsError as exc:
            self.warnings.append(f"Settings ignored: {exc}")
            self.settings = Settings()
        self.warnings += [f"Key binding ignored: {problem}" for problem in self.settings.problems]
        self.set_keymap(self.settings.keymap)
        self._setup_themes(theme, self.settings.theme, themes.theme_dirs() if theme_dirs is None else theme_dirs)

    # ------------------------------------------------------------------ themes

    def _setup_themes(self, requested: str | None, saved: str | None, dirs: list[Path]) -> None:
        loaded, problems = themes.load_themes(dirs)
        self.warnings += problems
        for theme in loaded:
            self.register_theme(theme)
        default = themes.DEFAULT_THEME if themes.DEFAULT_THEME in self.available_themes else "textual-dark"
        for name, origin in ((requested, "--theme"), (saved, "the saved setting")):
            if name is None:
                continue
            if name in self.available_themes:
                self.theme = name
                return
            self.warnings.append(f"Theme {name!r} (from {origin}) is not available; using {default}. "
                                 f"Available: {', '.join(sorted(self.available_themes))}")
        self.theme = default

    def get_theme_variable_defaults(self) -> dict[str, str]:
        """Job-state colours for themes that do not set their own (Textual's built-in ones)."""
        return themes.state_colours(self.current_theme)

    def watch_theme(self, name: str) -> None:
        if self._remember_theme:
            self.run_worker(partial(self._save_theme, name), thread=True, group="settings")

    def _save_theme(self, name: str) -> None:
        try:
            save_settings(Settings(theme=name))
        except OSError as exc:
            self.call_from_thread(self.notify, f"Could not save the theme choice: {exc}", severity="warning",
                                  markup=False)

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            with Vertical(id="main"):
                yield TriesPanel(self.model, self.clock, id="tries")
                yield CommitsPanel(self.model, self.clock, Path(self.backend.label).name, id="commits")
            with Vertical(id="side"):
                yield QueuePanel(self.model, self.clock, id="queue")
                yield RunnersPanel(self.model, self.backend.processes, self.clock, id="runners")
        with Horizontal(id="bottom"):
            yield TestsPanel(id="tests")
            yield OutputPanel(id="output")
        yield StatusBar(id="status")
        yield Footer(compact=True, show_command_palette=False)  # ctrl+p is on the help screen

    @property
    def commits(self) -> CommitsPanel:
        return self.query_one(CommitsPanel)

    @property
    def tries(self) -> TriesPanel:
        return self.query_one(TriesPanel)

    @property
    def queue_panel(self) -> QueuePanel:
        return self.query_one(QueuePanel)

    @property
    def runners(self) -> RunnersPanel:
        return self.query_one(RunnersPanel)

    @property
    def tests(self) -> TestsPanel:
        return self.query_one(TestsPanel)

    @property
    def output(self) -> OutputPanel:
        return self.query_one(OutputPanel)

    @property
    def log_view(self) -> LogView:
        return self.query_one(LogView)

    def on_mount(self) -> None:
        for warning in self.warnings:
            self.notify(warning, severity="warning", timeout=20, markup=False)
        self.commits.table.focus()
        self.watch(self.log_view, "follow", lambda _following: self._update_status(), init=False)
        self.set_interval(FLUSH_INTERVAL, self.flush)
        self.set_interval(TICK_INTERVAL, self._tick)
        self.run_worker(self._follow_engine(), name="engine", group="engine")
        self._remember_theme = True
        self._update_status()
        self.call_after_refresh(_freeze_heap)

    async def _follow_engine(self) -> None:
        feed = Feed(self.backend, self.receive, self._drawn)
        first = asyncio.ensure_future(feed.first_page())  # drawn as soon as it comes, while the engine starts
        try:
            await self.backend.start()
            await first
        except BackendError as exc:
            first.cancel()
            self._start_failed = True
            self._update_status()
            self.notify(str(exc), title="tuici could not start", severity="error", timeout=3600, markup=False)
            return
        await feed.run()

    async def _drawn(self) -> None:
        """Returns once what was received so far is on the screen."""
        shown = asyncio.Event()
        self.call_after_refresh(shown.set)
        await shown.wait()

    # ------------------------------------------------------------------ applying what happened

    def receive(self, update: Update | ProcessEvent) -> None:
        """Keep it for the next flush (``flush`` swaps the list, so this looks it up every time). A snapshot
        is everything at once and comes seldom (on connecting): it is shown at once, not on the timer."""
        self.pending.append(update)
        if isinstance(update, Snapshot):
            self.call_later(self.flush)

    def flush(self) -> None:
        """Apply everything that arrived since the last flush, in one batch, to the panels that it changed."""
        if not self.is_running:
            return  # shutting down: the panels are going
        pending, self.pending = self.pending, []
        for update in pending:
            if isinstance(update, p.Event):
                self.model.apply(update)
            elif isinstance(update, Snapshot):
                self.model.load(update.status, partial=update.partial)
            elif isinstance(update, Heartbeats):
                self.model.update_heartbeats(update.runners)
            elif isinstance(update, Connection):
                self.connection = update.state
                if update.reason:
                    self.notify(update.reason, title="tuici cannot follow the engine", severity="error",
                                timeout=3600, markup=False)
            else:
                self._announce(update)
        for alert in self.model.take_alerts():
            self._alert(alert)
        for message in self.model.take_takeovers():
            self.notify(message, title="Another dispatcher took over", severity="warning", markup=False, timeout=10)
        changes = self.model.take_changes()
        if not changes:
            if pending:
                self._update_status()
            return
        with self.batch_update():
            self.commits.apply(changes)
            if changes.tries or changes.reset or not changes.jobs.isdisjoint(self.model.tries):
                self.tries.rebuild()
            if changes.jobs or changes.reset:
                self.queue_panel.rebuild()
            self.runners.rebuild()
            shown = self.output.job
            if shown is not None and (shown.id in changes.jobs or changes.reset) and shown.id in self.model.jobs:
                self.output.update_job(self.model.jobs[shown.id])
            listed = self.tests.job
            if self.tests.display and listed is not None and (listed.id in changes.jobs or changes.reset):
                job = self.model.jobs.get(listed.id)
                if job is not None and job.state != listed.state:  # it ended (or started again): its tests changed
                    self._load_tests(job)
            self._update_status()

    def _announce(self, event: ProcessEvent) -> None:
        if event.kind == "process.exited":
            self.notify(f"{event.name} exited: {event.message}", title="Process exited", severity="warning",
                        markup=False)
        elif event.kind == "process.restarted":
            self.notify(f"{event.name} is back: {event.message}", title="Process restarted", markup=False)

    def _alert(self, notification: Notification) -> None:
        """A branch broke or was fixed: a toast, and the bell (to be heard from another window)."""
        self.notify(notification.body, title=notification.title, markup=False, timeout=15,
                    severity="error" if notification.kind == "broken" else "information")
        if self.bell_on:
            self.bell()

    def _tick(self) -> None:
        """Time moves on: ages and durations, heartbeats, and processes that start and stop unannounced."""
        if not self.is_running:
            return
        with self.batch_update():
            self.commits.table.redraw()
            self.tries.table.redraw()
            self.queue_panel.table.redraw()
            self.runners.rebuild()
            self._update_status()

    def _health(self, name: str) -> str:
        if self._start_failed:
            return "down"
        supervised = self.backend.processes().get(name)
        if supervised is not None:
            return _SUPERVISED_HEALTH.get(supervised.state, "down")
        reported = self.model.processes.get(name)
        if reported is not None:
            return _REPORTED_HEALTH.get(reported, "up")
        if not self.backend.attached:
            return "starting"
        if name == "dispatcher":
            return "up" if self.connection == "connected" else "down"
        return "external"

    def _update_status(self) -> None:
        self.query_one(StatusBar).show(StatusInfo(
            health=(("dispatcher", self._health("dispatcher")), ("observer", self._health("observer"))),
            connection=self.connection, counts=None if self.model.partial else dict(self.model.counts),
            following=self.log_view.follow,
            bisection=self.model.latest_bisection(), note=self._note, dispatcher=self.model.active_dispatcher,
        ))

    # ------------------------------------------------------------------ what is selected

    def _focused_panel(self) -> str:
        """commits, tries, queue, runners, tests or output: where the keys act."""
        for panel in (self.commits, self.tries, self.queue_panel, self.runners, self.tests, self.output):
            if panel.has_focus_within and panel.id is not None:
                return panel.id
        return "commits"

    def selected_job(self) -> p.JobInfo | None:
        panel = self._focused_panel()
        if panel == "commits":
            sha = self.commits.selected_sha
            return None if sha is None else self.model.job_for_commit(sha)
        if panel == "tries":
            job_id = self.tries.selected_job
        elif panel == "queue":
            job_id = self.queue_panel.selected_job
        elif panel == "runners":
            runner = self.runners.selected
            job_id = None if runner is None else runner.job
        elif panel == "tests":
            job_id = None if self.tests.job is None else self.tests.job.id
        else:
            job_id = None if self.output.job is None else self.output.job.id
        return None if job_id is None else self.model.jobs.get(job_id)

    def selected_commit(self) -> str | None:
        if self._focused_panel() == "commits":
            return self.commits.selected_sha
        job = self.selected_job()
        return None if job is None else job.commit

    # ------------------------------------------------------------------ actions

    def _in_background(self, work, description: str) -> None:
        """Run a request to the engine without holding up the keyboard; a failure becomes a notification."""
        async def run() -> None:
            try:
                await work
            except BackendError as exc:
                self.notify(f"Could not {description}: {exc}", severity="error", markup=False)
        self.run_worker(run(), group="actions")

    def _reply(self, reply: p.Reply) -> None:
        self.notify(reply.message, severity="information" if reply.ok else "warning", markup=False)

    def action_add_runner(self) -> None:
        if not self.backend.can_supervise:
            self.notify("Attached to processes started elsewhere (tuici serve): add runners there.",
                        severity="warning")
            return

        async def add() -> None:
            name = await self.backend.add_runner()
            self.runners.rebuild()
            self.notify(f"Started {name}.", markup=False)
        self._in_background(add(), "start a runner")

    def _runner_to_kill(self) -> RunnerRow | None:
        """The selected runner, if this control center may kill it; otherwise say why not."""
        runner = self.runners.selected
        if runner is None:
            self.notify("No runner selected: pick one in the runners panel.", severity="warning")
        elif not self.backend.can_supervise or runner.name not in self.backend.processes():
            self.notify(f"{runner.name} was not started by this control center.", severity="warning", markup=False)
        else:
            return runner
        return None

    def action_kill_runner(self) -> None:
        runner = self._runner_to_kill()
        if runner is None:
            return
        question = f"Stop {runner.name} (pid {runner.pid})?"
        if runner.job:
            question += f" Its job {runner.job} goes back to the queue."

        def answered(yes: bool | None) -> None:
            if yes:
                self._kill(runner.name, force=False)
        self.push_screen(ConfirmScreen("Kill runner", question, yes="Kill"), answered)

    def action_kill_runner_now(self) -> None:
        runner = self._runner_to_kill()
        if runner is not None:
            self._kill(runner.name, force=True)

    def _kill(self, name: str, force: bool) -> None:
        async def kill() -> None:
            await self.backend.kill_runner(name, force=force)
            self.runners.rebuild()
            self.notify(f"{name} {'killed' if force else 'stopped'}.", markup=False)
        self._in_background(kill(), f"stop {name}")
        self.call_after_refresh(self.runners.rebuild)  # it shows as stopping meanwhile

    def action_rerun(self) -> None:
        sha = self.selected_commit()
        if sha is None:
            self.notify("No commit selected.", severity="warning")
            return

        async def rerun() -> None:
            self._reply(await self.backend.rerun(sha))
        self._in_background(rerun(), f"rerun {sha[:7]}")

    def action_cancel_job(self) -> None:
        job = self.selected_job()
        if job is None or job.state in p.FINAL_STATES:
            self.notify("Nothing to cancel: the selected job is not queued or running.", severity="warning")
            return

        async def cancel() -> None:
            self._reply(await self.backend.cancel(job.id))
        self._in_background(cancel(), f"cancel job {job.id}")

    def action_show_output(self) -> None:
        if self._focused_panel() == "tests":
            self._show_failure()
            return
        job = self.selected_job()
        if job is None:
            self.notify("No job for this selection yet.", severity="warning")
            return
        self.output.show_job(job, self.backend.job_log(job.id))
        if self.tests.display:
            self._load_tests(job)

    def action_toggle_tests(self) -> None:
        """Show the selected job's tests beside its output, or hide them."""
        if self.tests.display:
            self.tests.display = False
            if self.tests.has_focus_within:
                self.commits.table.focus()
            return
        job = self.selected_job()
        if job is None:
            self.notify("No job for this selection yet.", severity="warning")
            return
        if self.output.job is None or self.output.job.id != job.id:
            self.output.show_job(job, self.backend.job_log(job.id))
        self.tests.display = True
        self.tests.table.focus()
        self._load_tests(job)

    def _load_tests(self, job: p.JobInfo) -> None:
        """Ask for the job's tests in a worker; the newest request wins."""
        self.tests.awaiting(job)

        async def load() -> None:
            try:
                cases = await self.backend.tests(job.id)
            except BackendError as exc:
                self.notify(f"Could not load the tests of job {job.id}: {exc}", severity="error", markup=False)
                cases = []
            if self.tests.job is not None and self.tests.job.id == job.id:
                self.tests.show(self.model.jobs.get(job.id, job), cases)
        self.run_worker(load(), group="tests", exclusive=True)

    def _show_failure(self) -> None:
        """Scroll the output to where the log reports the selected test's failure."""
        case, job = self.tests.selected_case, self.tests.job
        if case is None or job is None:
            return
        path = self.backend.job_log(job.id)
        if self.output.job is None or self.output.job.id != job.id:
            self.output.show_job(job, path)

        async def find() -> None:
            try:
                line = await asyncio.to_thread(find_line, path, failure_heading(case.name))
            except OSError as exc:
                self.notify(f"Cannot read the log of job {job.id}: {exc}", severity="error", markup=False)
                return
            if line is None:
                self.notify(f"The log of job {job.id} has no report of {case.name}.", severity="warning",
                            markup=False)
                return
            self.log_view.go_to_line(line)
        self.run_worker(find(), group="log-find", exclusive=True)

    def action_copy_sha(self) -> None:
        sha = self.selected_commit()
        if sha is None:
            self.notify("No commit selected.", severity="warning")
            return
        self.copy_to_clipboard(sha)
        self.notify(f"Copied {sha} to the clipboard.", markup=False)

    def action_open_pager(self) -> None:
        """The selected job's output in $PAGER, cleaned of every escape sequence but colour (what any pager may
        safely show), with the app suspended meanwhile (Textual's way: it waits for the pager)."""
        job = self.selected_job()
        if job is None:
            self.notify("No job for this selection yet.", severity="warning")
            return
        if job.log_deleted:
            self.notify(f"Job {job.id}'s output was deleted by retention.", severity="warning")
            return
        try:
            pager = shlex.split(os.environ.get("PAGER") or "less -R")
        except ValueError as exc:
            self.notify(f"Cannot read $PAGER: {exc}", severity="error", markup=False)
            return
        problem = None
        try:
            with self.suspend():
                problem = _page(pager or ["less", "-R"], self.backend.job_log(job.id))
        except SuspendNotSupported:
            problem = "this terminal cannot suspend the app"
        if problem:
            self.notify(f"Could not open the pager: {problem}", severity="error", markup=False)

    def action_follow(self) -> None:
        self.log_view.action_follow()

    def action_filter(self) -> None:
        if self._focused_panel() == "tests":
            self.tests.open_filter()
        else:
            self.commits.open_filter()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.settings.keymap))

    async def action_quit(self) -> None:
        """Quit; when that would stop running jobs, ask first."""
        if self._quitting:
            return
        running = self.model.running_jobs()
        if running and not self.backend.attached and not self._start_failed:
            def answered(yes: bool | None) -> None:
                if yes:
                    self._quit()
            jobs = f"{running} job{'s are' if running > 1 else ' is'} running"
            self.push_screen(ConfirmScreen("Quit", f"{jobs}. Quit, and stop every process this control center "
                                                   "started?", yes="Quit"), answered)
            return
        self._quit()

    def _quit(self) -> None:
        self._quitting = True
        self._note = "stopping…"
        self._update_status()

        async def stop_and_exit() -> None:
            await self.stop_backend()
            self.exit()
        self.run_worker(stop_and_exit(), group="quit")

    async def stop_backend(self) -> None:
        """Stop following the engine, then every process we started (once)."""
        if self._stopped:
            return
        self._stopped = True
        self.workers.cancel_group(self, "engine")
        await self.backend.stop()

    async def on_unmount(self) -> None:
        await self.stop_backend()  # however the app ends, nothing it started outlives it

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for action in palette_actions():
            if action.action != "quit":  # Textual's own Quit entry calls our action_quit
                yield SystemCommand(action.palette_title, action.help, partial(self.run_action, action.action))


def _page(pager: list[str], path: Path) -> str | None:
    """Run ``pager`` on the log at ``path``, fed to it through a pipe, cleaned; what went wrong, if anything."""
    try:
        proc = subprocess.Popen(pager, stdin=subprocess.PIPE)
    except OSError as exc:
        return f"{pager[0]}: {exc.strerror or exc}"
    assert proc.stdin is not None
    stdin = proc.stdin

    def feed() -> None:
        cleaner = StreamCleaner()
        try:
            with open(path, "rb") as log:
                while chunk := log.read(1 << 20):
                    stdin.write(cleaner.feed(chunk).encode())
            stdin.write(cleaner.feed(b"", final=True).encode())
        except FileNotFoundError:
            stdin.write(b"(no output stored for this job yet)\n")
        except (BrokenPipeError, OSError):
            pass  # the pager quit before reading it all
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, name="tuici-pager", daemon=True)
    feeder.start()
    proc.wait()
    feeder.join()
    return None


def _freeze_heap() -> None:
    """Once the first frame is up, what exists (modules, widgets, styles) lives as long as the app: frozen,
    the collector stops walking it in every full collection, each of which paused the app for tens of
    milliseconds every few seconds while a job printed fast. (A collection first would cost as long, for
    the few dozen objects start-up leaves behind.) The collector is back on from here, if `tuici` turned it
    off for the start (``launch.open_control_center``)."""
    gc.freeze()
    gc.enable()
