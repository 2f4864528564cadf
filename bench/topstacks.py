"""Summarize py-spy ``--format raw`` (collapsed stacks) files: where the samples go.

    python -m bench --only log-throughput --profile /tmp/prof --profile-format raw
    python -m bench.topstacks /tmp/prof/log-throughput-dispatcher.txt [--top 25] [--match tuici]

Prints, per function, the share of samples in which it is on the stack (inclusive) and on
top of it (self), and the heaviest whole stacks.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([_short(f) for f in stack.split(";")], int(count)))
    return stacks


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.topstacks")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--match", default="", help="only count functions whose text contains this")
    ap.add_argument("--stacks", type=int, default=8, help="heaviest whole stacks to show")
    args = ap.parse_args()
    for path in args.files:
        stacks = load(path)
        total = sum(c for _, c in stacks) or 1
        incl, self_ = Counter(), Counter()
        for frames, count in stacks:
            for f in set(frames):
                incl[f] += count
            self_[frames[-1]] += count
        print(f"== {path} ({total} samples)")
        print(f"{'incl%':>6} {'self%':>6}  function")
        for func, n in incl.most_common():
            if args.match and args.match not in func:
                continue
            print(f"{100 * n / total:6.1f} {100 * self_[func] / total:6.1f}  {func}")
            args.top -= 1
            if args.top <= 0:
                break
        print("-- heaviest stacks")
        merged = Counter()
        for frames, count in stacks:
            merged[" > ".join(frames[-6:])] += count
        for stack, n in merged.most_common(args.stacks):
            print(f"{100 * n / total:6.1f}%  {stack}")
        print()


if __name__ == "__main__":
    main()
