"""The results table (printed) and ``RESULTS.md`` (written), from the rows' figures."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from typing import Any

from .harness import Figure


def value_text(f: Figure) -> str:
    if f.value is None:
        return "-"
    v = f.value
    if f.unit == "ratio":
        return f"{v:.3f}"
    digits = 2 if abs(v) < 10 else (1 if abs(v) < 1000 else 0)
    return f"{v:.{digits}f} {f.unit}"


def table(figures: list[Figure]) -> str:
    head = ["figure", "result", "spread", "physical limit (same run)", "target", "verdict"]
    rows = [head, ["---"] * len(head)]
    for f in figures:
        spread = f.spread or f.note
        if f.error:
            spread = f"error: {f.error}"
        rows.append([f.figure, value_text(f), spread, f.limit, f.target, f.verdict])
    return "\n".join("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows)


def beside(figures: list[Figure]) -> str:
    """Another CI's figures (Buildbot's) with tuici's on the same workload, in the same run, and their ratio; a row
    that could not run says why. Empty where no such figure was measured."""
    head = ["workload", "tuici", "Buildbot", "Buildbot / tuici"]
    rows = [head, ["---"] * len(head)]
    for f in figures:
        if f.tuici is not None:
            ratio = f"{f.value / f.tuici:.3g}x" if f.value is not None and f.tuici else "-"
            theirs = value_text(replace(f, value=f.tuici))
            rows.append([f.figure, theirs, value_text(f), ratio])
        elif f.row.startswith("buildbot-") and (f.error or f.note):
            rows.append([f.figure, "-", "-", f"error: {f.error}" if f.error else f.note])
    if len(rows) == 2:
        return ""
    return "\n".join("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _plain(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 3) if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def markdown(machine: dict[str, str], meta: dict[str, Any], figures: list[Figure]) -> str:
    out = ["# tuici benchmark results", ""]
    out.append(f"Written by `{meta['command']}` on {machine['date']}. Every figure is end to end with real "
               "processes, real git repositories in temp dirs and real sockets; its physical limit is "
               "measured in the same run. Medians unless the figure says otherwise. Timings are never test "
               "assertions.")
    out += ["", "## Machine", "", "| | |", "|---|---|"]
    for key in ("cpu", "cores", "ram", "python", "git", "os", "tuici", "date"):
        out.append(f"| {key} | {machine.get(key, '?')} |")
    out.append(f"| load average at start | {meta['load_start']} |")
    out.append(f"| load average at end | {meta['load_end']} |")
    out.append(f"| during the whole run | {meta['busy']} |")
    out += ["", "## Results", "", table(figures), ""]
    if beside(figures):
        out += ["## Buildbot beside tuici", "", BESIDE, "", beside(figures), ""]
    out += ["## Details", ""]
    for f in figures:
        if not (f.details or f.stats or f.note or f.error):
            continue
        out.append(f"### {f.figure}")
        out.append("")
        if f.note:
            out.append(f"- note: {f.note}")
        if f.error:
            out.append(f"- error: {f.error}")
        if f.stats:
            out.append(f"- stats ({f.unit}): `{json.dumps(_plain(f.stats))}`")
        for key, value in f.details.items():
            out.append(f"- {key}: `{json.dumps(_plain(value))}`")
        if f.row in meta.get("row_load", {}):
            out.append(f"- machine during the row: {meta['row_load'][f.row]}")
        out.append("")
    out += ["## Sizes", "", "`" + json.dumps(meta["sizes"]) + "`", ""]
    out += ["## Method", "", METHOD]
    return "\n".join(out) + "\n"


METHOD = """\
- **commit -> test start**: a repository of `files` files; each timed commit changes one file and is made
  with `git commit`; the wall time at which `git commit` returned is compared with the time the test
  command (`date +%s%N > stampfile`) wrote, on the runner. Commits are spaced out (the previous job has
  finished, then `gap` s plus jitter). Stages come from the dispatcher's own job timestamps
  (`queued_at`, `started_at`). Limit: git alone doing the observer's work (`for-each-ref`, `log -1`) and the
  runner's (`checkout --force --detach` + `clean -ffdx` in a kept shared clone), `sh -c 'date ...'` run
  directly, and a raw round trip between two processes over a Unix socket (as the components talk locally).
- **per-job overhead**: command `true`; job wall time is the dispatcher's `finished_at - started_at`
  (assignment to result recorded); the command's own time is `sh -c true` run directly (its median).
- **real suite**: a generated pytest suite (~`suite_seconds` s) run three ways in each round, in a rotating
  order: directly in a checkout (warm .pyc), directly in the same checkout right after `git clean -ffdx` (as a
  runner starts each job: pytest rewrites and compiles every test module again), and through tuici, timed from
  `git commit` returning to the result recorded. Both direct runs get the environment the runner gives the
  command (CI=true, no PYTHONUNBUFFERED) and write the same JUnit XML. The figure is the median of the rounds'
  tuici / direct; its limit the median of clean / direct.
- **backlog**: `backlog_commits` commits made at once (`git fast-import`, one ref update), command `true`;
  jobs/s from the ref update to the last result; every commit must have exactly one passed job.
  Limit: git checkout/clean + `true` run directly, per job, times min(runners, cores).
