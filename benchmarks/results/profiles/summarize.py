"""Summarise a ``py-spy record -f raw`` file: samples per thread, and the
frames that hold the most samples (inclusive), for the event loop thread and
for the worker threads.

    python benchmarks/results/profiles/summarize.py FILE [--top 40] [--thread NAME]
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--thread", default=None, help="substring of the thread frame")
    parser.add_argument("--leaf", action="store_true", help="self time instead of inclusive")
    args = parser.parse_args()
    threads: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    total = 0
    with open(args.file) as lines:
        rows = list(lines)
    for line in rows:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        n = int(count)
        parts = stack.split(";")
        thread = parts[0]
        threads[thread] += n
        if args.thread is not None and args.thread not in thread:
            continue
        total += n
        if args.leaf:
            frames[parts[-1]] += n
        else:
            for frame in set(parts[1:]):
                frames[frame] += n
    for thread, n in threads.most_common():
        print(f"{n:7} {thread}")
    print(f"--- {total} samples" + (f" in {args.thread}" if args.thread else ""))
    for frame, n in frames.most_common(args.top):
        print(f"{n:7} {100 * n / max(total, 1):5.1f}% {frame}")


if __name__ == "__main__":
    main()
