"""Cancelling: a runner that does not end a cancelled job is relieved of it; control requests answer once durable."""

from __future__ import annotations

import asyncio
import signal
import sqlite3

from tuici.dispatcher import scheduler as dispatcher_module
from tuici.dispatcher.journal import Journal
from tuici.store import Store
from tuici.wire import Control

from conftest import job_processes, toml_command, wait_for


def test_a_cancelled_job_its_runner_does_not_end_is_taken_back_and_the_runner_takes_the_next(repo, cluster_factory):
    """The runner is stopped (SIGSTOP) after its job starts, as one whose handling of the job died would sit: the
    cancel still ends the job within the bound, and once running again the runner drops it and takes the next."""
    cluster = cluster_factory(repo, heartbeat_timeout=120.0)  # never lost meanwhile: only the cancel can end it
    cluster.start_observer()
    cluster.start_runner("stuck")
    cluster.wait_job(repo.head())
    hung = repo.commit("hangs", config=toml_command("echo started; sleep 300", timeout=600))
    job = cluster.wait_job(hung, states={"running"})
    wait_for(lambda: "started" in cluster.log_of(job.id), message="the test command to start")
    cluster.kill("stuck", signal.SIGSTOP)
    following = repo.commit("next", config=toml_command("echo next"))
    wait_for(lambda: cluster.job_for(following), message="the next commit to be queued")

    reply = cluster.control(lambda c: c.cancel(job.id))
    assert reply.ok and "being cancelled" in reply.message
    cancelled = cluster.wait_job(hung, timeout=dispatcher_module.CANCEL_GRACE + 20)
    assert cancelled.state == "cancelled", cancelled
    attempt = next(a for a in cluster.status().attempts if a.job_id == job.id)
    assert attempt.outcome == "cancelled" and "took it back" in attempt.reason, attempt
    # The runner is free again as far as the dispatcher goes: the next job is handed to it.
    runner = next(r for r in cluster.status().runners if r.name == "stuck")
    assert runner.state == "busy" and runner.job == cluster.job_for(following).id

    cluster.kill("stuck", signal.SIGCONT)
    wait_for(lambda: not job_processes(hung), message="the cancelled job's processes to be killed")
    done = cluster.wait_job(following)
    assert (done.state, done.runner, done.attempts) == ("passed", "stuck", 1)
    assert cluster.job_for(hung).state == "cancelled"  # nothing the runner sent afterwards changed it
    assert "took it back" in cluster.component_log("dispatcher")


def test_rerun_and_cancel_answer_only_once_what_they_changed_is_on_disk(repo, cluster):
    """While something else holds the database's write lock, they wait; status is answered all along."""
    first = repo.head()
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(first)
    cluster.kill("r1", signal.SIGTERM)  # the rerun's job stays queued, for the cancel
    db = sqlite3.connect(cluster.state.db, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        async def requests():
            control, asker = Control.for_state(cluster.state), Control.for_state(cluster.state)
            try:
                rerun = asyncio.ensure_future(asker.rerun(first[:10]))
                await asyncio.sleep(2.0)
                assert not rerun.done()  # it waits for the disk...
                assert (await control.status()).jobs[-1].state == "queued"  # ... without holding anyone else up
                db.execute("ROLLBACK")
                reply = await asyncio.wait_for(rerun, 30)
                assert reply.ok and reply.job is not None
                stored = sqlite3.connect(cluster.state.db).execute("SELECT id FROM jobs WHERE id = ?",
                                                                   (reply.job.id,)).fetchall()
                assert stored == [(reply.job.id,)]

                db.execute("BEGIN IMMEDIATE")
                cancel = asyncio.ensure_future(asker.cancel(reply.job.id))
                await asyncio.sleep(2.0)
                assert not cancel.done()
                db.execute("ROLLBACK")
                assert (await asyncio.wait_for(cancel, 30)).ok
            finally:
                await control.close()
                await asker.close()
        asyncio.run(requests())
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
    assert cluster.job_for(first).state == "cancelled"


async def test_durable_with_nothing_pending_waits_for_the_batch_being_written(tmp_path):
    """A log follower asks for it after a job ended, when that result's batch may already be on its way to the
    disk: it must return once that batch is written (it waited for ever: the flush had taken its waiters)."""
    journal = Journal(Store(tmp_path / "tuici.db"), on_durable=lambda: None)
    await journal.open()
    db = sqlite3.connect(tmp_path / "tuici.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        journal.save_meta("repo_url", "/somewhere")
        for _ in range(3):
            await asyncio.sleep(0)  # the flush takes the batch, and waits for the lock in the store's thread
        assert not journal._pending
        waiting = asyncio.ensure_future(journal.durable())
        await asyncio.sleep(0.5)
        assert not waiting.done()  # the batch is not on disk yet
        db.execute("ROLLBACK")
        await asyncio.wait_for(waiting, 30)
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
        await journal.close()
