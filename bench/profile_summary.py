"""Summarise a py-spy or Java Flight Recorder profile: where a process's CPU goes, by function, inclusive and self.

Usage:
    py-spy record --pid PID --duration 20 --rate 200 --format raw --output FILE --nonblocking
    jcmd PID JFR.start duration=20s settings=profile filename=FILE.jfr     # a JVM (Spark's driver, Kafka, ...)
    python -m bench.profile_summary FILE [--top 25]

py-spy's raw format is one line per distinct stack, `frame;frame;...;frame COUNT`, each frame
`function (file:line)`; idle samples are left out unless py-spy was given --idle. A `.jfr` recording is read with
the JDK's `jfr print` (its execution samples: threads running Java code); each stack is put under its thread's
name, numbers replaced by N, so that the shares are also by kind of thread. A function's inclusive share is the
part of the samples whose stack holds it (its callees included); its self share, the part where it is the
innermost frame. Frames are told apart by function and file, not line.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
JFR_THREAD = re.compile(r'^\s*sampledThread = "(?P<name>.*)" \(javaThreadId')
JFR_FRAME = re.compile(r"^\s{4}(?P<frame>\S.*?)(?:\s+line: \d+)?(?:\s+bci: \d+)?$")


def frame_name(frame: str) -> str:
    """`function (file:line)` -> `function (file)`: one name per function, whatever the line."""
    match = FRAME.match(frame.strip())
    return f"{match['function']} ({match['file']})" if match else frame.strip()


def read_profile(path: Path) -> list[tuple[list[str], int]]:
    """The stacks of a raw py-spy profile (or a .jfr recording) with their sample counts (lines that are not stacks
    are skipped)."""
    if path.suffix == ".jfr":
        return jfr_stacks(jfr_print(path))
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append(([frame_name(frame) for frame in stack.split(";")], int(count)))
    return stacks


def jfr_print(path: Path) -> str:
    """`jfr print` of the recording's execution samples (the `jfr` of the JDK on PATH)."""
    jfr = shutil.which("jfr")
    if not jfr:
        raise SystemExit("error: no `jfr` on PATH: install a JDK (apt-get install openjdk-17-jdk-headless)")
    return subprocess.run([jfr, "print", "--events", "jdk.ExecutionSample", "--stack-depth", "128", str(path)],
                          check=True, capture_output=True, text=True).stdout


def jfr_stacks(text: str) -> list[tuple[list[str], int]]:
    """`jfr print` execution samples -> stacks, root first, under `thread <name>` (one sample each)."""
    stacks, thread, frames, in_stack = [], "?", [], False
    for line in text.splitlines():
        if match := JFR_THREAD.match(line):
            thread = re.sub(r"\d+", "N", match["name"])
        elif line.strip() == "stackTrace = [":
            frames, in_stack = [], True
        elif in_stack and line.strip() == "]":
            stacks.append(([f"thread {thread}", *reversed(frames)], 1))
            in_stack = False
        elif in_stack and (match := JFR_FRAME.match(line)) and match["frame"] != "...":
            frames.append(match["frame"])
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
