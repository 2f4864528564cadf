"""control-center: keys answered under a flood of output, and the first frame over a long history, on a pty."""

from __future__ import annotations

import random
import re
import shlex
import time
from typing import Callable

import psutil

from .. import _bare_app as bare_app
from .._tty import Frame, Terminal
from ..harness import PY, Figure, Repo, RssSampler, cpu_seconds, git, summarize, wait_for
from .common import Context, _cluster, _leftovers, _ms_spread, _prefill, _profiled_pids, toml

UI_SIZE = (120, 40)  # columns and rows of the terminal the apps are measured in
UI_ROWS = 200  # finished commits under the one whose job prints, in the keypress figure
FLOOD_LINE = "flood {:09d} the quick brown fox jumps over the lazy dog\n"
FLOOD_SHOWN = re.compile(r"flood (\d{9})")
FLOOD_SCRIPT = f"LINE = {FLOOD_LINE!r}\n" + '''\
"""Print RATE lines a second, a write every 10 ms, for SECONDS."""
import sys
import time

rate, seconds = int(sys.argv[1]), float(sys.argv[2])
batch = max(1, rate // 100)
out = sys.stdout.buffer
start, n = time.monotonic(), 0
while n < rate * seconds:
    out.write("".join(LINE.format(i) for i in range(n, n + batch)).encode())
    out.flush()
    n += batch
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
'''


def _ui_env(ctx: Context) -> dict[str, str]:
    """Settings and runner clones in the temp dir, never the user's."""
    return {"XDG_CONFIG_HOME": str(ctx.dir("ui-config")), "XDG_CACHE_HOME": str(ctx.dir("ui-cache"))}


def _open(ctx: Context, name: str, argv: list[str], ready: Callable[[Frame], bool],
          what: str) -> tuple[Terminal, Frame]:
    """Start an app on a pty; it and the first frame that shows ``what``."""
    term = Terminal(ctx.procs, name, argv, UI_SIZE, env=_ui_env(ctx))
    try:
        return term, term.wait(ready, term.started, 60, what)
    except BaseException:
        term.close()
        raise


def _home(frame: Frame) -> tuple[int, int]:
    """Where the marker of the selected row is: in the leftmost table (the commits), its top one."""
    return min(frame.cells(bare_app.MARKER), key=lambda cell: (cell[1], cell[0]))


def _presses(term: Terminal, home: tuple[int, int], count: int) -> list[float]:
    """Milliseconds from each key to the first frame that shows its effect: ``j`` and ``k`` in turn move
    the selection off ``home`` and back (``count`` rounded up to even, so it ends at home), at random
    moments so that keys do not fall in step with the app's timers."""
    row, col = home
    samples = []
    for i in range(count + count % 2):
        key, want = (b"j", (row + 1, col)) if i % 2 == 0 else (b"k", (row, col))
        typed = term.press(key)
        frame = term.wait(lambda f, want=want: want in f.cells(bare_app.MARKER), typed, 10, f"the selection at {want}")
        samples.append((frame.at - typed) * 1000)
        time.sleep(random.uniform(0.02, 0.08))
    return samples


def _bare_presses(ctx: Context, name: str, count: int) -> list[float]:
    term, first = _open(ctx, name, [PY, "-m", "bench._bare_app"], lambda f: bare_app.MARKER in f.text, "the bare app")
    try:
        return _presses(term, _home(first), count)
    finally:
        term.close(b"q")


class _Following:
    """What the output panel shows while keys are pressed: frames drawn and the newest log line in them."""

    def __init__(self) -> None:
        self.frames = 0
        self.newest = -1
        self.advanced = 0  # frames that showed a newer line

    def see(self, frame: Frame) -> None:
        self.frames += 1
        numbers = FLOOD_SHOWN.findall(frame.plain())
        if numbers and int(max(numbers)) > self.newest:
            self.newest = int(max(numbers))
            self.advanced += 1


