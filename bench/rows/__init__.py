"""The benchmark rows, one module each: each starts real tuici processes on a real repository, measures one
figure of issue 5 end to end, measures its physical limit in the same run, and stops everything it started.

``ROWS`` maps each ``--only`` name to its function; what the rows share (``Sizes``, ``Context``, starting a
cluster, ...) is in ``common``."""

from __future__ import annotations

from typing import Callable

from ..harness import Figure
from .backlog import backlog
from .bisect import bisect_cost
from .commit_latency import commit_latency
from .common import Context, Sizes
from .control_center import control_center
from .environments import environments
from .idle import idle_cost
from .job_overhead import job_overhead
from .log_throughput import log_throughput
from .real_suite import real_suite
from .scale import scale
from .startup import startup

__all__ = ["ROWS", "Context", "Sizes"]

ROWS: dict[str, Callable[[Context], list[Figure]]] = {
    "commit-latency": commit_latency,
    "job-overhead": job_overhead,
    "environments": environments,
    "real-suite": real_suite,
    "backlog": backlog,
    "bisect": bisect_cost,
    "log-throughput": log_throughput,
    "idle": idle_cost,
    "startup": startup,
    "scale": scale,
    "control-center": control_center,
}
