"""``dockerconnect export`` (export_main): exit codes, progress on a terminal and in a log."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from _layouts import check_layout, write_layout

from dockerconnect.layout import REF_NAME, export_main
from dockerconnect.testing import random_image, random_index

SRC = Path(__file__).resolve().parents[2] / "src"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_export_from_a_layout_with_a_bar(tmp_path: Path) -> None:
    index = random_index(seed=1, layer_size=30_000)
    source = write_layout(tmp_path / "carried", {"multi": index})
    err = Terminal()
    status = export_main(
        ["--layout", str(source), "-o", str(tmp_path / "out"), "app", "multi"], stderr=err
    )
    assert status == 0, err.getvalue()
    layout = check_layout(tmp_path / "out")
    assert layout["manifests"][0]["annotations"][REF_NAME] == "multi"
    assert layout["manifests"][0]["digest"] == str(index.manifest.digest)
    text = err.getvalue()
    assert "\r[" in text
    assert "100%" in text
    assert f"{len(index.blobs)}/{len(index.blobs)} blobs" in text
    assert f"{len(index.blobs)} copied, 0 linked, 0 already there" in text


def test_progress_in_a_log_is_one_line_per_blob(tmp_path: Path) -> None:
    image = random_image(seed=2, layers=3)
    source = write_layout(tmp_path / "carried", {"v1": image})
    err = io.StringIO()
    argv = ["--layout", str(source), "--output", str(tmp_path / "out"), "app", "v1"]
    assert export_main(argv, stderr=err) == 0
    lines = err.getvalue().splitlines()
    assert len(lines) == len(image.blobs) + 1
    assert all(line.endswith("copied") for line in lines[:-1])
    assert "\r" not in err.getvalue()
    # Run again: a resume with nothing left to do.
    err = io.StringIO()
    assert export_main([*argv, "--quiet"], stderr=err) == 0
    assert err.getvalue() == ""


def test_errors_are_one_line(tmp_path: Path) -> None:
    source = write_layout(tmp_path / "carried", {"v1": random_image(seed=3)})
    err = io.StringIO()
    argv = ["--layout", str(source), "--output", str(tmp_path / "out"), "app", "nope"]
    assert export_main(argv, stderr=err) == 1
    (line,) = err.getvalue().strip().splitlines()
    assert line.startswith("dockerconnect export: error:")
    assert "nope" in line
    err = io.StringIO()
    assert export_main(["--output", str(tmp_path / "o"), "app", "v1"], stderr=err) == 2
    assert "give --store, --upstream or --layout" in err.getvalue()


def test_python_dash_m(tmp_path: Path) -> None:
    source = write_layout(tmp_path / "carried", {"v1": random_image(seed=4)})
    args = ["--layout", str(source), "--output", str(tmp_path / "out"), "app", "v1"]
    done = subprocess.run(
        [sys.executable, "-m", "dockerconnect.layout", "export", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    check_layout(tmp_path / "out")
