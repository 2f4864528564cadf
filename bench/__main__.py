"""``python -m bench``: measure tuici end to end against the physical limits (issue 5).

Prints the results table and writes ``bench/RESULTS.md`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from . import report
from .harness import (
    Figure,
    LoadMeter,
    Procs,
    Profiler,
    RowSkipped,
    become_subreaper,
    load_text,
    machine_info,
    sweep_descendants,
    tuici_root,
    wait_quiet,
)
from .rows import GROUPS, ROWS, Context, Sizes

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    keys = ", ".join(f"{k}={v}" for k, v in asdict(Sizes()).items())
    groups = "; ".join(f"{group} = {' '.join(rows)}" for group, rows in GROUPS.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark tuici end to end (real processes, real git, real sockets) against the physical "
                    "limits measured in the same run; print the table and write bench/RESULTS.md.",
        epilog=f"rows: {', '.join(ROWS)}. groups: {groups}. sizes (defaults): {keys}",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, well under a minute")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help=f"run only these rows (or groups: {', '.join(GROUPS)}, e.g. --only buildbot)")
    parser.add_argument("--size", action="append", default=[], metavar="KEY=VALUE",
                        help="override one size (repeatable), e.g. --size files=200 --size latency_commits=20")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", metavar="PATH",
                        help="where to write the markdown results (default bench/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record py-spy profiles of the tuici processes during each row's measured phase")
    parser.add_argument("--profile-format", default="flamegraph", choices=["flamegraph", "raw", "speedscope"])
    parser.add_argument("--profile-idle", action="store_true", help="include idle (waiting) stacks in profiles")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (repositories, logs) for a post-mortem")
    args = parser.parse_args(argv)
    args.rows = list(ROWS)
    if args.only:
        names = [r.strip() for r in args.only.split(",") if r.strip()]
        unknown = [r for r in names if r not in ROWS and r not in GROUPS]
        if unknown:
            parser.error(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROWS)}; groups: {', '.join(GROUPS)}")
        args.rows = list(dict.fromkeys(row for r in names for row in GROUPS.get(r, [r])))
    args.sizes = Sizes.quick() if args.quick else Sizes()
    for item in args.size:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--size takes KEY=VALUE, not {item!r}")
        try:
            args.sizes.override(key.strip(), value.strip())
        except ValueError as exc:
            parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Every process started from here imports the tuici the bench imported, whatever its cwd.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tuici_root(), os.environ.get("PYTHONPATH")) if p)
    become_subreaper()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def say(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="tuici-bench-"))
    procs = Procs(tmp / "proclogs")
    profiler = Profiler(procs, args.profile, args.profile_format, args.profile_idle)
    if args.profile and not profiler.enabled:
        say("py-spy not found: profiles will not be recorded (pip install py-spy)")
    ctx = Context(sizes=args.sizes, tmp=tmp, procs=procs, profiler=profiler, say=say, quick=args.quick)
    machine = machine_info()
    meta = {"command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "bench_pid": os.getpid(), "tuici_path": tuici_root(), "load_start": load_text(),
            "sizes": asdict(args.sizes), "row_load": {}, "rows": args.rows}
    say(f"temp dir {tmp}; rows {', '.join(args.rows)}; load {meta['load_start']}")
    figures: list[Figure] = []
    started = time.monotonic()
    whole = LoadMeter()
    try:
        for name in args.rows:
            # One row's teardown (50 runners stopping, say) must not weigh on the next row's figures.
            quiet = wait_quiet(timeout=2.0 if args.quick else 30.0)
            say(f"{name}: start (load {load_text()}; machine quiet after {quiet:.1f} s)")
            t0 = time.monotonic()
            meter = LoadMeter()
            try:
                got = ROWS[name](ctx)
            except KeyboardInterrupt:
                raise
            except RowSkipped as exc:
                say(f"{name}: skipped: {exc}")
                got = [Figure(name, name, "", None, "-", None, note=f"skipped: {exc}")]
            except Exception as exc:
                say(f"{name}: ERROR {exc}\n{traceback.format_exc()}")
                got = [Figure(name, name, "", None, "-", None, error=f"{type(exc).__name__}: {exc}")]
            finally:
                procs.stop_all()
            meta["row_load"][name] = f"{time.monotonic() - t0:.0f} s; {meter.text()}; load average {load_text()}"
            figures.extend(got)
            for f in got:
                say(f"{name}: {f.figure}: {report.value_text(f)} [{f.verdict}]")
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    finally:
        procs.stop_all()
        sweep_descendants()
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["load_end"] = load_text()
    meta["busy"] = whole.text()
    meta["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(report.table(figures))
    if report.beside(figures):
        print("\nBuildbot beside tuici:\n")
        print(report.beside(figures))
    print(f"\n{len(figures)} figures in {meta['seconds']:.0f} s; load {meta['load_end']}")
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report.markdown(machine, meta, figures))
        print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(report.to_json(machine, meta, figures))
    return 1 if any(f.error for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
