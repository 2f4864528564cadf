"""startup: `tuici serve --runners N` to every runner registered, and its stop."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

from .. import limits
from ..harness import BenchError, Figure, Repo, summarize
from .common import Context, _leftovers, _serve, toml


def startup(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    repo = Repo(ctx.tmp / "startup-repo", toml("true", 30), files=10)
    times, seen_times, stops, leaks = [], [], [], 0
    warm = 0 if ctx.quick else 1  # the first start (new state dir, cold caches) is a discarded warm-up
    for r in range(s.startup_repeats + warm):
        lines: queue.Queue = queue.Queue()
        t0 = time.time()
        serve = _serve(ctx, "startup-serve", repo, s.startup_runners, stdout=subprocess.PIPE)
        reader = threading.Thread(target=_read_lines, args=(serve.stdout, lines), daemon=True)
        reader.start()
        joined: dict[str, float] = {}
        seen = None
        try:
            deadline = time.monotonic() + 60
            while len(joined) < s.startup_runners:
                if time.monotonic() > deadline:
                    raise BenchError(f"only {len(joined)} runners joined within 60 s: "
                                     f"{ctx.procs.log_tail('startup-serve')}")
                try:
                    at, line = lines.get(timeout=1.0)
                except queue.Empty:
                    ctx.procs.check_alive("startup-serve")
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("kind") == "runner.joined":
                    joined[event["runner"]["name"]] = event["ts"]
                    seen = at
        finally:
            t_stop = time.monotonic()
            ctx.procs.stop(["startup-serve"], grace=20)
            stop_s = time.monotonic() - t_stop
            reader.join(5)
        leaks += _leftovers()
        if r < warm:
            continue
        times.append(max(joined.values()) - t0)
        seen_times.append(seen - t0)
        stops.append(stop_s)
        ctx.say(f"startup: {times[-1]:.2f} s to {s.startup_runners} runners registered; stop {stop_s:.2f} s")
    imports = {
        "python -c pass": ctx.python_ms("pass"),
        "serve (import tuici.cli, tuici.serve)": ctx.python_ms("import tuici.cli, tuici.serve"),
        "dispatcher (import tuici.cli, tuici.dispatcher)": ctx.python_ms("import tuici.cli, tuici.dispatcher"),
        "runner (import tuici.cli, tuici.runner)": ctx.python_ms("import tuici.cli, tuici.runner"),
        "observer (import tuici.cli, tuici.observer)": ctx.python_ms("import tuici.cli, tuici.observer"),
    }
    serve_ms, dispatcher_ms, runner_ms, observer_ms = (imports[k]["p50"] for k in list(imports)[1:])
    # serve starts the dispatcher, the observer and the runners at once: its interpreter, then the slower of the
    # dispatcher's and a runner's; unless the cores cannot run all those interpreters that fast.
    chain = serve_ms + max(dispatcher_ms, runner_ms)
    cpu_bound = serve_ms + (dispatcher_ms + observer_ms + s.startup_runners * runner_ms) / limits.cores()
    st = summarize(times)
    return [
        Figure("startup", f"start-up: `tuici serve --runners {s.startup_runners}` to all registered", "s",
               st["p50"], "<= 1 s", st["p50"] <= 1,
               spread=f"min {st['min']:.2f}, max {st['max']:.2f}, n={st['n']}",
               limit=f"{max(chain, cpu_bound) / 1000:.2f} s: serve's interpreter with its imports, then "
                     f"{s.startup_runners + 2} more at once ({chain / 1000:.2f} s in sequence, "
                     f"{cpu_bound / 1000:.2f} s "
                     f"on {limits.cores()} cores); bare `python -c pass` {imports['python -c pass']['p50']:.0f} ms",
               stats=st, details={"imports_ms": imports, "seen_on_stdout_s": summarize(seen_times),
                                  "stop_s": summarize(stops), "processes_left_after_stop": leaks}),
        Figure("startup", "stop: SIGTERM to `tuici serve` exiting", "s", summarize(stops)["p50"], "(not in issue 5)",
               None, spread=f"{leaks} processes left behind", limit="-"),
    ]


def _read_lines(stream, out: queue.Queue) -> None:
    try:
        for line in iter(stream.readline, b""):
            out.put((time.time(), line))
    except (OSError, ValueError):
        pass
