"""The benchmark rows, one module each: each starts real tuici processes on a real repository, measures one
figure of issue 5 end to end, measures its physical limit in the same run, and stops everything it started. The
``buildbot-*`` rows (issue 15) run Buildbot beside tuici on the same workloads.

``ROWS`` maps each ``--only`` name to its function, ``GROUPS`` a name to several rows; what the rows share
(``Sizes``, ``Context``, starting a cluster, ...) is in ``common``, what the Buildbot rows share in ``beside``."""

from __future__ import annotations

from typing import Callable

from ..harness import Figure
from .backlog import backlog
from .bisect import bisect_cost
from .buildbot_backlog import buildbot_backlog
from .buildbot_idle import buildbot_idle
from .buildbot_latency import buildbot_latency
from .buildbot_overhead import buildbot_overhead
from .buildbot_replay import buildbot_replay
from .buildbot_startup import buildbot_startup
from .commit_latency import commit_latency
from .common import Context, Sizes
from .control_center import control_center
from .environments import environments
from .failover import failover
from .idle import idle_cost
from .job_overhead import job_overhead
from .log_throughput import log_throughput
from .real_suite import real_suite
from .scale import scale
from .startup import startup
from .tests_storage import tests_storage

__all__ = ["GROUPS", "ROWS", "Context", "Sizes"]

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
    "tests-storage": tests_storage,
    "failover": failover,
    "buildbot-latency": buildbot_latency,
    "buildbot-overhead": buildbot_overhead,
    "buildbot-backlog": buildbot_backlog,
    "buildbot-idle": buildbot_idle,
    "buildbot-startup": buildbot_startup,
    "buildbot-replay": buildbot_replay,
}

GROUPS: dict[str, list[str]] = {"buildbot": [name for name in ROWS if name.startswith("buildbot-")]}
