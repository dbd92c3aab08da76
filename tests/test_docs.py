"""The documentation is tested: its Python runs, and the site builds strictly.

Every fenced ```python block in ``docs/**/*.md`` and ``README.md`` is a test
of its own. A block runs as a script in a fresh namespace (``__name__ ==
"__main__"``, from the repository root), once on asyncio and once on
trio: ``anyio.run`` is pointed at the backend under test. A block whose top
level uses ``await`` is run as the body of a coroutine through ``anyio.run``.

An HTML comment on the line just before a block's opening fence changes
what happens to it:

- ``<!-- skip: REASON -->``: not run. Only for code that needs the network, a
  server, or a package that is a placeholder for the reader's own code; the
  reason is shown in the test report.
- ``<!-- file: NAME.py -->``: the block is also saved as ``NAME.py`` for the
  blocks after it on the same page, which may import it (the directory it is
  saved in is on ``sys.path``). It is still run, as a check that it imports.
- ``<!-- pytest -->``: the block is a test module. It is saved beside the
  page's ``file:`` blocks and collected by pytest in a subprocess, on its own
  (the page's ``conftest.py`` block, if any, applies): every test must pass.

``mkdocs build --strict`` is run into a temporary directory; without mkdocs
the test is skipped with the reason, except under CI (``CI=true``), where it
fails.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*(?P<kind>skip|file|pytest)\s*(?::\s*(?P<arg>.*?))?\s*-->\s*$")


@attrs.frozen
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    directive: str | None = None  # "skip", "file" or "pytest"
    argument: str = ""

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks(page: Path) -> Iterator[Block]:
    """Every fenced ``python`` block of ``page``, with the directive before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, indent = match["fence"], match["indent"]
        words = match["info"].strip().split()
        language = words[0].lstrip("{.").rstrip("}") if words else ""
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence) and set(lines[i].strip()) == {fence[0]}
        ):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        if language not in ("python", "py"):
            continue
        directive = argument = None
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (found := _DIRECTIVE.match(lines[j])) is not None:
            directive, argument = found["kind"], (found["arg"] or "").strip()
        yield Block(page, start + 1, "\n".join(body) + "\n", directive, argument or "")


BLOCKS = [block for page in PAGES for block in python_blocks(page)]
RUNNABLE = [b for b in BLOCKS if b.directive in (None, "file")]
PYTEST = [b for b in BLOCKS if b.directive == "pytest"]
SKIPPED = [b for b in BLOCKS if b.directive == "skip"]


def _files_before(block: Block) -> list[Block]:
    return [
        b for b in BLOCKS if b.page == block.page and b.directive == "file" and b.line < block.line
    ]


def _save_files(block: Block, directory: Path) -> None:
    for saved in _files_before(block):
        name = saved.argument
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.py", name), f"{saved.id}: bad file name"
        (directory / name).write_text(saved.code, encoding="utf-8")


def _run_block(block: Block, backend: str) -> None:
    tree = compile(
        block.code,
        block.id,
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST,
        dont_inherit=True,
    )
    code = compile(tree, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": block.id}
    if code.co_flags & 0x80:  # CO_COROUTINE: the block awaits at top level
        anyio.run(functools.partial(eval, code, namespace), backend=backend)
    else:
        exec(code, namespace)


@pytest.fixture
def block_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory for the page's ``file:`` blocks, on ``sys.path``.

    Blocks run from the repository root, as a reader who cloned it would run
    them (``examples/`` is importable that way); ``sys.path`` and the modules
    a block imported from the temporary directory or ``examples/`` are
    restored afterwards.
    """
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    before = set(sys.modules)
    yield tmp_path
    local = (str(tmp_path), str(ROOT / "examples"))
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        if module is not None and str(getattr(module, "__file__", "")).startswith(local):
            del sys.modules[name]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_code_block_runs(
    block: Block, backend: str, block_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save_files(block, block_dir)
    real_run = anyio.run

    def run(func: Any, *args: Any, backend: str = backend, **kwargs: Any) -> Any:
        return real_run(func, *args, backend=backend, **kwargs)

    monkeypatch.setattr(anyio, "run", run)
    _run_block(block, backend)


@pytest.mark.parametrize("block", PYTEST, ids=[b.id for b in PYTEST])
def test_pytest_block_passes(block: Block, tmp_path: Path) -> None:
    _save_files(block, tmp_path)
    test_file = tmp_path / f"test_block_{block.line}.py"
    test_file.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)])}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
    result = subprocess.run(
        [*command, "--rootdir", str(tmp_path), str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"{block.id}\n{result.stdout}\n{result.stderr}"
    assert " passed" in result.stdout, result.stdout


@pytest.mark.parametrize("block", SKIPPED, ids=[b.id for b in SKIPPED])
def test_skipped_block_compiles(block: Block) -> None:
    """A block that is not run still has a reason, and is valid Python."""
    assert block.argument, f"{block.id}: <!-- skip: --> needs a reason"
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    pytest.skip(f"{block.id} compiled, not run: {block.argument}")


def test_every_block_is_seen() -> None:
    """The extractor finds blocks, and few are skipped."""
    assert len(RUNNABLE) >= 10
    assert len(SKIPPED) <= 5, [b.id for b in SKIPPED]


def test_reference_covers_every_public_name() -> None:
    """Each name in the public ``__all__`` lists has a ``:::`` directive."""
    import dockerconnect
    import dockerconnect.errors
    import dockerconnect.http
    import dockerconnect.testing

    directives = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        directives.update(re.findall(r"^:::\s*(\S+)", page.read_text(), flags=re.M))
    missing = []
    for module in (dockerconnect, dockerconnect.http, dockerconnect.testing, dockerconnect.errors):
        for name in module.__all__:
            qualified = f"{module.__name__}.{name}"
            # The errors page renders the whole module, members included.
            in_errors = module is dockerconnect.errors or name in ("errors", "DockerConnectError")
            if qualified in directives or (in_errors and "dockerconnect.errors" in directives):
                continue
            missing.append(qualified)
    assert not missing


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        message = "mkdocs is not installed: pip install -e '.[docs]' to build the site"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(f"!!! DOCS BUILD NOT CHECKED: {message}")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()
    reference = tmp_path / "site" / "reference"
    pages = {page: page.read_text() for page in reference.rglob("*.html")}
    assert len(pages) >= 8
    # The API reference renders docstrings' reST roles as links or code, never literally.
    roles = re.compile(r":(?:class|meth|func|attr|exc|data|const|obj|mod):(?:`|<code>)")
    literal = {str(p.relative_to(reference)): roles.findall(html) for p, html in pages.items()}
    assert not any(literal.values()), literal
    stores = pages[reference / "stores" / "index.html"]
    # A role naming a documented object links to it ...
    assert 'href="../protocols/#dockerconnect.BlobStore"' in stores
    # ... and attributes a method merely assigns (self.name = name) are not listed.
    assert 'id="dockerconnect.MemoryBlobStore.name"' not in stores
    assert 'id="dockerconnect.FilesystemBlobStore.root"' in stores  # a documented property
