"""The longest classes and functions under src/, measured with ast.

Run from the repository root::

    python scripts/sizes.py               # everything over the limits, then the top 10
    python scripts/sizes.py --top 20

A class's size is its line count (decorators to last line); a function's the
same, nested functions included in their parent. Limits: 400 lines for a
class, 60 for a function (issue 10). Exit status 1 when anything is over.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

CLASS_LIMIT = 400
FUNCTION_LIMIT = 60


def measure(root: Path) -> list[tuple[int, str, str]]:
    """``(lines, kind, where)`` for every class and function under ``root``."""
    out: list[tuple[int, str, str]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                assert node.end_lineno is not None
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                out.append((node.end_lineno - first + 1, kind, f"{path}:{node.lineno} {node.name}"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default="src", help="directory to measure")
    parser.add_argument("--top", type=int, default=10, help="longest of each kind to list")
    args = parser.parse_args()
    sizes = measure(Path(args.root))
    limits = {"class": CLASS_LIMIT, "function": FUNCTION_LIMIT}
    over = [s for s in sizes if s[0] > limits[s[1]]]
    print(f"over the limits (class > {CLASS_LIMIT}, function > {FUNCTION_LIMIT} lines):")
    for lines, kind, where in sorted(over, reverse=True):
        print(f"  {lines:5d}  {kind:8s}  {where}")
    if not over:
        print("  none")
    for kind in ("class", "function"):
        print(f"longest {kind}es:" if kind == "class" else f"longest {kind}s:")
        for lines, _, where in sorted((s for s in sizes if s[1] == kind), reverse=True)[: args.top]:
            print(f"  {lines:5d}  {where}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