def _keypress_under_flood(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    command = f"{shlex.quote(PY)} flood.py {s.ui_lines_per_s} 3600"
    repo = Repo(ctx.tmp / "cc-flood-repo", toml(command, 7200), files=10, extra={"flood.py": FLOOD_SCRIPT})
    history, _ = repo.fast_import(UI_ROWS)
    repo.sync_worktree()
    _prefill(repo, history, 1)
    cluster = _cluster(ctx, "cc-flood", repo, 1)
    try:
        sha, _ = repo.commit()
        subject = git(repo.path, "log", "-1", "--format=%s")

        def printing():
            job = next((j for j in cluster.status().jobs if j.commit == sha), None)
            return job if job is not None and job.state == "running" and job.log_size else None
        job = wait_for(printing, 60, 0.1, "the printing job to start")
        log = repo.state_path / "logs" / "jobs" / f"{job.id}.log"
        # the newest commit is selected at start; Enter shows its job's output, following it
        app, first = _open(ctx, "cc-app", [PY, "-m", "tuici", str(repo.path)],
                           lambda f: bare_app.MARKER in f.text and subject in f.plain(), "the commits")
        try:
            home = _home(first)
            shown = _Following()
            app.watch = shown.see
            app.wait(lambda f: FLOOD_SHOWN.search(f.plain()), app.press(b"\r"), 30, "the job's output")
            rss = psutil.Process(app.pid).memory_info().rss
            size0, t0, newest0, frames0 = log.stat().st_size, time.monotonic(), shown.newest, shown.frames
            cpu0 = cpu_seconds([app.pid])
            half = s.ui_presses // 2
            _profiled_pids(ctx, "control-center", {"app": app.pid, "dispatcher": cluster.pid("dispatcher")})
            with RssSampler({"app": app.pid}) as early:
                samples = _presses(app, home, half)
            with RssSampler({"app": app.pid}) as late:
                samples += _presses(app, home, s.ui_presses - half)
            size1, t1, cpu1 = log.stat().st_size, time.monotonic(), cpu_seconds([app.pid])
            ctx.profiler.stop()
            newest1, advanced, frames = shown.newest, shown.advanced, shown.frames - frames0
        finally:
            ctx.profiler.stop()
            app.close(b"q")
        ctx.say(f"control-center: keypress -> repaint p50 {summarize(samples)['p50']:.1f} ms under the flood")
        bare = _bare_presses(ctx, "cc-bare-flood", s.ui_presses)
    finally:
        cluster.stop()
    quiet = _bare_presses(ctx, "cc-bare-quiet", max(2, s.ui_presses // 2))
    st, bs, qs = summarize(samples), summarize(bare), summarize(quiet)
    line = len(FLOOD_LINE.format(0))
    printed = (size1 - size0) / line
    rate = printed / (t1 - t0)
    early_mib, late_mib = early.peak["app"] / 2**20, late.peak["app"] / 2**20
    limit = (f"bare Textual app, same pty, during the same flood: p50 {bs['p50']:.1f} ms, p99 {bs['p99']:.1f}, "
             f"max {bs['max']:.1f} (machine quiet: p50 {qs['p50']:.1f})")
    details = {
        "lines_per_s_printed_meanwhile": rate, "lines_printed_meanwhile": printed,
        "app_cpu_pct_of_a_core": (cpu1 - cpu0) / (t1 - t0) * 100,
        "output_panel": {"frames_drawn": frames, "frames_that_showed_newer_lines": advanced,
                         "newest_line_shown_first_last": [newest0, newest1],
                         "lines_written_by_the_last_key": size1 // line},
        "limits_ms": {"bare_app_same_flood": bs, "bare_app_quiet": qs},
        "terminal": f"{UI_SIZE[0]}x{UI_SIZE[1]} pty; the app attached to a running dispatcher, observer and "
                    f"runner; {UI_ROWS + 1} commits",
    }
    title = f"a job printing {s.ui_lines_per_s:,} lines/s"
    return [
        Figure("control-center", f"control center: keypress -> repaint, p50 ({title})", "ms", st["p50"],
               "<= 100 ms", st["p50"] <= 100, spread=_ms_spread(st), limit=limit, stats=st, details=details),
        Figure("control-center", f"control center: keypress -> repaint, p99 ({title})", "ms", st["p99"],
               "<= 100 ms", st["p99"] <= 100, spread=f"max {st['max']:.1f}, n={st['n']}",
               limit=f"bare Textual app p99 {bs['p99']:.1f} ms (as above)", stats=st),
        Figure("control-center", f"control center: app RSS while {title}", "MiB", max(early_mib, late_mib),
               "bounded: the 2nd half's peak within 5% of the 1st half's", late_mib <= early_mib * 1.05,
               spread=f"{rss / 2**20:.0f} MiB at the first key; peak {early_mib:.0f} in the first half of the keys, "
                      f"{late_mib:.0f} in the second; {printed / 1e6:.1f} M lines printed meanwhile "
                      f"({rate / 1000:.0f}k lines/s)",
               limit=f"{rss / 2**20:.0f} MiB (its RSS at the first key)",
               stats={"at_first_key_mib": rss / 2**20, "peak_first_half_mib": early_mib,
                      "peak_second_half_mib": late_mib}),
    ]


def _first_frames(ctx: Context, name: str, argv: list[str], shown: Callable[[Frame], bool], starts: int,
                  what: str) -> tuple[list[float], list[float]]:
    """Seconds from starting the app on a pty to its first frame that draws anything, and to the first
    that ``shown`` accepts; ``q`` quits it after each start."""
    drawn, full = [], []
    for _ in range(starts):
        term = Terminal(ctx.procs, name, argv, UI_SIZE, env=_ui_env(ctx))
        try:
            first = term.wait(lambda f: f.plain().strip(), term.started, 60, "anything")
            done = first if shown(first) else term.wait(shown, first.at, 60, what)
        finally:
            term.close(b"q")
        drawn.append(first.at - term.started)
        full.append(done.at - term.started)
    return drawn, full


def _first_frame(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    repo = Repo(ctx.tmp / "cc-history-repo", toml("true", 30), files=10)
    history, _ = repo.fast_import(s.ui_history)
    repo.sync_worktree()
    _prefill(repo, history, 2)
    newest = f"bulk {s.ui_history - 1}"

    def populated(frame: Frame) -> bool:
        return newest in frame.plain()
    what = f"the newest of {s.ui_history} commits"
    argv = [PY, "-m", "tuici", str(repo.path)]
    warm = 0 if ctx.quick else 1  # the first start (new state, runner clones, cold caches) is a discarded warm-up
    cold_drawn, cold = _first_frames(ctx, "cc-cold", argv, populated, warm + s.ui_starts, what)
    cold_drawn, cold = cold_drawn[warm:], cold[warm:]
    leaks = _leftovers()
    cluster = _cluster(ctx, "cc-attach", repo, 0)
    try:
        attach_drawn, attach = _first_frames(ctx, "cc-attach-app", argv, populated, s.ui_starts, what)
    finally:
        cluster.stop()
    _, bare = _first_frames(ctx, "cc-bare-start", [PY, "-m", "bench._bare_app"],
                            lambda f: bare_app.READY in f.plain(), warm + s.ui_starts, "the bare app")
    bs = summarize(bare[warm:])
    imports = {"python -c pass": ctx.python_ms("pass"), "import textual.app": ctx.python_ms("import textual.app"),
               "import tuici.ui.app": ctx.python_ms("import tuici.ui.app")}
    limit = (f"bare Textual app's first frame {bs['p50']:.2f} s (python -c pass "
             f"{imports['python -c pass']['p50']:.0f} ms, "
             f"import textual.app {imports['import textual.app']['p50']:.0f} ms)")
    figures = []
    for how, full, drawn, extra in (
            ("`tuici` starting its engine", cold, cold_drawn, {"processes_left_after_quit": leaks}),
            ("`tuici` attaching to a running engine", attach, attach_drawn, {})):
        st, dr = summarize(full), summarize(drawn)
        figures.append(Figure(
            "control-center", f"control center: first frame, {s.ui_history:,} commits in history ({how})", "s",
            st["p50"], "<= 0.5 s", st["p50"] <= 0.5,
            spread=f"min {st['min']:.2f}, max {st['max']:.2f}, n={st['n']}; first frame of any kind {dr['p50']:.2f}",
            limit=limit, stats=st,
            details={"first_frame_of_any_kind_s": dr, "bare_app_first_frame_s": bs, "imports_ms": imports,
                     "terminal": f"{UI_SIZE[0]}x{UI_SIZE[1]} pty", **extra}))
    return figures


def control_center(ctx: Context) -> list[Figure]:
    """Keys answered while a job floods its output, and the first frame over a long history: the real
    `tuici` on a pty, next to a bare Textual app measured the same way in the same run."""
    return _keypress_under_flood(ctx) + _first_frame(ctx)
