"""The control center against real dispatcher, observer and runner processes on 127.0.0.1.

The app starts them through the supervisor, in this test process; every test stops them
in a ``finally`` (and the app's unmount would too), then checks none is left.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import asynccontextmanager

import psutil

from tuici.ui.app import ControlCenter
from tuici.ui.backend import FIRST_PAGE, LiveBackend
from tuici.ui.components.confirm import ConfirmScreen

from conftest import GitRepo, toml_command, tuici_processes, wait_for
from ui_fixtures import isolated_config, until  # noqa: F401

SIZE = (140, 40)
SLOW = toml_command("echo started; sleep 30", timeout=60)


def make_repo(tmp_path, command: str = toml_command("echo ok")) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.commit("initial", config=command)
    return repo


@asynccontextmanager
async def control_center(repo: GitRepo, runners: int = 1):
    """The app on ``repo`` with its own engine; nothing it started survives the block."""
    app = ControlCenter(LiveBackend(repo.path, repo.state, runners, dispatcher_args=["--heartbeat-timeout", "2"]))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.connection == "connected", message="the app to connect")
            yield app, pilot
    finally:
        await app.stop_backend()
        wait_for(lambda: not tuici_processes(), 15, message="every process the app started to end")


def job_state(app: ControlCenter, sha: str) -> str | None:
    job = app.model.job_for_commit(sha)
    return None if job is None else job.state


def runner_state(app: ControlCenter, name: str) -> str | None:
    row = app.runners.rows.get(name)
    return None if row is None else row.state


class TestRunners:
    async def test_a_starts_a_runner_that_registers(self, tmp_path):
        repo = make_repo(tmp_path)
        async with control_center(repo) as (app, pilot):
            await until(pilot, lambda: runner_state(app, "runner-1") == "idle", message="runner-1 to register")
            await pilot.press("a")
            await until(pilot, lambda: runner_state(app, "runner-2") == "idle", message="runner-2 to register")
            assert sorted(app.runners.table.keys) == ["runner-1", "runner-2"]
            assert sorted(app.model.runners) == ["runner-1", "runner-2"]

    async def test_x_and_yes_kill_the_selected_runner(self, tmp_path):
        repo = make_repo(tmp_path)
        async with control_center(repo, runners=2) as (app, pilot):
            await until(pilot, lambda: runner_state(app, "runner-2") == "idle", message="runner-2 to register")
            pid = app.runners.rows["runner-2"].pid
            app.runners.table.focus()
            app.runners.table.select_key("runner-2")
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await until(pilot, lambda: not psutil.pid_exists(pid), message=f"runner-2 (pid {pid}) to be gone")
            await until(pilot, lambda: "runner-2" not in app.runners.table.keys, message="runner-2's row to go")
            assert runner_state(app, "runner-1") == "idle"


class TestJobs:
    async def test_r_queues_a_rerun_of_the_selected_commit(self, tmp_path):
        repo = make_repo(tmp_path)
        sha = repo.head()
        async with control_center(repo) as (app, pilot):
            await until(pilot, lambda: job_state(app, sha) == "passed", message="the first job to pass")
            first = app.model.job_for_commit(sha).id
            app.commits.table.select_key(sha)
            await pilot.press("r")
            await until(pilot, lambda: app.model.job_for_commit(sha).id > first, message="a rerun to be queued")
            await until(pilot, lambda: job_state(app, sha) == "passed", message="the rerun to pass")

    async def test_c_cancels_the_selected_running_job(self, tmp_path):
        repo = make_repo(tmp_path, SLOW)
        sha = repo.head()
        async with control_center(repo) as (app, pilot):
            await until(pilot, lambda: job_state(app, sha) == "running", message="the job to start")
            app.commits.table.select_key(sha)
            await pilot.press("c")
            await until(pilot, lambda: job_state(app, sha) == "cancelled", message="the job to be cancelled")

    async def test_enter_shows_the_live_output_of_a_running_job(self, tmp_path):
        repo = make_repo(tmp_path, SLOW)
        sha = repo.head()
        async with control_center(repo) as (app, pilot):
            await until(pilot, lambda: job_state(app, sha) == "running", message="the job to start")
            app.commits.table.select_key(sha)
            await pilot.press("enter")

            def shown() -> list[str]:  # drawing a line asks for it from disk: ask until it is there
                return [app.log_view.render_line(y).text for y in range(app.log_view.line_count)]

            await until(pilot, lambda: any("started" in line for line in shown()), message="the output to show")
            assert app.log_view.follow


class TestQueue:
    async def test_after_attaching_the_queue_is_in_the_order_the_jobs_then_run(self, cluster):
        """Reruns made before the app connected: a queued job moved to the front (no newer job tells it
        apart) and a new job for a cancelled commit. The queue panel shows the dispatcher's order, and
        one runner started afterwards runs the jobs in exactly that order."""
        shas = await asyncio.to_thread(queue_with_reruns, cluster)
        app = ControlCenter(LiveBackend(cluster.repo.path, cluster.state, 1))
        try:
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.connection == "connected" and len(app.queue_panel.table.keys) == 4,
                            message="the app to attach and show the queue")
                shown = list(app.queue_panel.table.keys)
        finally:
            await app.stop_backend()
        cluster.start_runner("r1")
        jobs = await asyncio.to_thread(lambda: [cluster.wait_job(sha) for sha in shas])
        ran = [job.id for job in sorted(jobs, key=lambda job: job.started_at)]
        assert shown == ran == [2, 5, 3, 4]


def queue_with_reruns(cluster) -> list[str]:
    """Four commits queued as jobs 1-4 (no runner takes them); job 3 moved to the front, job 1 cancelled
    and its commit queued again at the front (job 5), then job 2 moved above both."""
    repo = cluster.repo
    cluster.start_observer()
    shas = [repo.head()]
    cluster.wait_job(shas[0], states={"queued"})
    for _ in range(3):
        shas.append(repo.commit())
        cluster.wait_job(shas[-1], states={"queued"})
    first = cluster.job_for(shas[0]).id
    for request in (lambda c: c.rerun(shas[2]), lambda c: c.cancel(first), lambda c: c.rerun(shas[0]),
                    lambda c: c.rerun(shas[1])):
        assert cluster.control(request).ok
    return shas


class TestSupervision:
    async def test_a_killed_dispatcher_is_restarted_and_the_app_catches_up(self, tmp_path):
        repo = make_repo(tmp_path)
        async with control_center(repo) as (app, pilot):
            await until(pilot, lambda: job_state(app, repo.head()) == "passed", message="the first job to pass")
            os.kill(app.backend.processes()["dispatcher"].pid, signal.SIGKILL)
            await until(pilot, lambda: app.connection == "reconnecting", message="the app to see the dispatcher go")
            await until(pilot, lambda: app.connection == "connected", message="the app to reconnect")
            sha = repo.commit("after the restart")
            await until(pilot, lambda: job_state(app, sha) == "passed", message="a new commit to pass")
            assert app.model.counts["passed"] == len(app.model.jobs) == 2


class TestQuit:
    async def test_q_with_a_job_running_asks_and_leaves_no_process_behind(self, tmp_path):
        repo = make_repo(tmp_path, SLOW)
        sha = repo.head()
        app = ControlCenter(LiveBackend(repo.path, repo.state, 2))
        try:
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: job_state(app, sha) == "running", message="the job to start")
                assert tuici_processes()
                await pilot.press("q")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                await until(pilot, lambda: not app.is_running, message="the app to exit")
            wait_for(lambda: not tuici_processes(), 10, message="every process to end")
        finally:
            await app.stop_backend()

    async def test_q_when_attached_leaves_the_running_engine_alone(self, tmp_path, cluster):
        cluster.start_observer()
        cluster.start_runner("r1")
        app = ControlCenter(LiveBackend(cluster.repo.path, cluster.state, 1))
        try:
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.connection == "connected", message="the app to attach")
                assert app.backend.attached and not app.backend.processes()
                await until(pilot, lambda: runner_state(app, "r1") == "idle", message="r1 to show")
                await pilot.press("q")
                await until(pilot, lambda: not app.is_running, message="the app to exit")
        finally:
            await app.stop_backend()
        assert all(proc.poll() is None for proc in cluster.procs.values())


async def _eventually(predicate, message: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` without blocking the loop the backend runs on."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {message}"
        await asyncio.sleep(0.05)


class TestStartUp:
    async def test_the_dispatcher_starts_first_and_the_observer_and_runners_after_the_first_status(self, tmp_path):
        repo = make_repo(tmp_path)
        backend = LiveBackend(repo.path, repo.state, 2)
        try:
            await backend.launch()  # what `tuici` does before it imports Textual
            assert list(backend.processes()) == ["dispatcher"]
            await backend.start()
            first = await backend.first_page()  # fetched on a thread while the dispatcher started
            assert first is not None and first.repo_url == str(repo.path) and not first.runners
            assert await backend.first_page() is None  # given once
            assert list(backend.processes()) == ["dispatcher"]  # the others wait for the whole status
            await backend.status()
            await _eventually(lambda: set(backend.processes()) == {"dispatcher", "observer", "runner-1", "runner-2"},
                              "the observer and runners to be started")

            async def runners_joined() -> bool:
                status = await backend.status()  # asked the usual way now
                return {r.name for r in status.runners} == {"runner-1", "runner-2"} and any(
                    j.commit == repo.head() and j.state == "passed" for j in status.jobs)
            for _ in range(400):
                if await runners_joined():
                    break
                await asyncio.sleep(0.05)
            assert await runners_joined()
        finally:
            await backend.stop()
        wait_for(lambda: not tuici_processes(), 15, message="every process the backend started to end")

    async def test_started_on_an_existing_store_the_first_page_is_read_from_it_as_the_dispatcher_gives_it(
            self, tmp_path):
        repo = make_repo(tmp_path)
        first = LiveBackend(repo.path, repo.state, 1)
        try:
            await first.start()

            async def passed() -> bool:
                status = await first.status()
                return any(j.commit == repo.head() and j.state == "passed" for j in status.jobs)
            for _ in range(400):
                if await passed():
                    break
                await asyncio.sleep(0.05)
            assert await passed()
        finally:
            await first.stop()
        wait_for(lambda: not tuici_processes(), 15, message="the first engine to end")
        again = LiveBackend(repo.path, repo.state, 0)
        try:
            await again.launch()
            page = await again.first_page()  # read from the store while the dispatcher started
            await again.start()
            given = await again.status(FIRST_PAGE)
            assert page is not None and page.jobs and page.commits
            assert (page.commits, page.jobs, page.bisections) == (given.commits, given.jobs, given.bisections)
            assert page.last_seq <= given.last_seq  # the new dispatcher has published since (its processes)
        finally:
            await again.stop()
        wait_for(lambda: not tuici_processes(), 15, message="every process the backend started to end")

    async def test_a_first_status_that_cannot_be_fetched_is_asked_again_and_the_reason_shown(self, tmp_path,
                                                                                            cluster, monkeypatch):
        monkeypatch.setenv("TUICI_TOKEN", "not-the-token")
        app = ControlCenter(LiveBackend(cluster.repo.path, cluster.state, 1))
        try:
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await until(pilot, lambda: any("wrong token" in n.message for n in app._notifications),
                            message="the refusal to be shown")
                assert app.backend.attached and app.connection != "connected"
        finally:
            await app.stop_backend()
        assert all(proc.poll() is None for proc in cluster.procs.values())


class TestTestsView:
    async def test_t_lists_a_real_jobs_tests_and_enter_shows_a_failure_in_its_log(self, tmp_path):
        repo = make_repo(tmp_path, toml_command("python -m pytest -p no:cacheprovider tests", timeout=60))
        suite = "def test_good():\n    pass\n\ndef test_bad():\n    assert 1 + 1 == 3\n"
        sha = repo.commit("a failing test", files={"tests/test_live.py": suite})
        async with control_center(repo) as (app, pilot):
            await until(pilot, lambda: job_state(app, sha) == "failed", 60, message="the job to fail")
            app.commits.table.select_key(sha)
            await pilot.press("t")
            await until(pilot, lambda: app.tests.cases, message="the job's tests")
            assert [(case.name, case.outcome) for case in app.tests.cases] == [
                ("tests/test_live.py::test_bad", "failed"), ("tests/test_live.py::test_good", "passed")]
            assert app.tests.cases[0].history == "F" and app.tests.cases[0].broken_by is not None
            await until(pilot, lambda: app.log_view.line_count > 10, message="the job's log")
            await pilot.press("enter")
            lines = repo.state.job_log(app.tests.job.id).read_text().splitlines()
            heading = next(n for n, line in enumerate(lines) if line.strip("_ ") == "test_bad")
            await until(pilot, lambda: app.log_view.scroll_y == min(heading, app.log_view.max_scroll_y),
                        message="the output at test_bad's failure")
            assert not app.log_view.follow
