"""Job logs: each job's output in ``logs/jobs/<id>.log``, written on a thread of their own.

One thread, so the event loop never waits for the disk and operations on a log land in the order they were
asked for (a close or an emptying behind the writes before it).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable

from ..statedir import StateDir

log = logging.getLogger("tuici.dispatcher")


class JobLogs:
    def __init__(self, state: StateDir):
        self.state = state
        self._files: dict[int, BinaryIO] = {}  # open logs of running jobs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuici-logs")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def sizes(self, job_ids: list[int]) -> dict[int, int]:
        """How much output each job has on disk: a returning runner resumes from there."""
        return await self._run(self._sizes, job_ids)

    def _sizes(self, job_ids: list[int]) -> dict[int, int]:
        sizes = {}
        for job_id in job_ids:
            try:
                sizes[job_id] = self.state.job_log(job_id).stat().st_size
            except FileNotFoundError:
                sizes[job_id] = 0
        return sizes

    async def write(self, job_id: int, data: bytes, stalled: Callable[[], None]) -> None:
        """Append to the job's log; on a disk error, wait and retry, calling ``stalled`` after each try (the
        runner waits on us meanwhile: it is us who are stuck, not the runner)."""
        while True:
            try:
                fh = self._files.get(job_id)
                if fh is None:  # opened and written in one hop to the thread: a job's first output is often its last
                    fh, written = await self._run(_open_and_write, self.state.job_log(job_id), data)
                    self._files[job_id] = fh
                else:
                    written = await self._run(fh.write, data)
                if written == len(data):
                    return
                data = data[written:]
            except OSError as exc:
                log.error("cannot write the log of job %s (%s); retrying", job_id, exc)
                await asyncio.sleep(1.0)
            stalled()

    async def read(self, job_id: int, offset: int, size: int, end: int | None) -> bytes:
        """Up to ``size`` bytes of the job's log from ``offset``, and none past ``end`` (None: up to its end)."""
        if end is not None:
            size = max(0, min(size, end - offset))
        return await self._run(self._read, self.state.job_log(job_id), offset, size) if size else b""

    @staticmethod
    def _read(path: Path, offset: int, size: int) -> bytes:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read(size)
        except FileNotFoundError:
            return b""

    def close(self, job_id: int) -> None:
        """Close the job's log behind the writes already asked for (they are unbuffered: nothing waits for it)."""
        fh = self._files.pop(job_id, None)
        if fh is not None:
            self._executor.submit(fh.close)

    def truncate(self, job_id: int) -> None:
        self._executor.submit(_truncate, self.state.job_log(job_id))

    async def delete(self, job_ids: list[int]) -> int:
        """Delete these jobs' logs (retention); the bytes that freed."""
        return await self._run(self._delete, job_ids)

    def _delete(self, job_ids: list[int]) -> int:
        freed = 0
        for job_id in job_ids:
            path = self.state.job_log(job_id)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            freed += size
        return freed

    async def stop(self) -> None:
        for fh in self._files.values():
            await self._run(fh.close)
        self._files.clear()
        await asyncio.to_thread(self._executor.shutdown)  # waits for what is left, off the event loop


def _open_and_write(path: Path, data: bytes) -> tuple[BinaryIO, int]:
    fh = open(path, "ab", 0)
    try:
        return fh, fh.write(data)
    except OSError:
        fh.close()
        raise


def _truncate(path: Path) -> None:
    try:
        with open(path, "r+b") as fh:
            fh.truncate(0)
    except FileNotFoundError:
        pass
