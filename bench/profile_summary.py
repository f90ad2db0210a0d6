"""Summarise a py-spy profile: where a process's CPU goes, by function, inclusive and self.

Usage:
    py-spy record --pid PID --duration 20 --rate 200 --format raw --output FILE --nonblocking
    python -m bench.profile_summary FILE [--top 25]

py-spy's raw format is one line per distinct stack, `frame;frame;...;frame COUNT`, each frame
`function (file:line)`; idle samples are left out unless py-spy was given --idle. A function's inclusive share is
the part of the samples whose stack holds it (its callees included); its self share, the part where it is the
innermost frame. Frames are told apart by function and file, not line.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`function (file:line)` -> `function (file)`: one name per function, whatever the line."""
    match = FRAME.match(frame.strip())
    return f"{match['function']} ({match['file']})" if match else frame.strip()


def read_profile(path: Path) -> list[tuple[list[str], int]]:
    """The stacks of a raw py-spy profile with their sample counts (lines that are not stacks are skipped)."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append(([frame_name(frame) for frame in stack.split(";")], int(count)))
    return stacks


def shares(stacks: list[tuple[list[str], int]]) -> tuple[int, Counter, Counter]:
    """(samples, inclusive samples by function, self samples by function)."""
    total, inclusive, own = 0, Counter(), Counter()
    for frames, count in stacks:
        total += count
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    return total, inclusive, own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="a py-spy profile recorded with --format raw")
    parser.add_argument("--top", type=int, default=25,
                        help="functions to list in each table, most samples first, ties by name (default 25)")
    args = parser.parse_args(argv)
    if not args.profile.is_file():
        parser.error(f"argument profile: no such file: {args.profile}")
    total, inclusive, own = shares(read_profile(args.profile))
    if not total:
        print(f"{args.profile}: no samples (was it recorded with --format raw?)", file=sys.stderr)
        return 1
    print(f"{args.profile}: {total:,} samples")
    for title, counts in (("inclusive (with callees)", inclusive), ("self", own)):
        print(f"\n{title}:")
        for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:args.top]:
            print(f"  {count / total:>6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
