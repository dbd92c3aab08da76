"""The size limits the code keeps (issue 10): no class over 400 lines, no
function over 60, measured by ``scripts/sizes.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_class_or_function_over_the_limits() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sizes.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "over the limits" in done.stdout