- **log throughput**: one job runs `yes LINE | head -c N`; bytes stored / (result recorded - assigned);
  dispatcher RSS sampled every 20 ms with psutil. Limits: the command directly into a file; the same bytes
  over a raw Unix socket into a file.
- **idle cost**: `tuici serve --runners N`, settled, then user+system CPU time of its whole process tree, as `top`
  would count it (psutil `cpu_times` of the supervisor and every process below it, each live process's own and
  reaped children's: the dispatcher, observer, runners and their git helpers) over `idle_seconds`, as % of one
  core; per process in the details (each role with what it spawned), with how often each was put on a CPU
  (`/proc/PID/task/TID/schedstat`, per minute): finer than CPU time, whose unit is a 10 ms clock tick.
- **start-up**: from spawning `tuici serve --runners N --json` to the dispatcher's timestamp on the N-th
  `runner.joined` event; the first start of each run is a discarded warm-up.
- **scale**: `scale_runners` runner processes until all registered, then as many commits at once
  with a command lasting `scale_sleep` s: every runner must get one. History: `scale_history` real commits
  (`git fast-import`), their finished jobs, attempts and events written through tuici's own `Store` (what a
  dispatcher records), loaded by the dispatcher as after a restart; then `tuici status --json` run as a
  command (wall time, including the interpreter's start).
- **control center**: the real `tuici` on a 120x40 pty that answers as a modern terminal does (synchronized
  output, so every frame comes bracketed); what it draws is read on a thread and each frame stamped when its
  last byte arrives. Keys: the app attaches to a dispatcher, observer and runner whose job prints
  `ui_lines_per_s` lines a second (a batch every 10 ms); Enter shows that job's output, which follows it;
  then `ui_presses` keys, `j` and `k` in turn, each typed 20-80 ms after the previous one was answered, move
  the commits table's selection; each is timed from writing the key to the end of the first frame that draws
  the selection marker on its new row. The app's RSS is sampled every 20 ms over each half of the keys.
  First frame: `ui_history` real commits with their jobs written through tuici's `Store` (as for scale), then
  `tuici REPO` timed from its spawn to the end of the first frame that shows the newest commit, both starting
  its engine (the first start a discarded warm-up) and attaching to a running one; `q` quits it each time.
  Limit: a bare Textual app (one Line-API widget, `bench/_bare_app.py`) started and driven the same way, in
  the same run (its keys during the same flood, and on a quiet machine).
- **Buildbot beside tuici** (`--only buildbot`): Buildbot (`buildbot`, `buildbot-worker`, `buildbot-www`, pinned
  in `bench/buildbot.py`) in a virtualenv the bench makes in its cache dir (`$TUICI_BENCH_CACHE`, else
  `~/.cache/tuici-bench`) and reuses; skipped, with the reason, where it cannot be installed. A generated
  `master.cfg`: SQLite, workers on 127.0.0.1 with a password, one builder (Git step `mode=full, method=fresh`,
  i.e. clean -ffdx, fetch, checkout; then a ShellCommand), every commit its own build (no tree-stable timer,
  `collapseRequests=False`); changes come from the web change hook (`base` dialect on 127.0.0.1, posted with curl,
  in the background, by git's post-commit and post-merge hooks, and for each new commit by its post-receive
  hook) or from GitPoller (`pollInterval=1`). Master and workers run with `--nodaemon`, so the bench owns and
  stops their pids; a service in the master stamps each change, build start and end, and worker connection.
  tuici's side of each row is tuici's own row on the same sizes, measured just before. Latency and overhead:
  `runners` workers, `bb_commits` spaced-out commits, `date` writing its start time, the build's start (a worker
  assigned) to its end less `sh -c true`. Backlog: `bb_backlog` commits in one ref update, then the post-receive
  hook run as a push would run it (a post-commit hook does not run for them), `bb_workers` workers, every commit
  exactly one passed build. Idle: the whole process tree of the master and `bb_workers` workers (psutil: each
  live process's own and reaped children's CPU time), after a build on each worker, over `idle_seconds`.
  Start-up: the master spawned, the workers spawned once its log says it is running (as `buildbot start` waits),
  to the last worker connected; the first start a discarded warm-up. Replay: `bb_replay` generated commits (a
  small Python project, a pytest suite of ~`bb_replay_suite` s, every tenth commit from the third adds a failing
  test the next one mends), fast-forwarded into main one a second, through `tuici serve --runners bb_workers` and
  through Buildbot with as many workers; merge -> result is from `git merge` returning to the result recorded.
"""


BESIDE = """\
The same workloads through Buildbot (installed by the bench into a virtualenv of its own) in the same run, each
right after tuici's side measured by tuici's own row on the same sizes. Buildbot's figure is in the Results table
too, with its spread; the physical limit there is that of tuici's row.\
"""


def to_json(machine: dict[str, str], meta: dict[str, Any], figures: list[Figure]) -> str:
    return json.dumps({"machine": machine, "meta": meta, "figures": [_plain(asdict(f)) | {"verdict": f.verdict}
                                                                     for f in figures]}, indent=2, default=str)
