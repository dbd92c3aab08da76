"""Run the whole benchmark suite: every ``bench_*.py`` here, one after another.

    python benchmarks/run.py            # full runs; tables printed, results in benchmarks/results/
    python benchmarks/run.py --quick    # tiny sizes, results in a temporary directory (CI)
    python benchmarks/run.py resolver   # only bench_resolver.py

Each benchmark is its own process, so one's memory and threads never colour
another's figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description="run the dockerconnect benchmarks")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.names]
    failed = []
    for script in scripts:
        command = [sys.executable, str(script)]
        if args.quick:
            command += ["--quick", "--output", tempfile.mkdtemp(prefix=f"{script.stem}-")]
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(command, cwd=HERE.parent, check=False)
        print(f"== {script.name}: exit {result.returncode} in {time.perf_counter() - start:.1f}s")
        if result.returncode:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
