"""Claim: the documentation cannot drift from the code.

Every ```python block in README.md and docs/*.md runs, and every "real output" block (a fenced
block whose first line is ``$ command``) is compared with what the command really prints.

How a file runs
    Its blocks run in document order in one namespace, with a fresh temporary directory as
    the working directory (so a block can write ``seq2seq.pt`` and a later ``$ handlstm check
    seq2seq.pt`` reads it). Strict by default: an exception fails the test and names the
    block's line.

Markers (HTML comments, invisible on GitHub and in the built docs), on the lines before a fence:
    ``<!-- skip-test: reason -->``  the block is not run; the reason is required and printed.
    ``<!-- test-setup ... -->``      hidden Python run first, in the same namespace (for a
                                     block that uses a user's own model or class).
    ``<!-- test-slow -->``           a command block that takes long: compared in the slow run.
    ``<!-- test-needs: opacus -->``  run only where these modules import (an optional extra);
                                     elsewhere the block is skipped, as the extra's tests are.

Fixtures (the ``FIXTURES`` table below)
    Names a file's blocks use without defining (``model``, ``MyLSTM``), per file. A fixture's
    code runs only when a block's statement reads one of its names before anything defined
    it, right before that statement. A name that is neither defined nor a fixture still fails.
    Prefer a ``test-setup`` marker in the document itself; the table is for files whose text
    the tests cannot touch.

Output comparison (the normalisation rule)
    The command runs in bash in the file's directory, with ``handlstm`` meaning
    ``python -m handlstm`` and ``python`` this interpreter, stdout and stderr together,
    ``COLUMNS=80``. Both texts are then normalised line by line: every decimal number with a
    fraction or an exponent (``1.11e-16``, ``3.4``, ``0.0037``) becomes ``<num>``, every run of
    3 or more dashes becomes ``---``, runs of spaces become one and lines are stripped. An
    expected line ``...`` matches any number of lines. A last expected line ``exit code N``
    is compared with the exit status instead. Integers, words and layout must match exactly.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[\w+-]*)[^\n]*$")
MARKER = re.compile(
    r"<!--\s*(?P<kind>skip-test|test-setup|test-slow|test-needs)\b(?P<body>.*?)-->", re.S
)


@dataclass
class Block:
    """One fenced block of a document."""

    path: Path
    line: int  # 1-based line of the opening fence
    info: str  # the fence's language ("python", "", "bash", ...)
    text: str
    skip: str | None = None  # the skip-test reason
    setup: list[str] = field(default_factory=list)
    slow: bool = False

    @property
    def where(self) -> str:
        return f"{document_name(self.path)}:{self.line}"

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    @property
    def is_python(self) -> bool:
        return self.info in ("python", "py", "python3")

    @property
    def is_output(self) -> bool:
        first = next((line for line in self.text.splitlines() if line.strip()), "")
        return self.info in ("", "console", "text", "shell-session") and first.startswith("$ ")


def document_name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with the markers written before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    prose_start, i = 0, 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence[:3]):
            end += 1
        body = textwrap.dedent("\n".join(line[indent:] for line in lines[i + 1 : end]))
        block = Block(path, i + 1, match["info"].lower(), body)
        for marker in markers_before(lines, prose_start, i):
            kind, text = marker
            if kind == "skip-test":
                reason = text.lstrip(":").strip()
                if not reason:
                    raise ValueError(f"{block.where}: skip-test needs a reason")
                block.skip = reason
            elif kind == "test-setup":
                block.setup.append(textwrap.dedent(text.lstrip(":\n")))
            elif kind == "test-needs":
                names = text.lstrip(":").split()
                missing = [m for m in names if importlib.util.find_spec(m) is None]
                if missing:
                    block.skip = f"needs {', '.join(missing)} (an optional extra)"
            else:
                block.slow = True
        block.slow = block.slow or (document_name(path), block.first_line) in SLOW
        found.append(block)
        i = prose_start = end + 1
    return found


def markers_before(lines: list[str], start: int, fence: int) -> Iterator[tuple[str, str]]:
    """Markers in the text between the previous block and this fence, that end right before it
    (only blank lines or other markers in between)."""
    text = "\n".join(lines[start:fence])
    matches = list(MARKER.finditer(text))
    tail = text
    for match in reversed(matches):
        if tail[match.end() :].strip():
            break
        tail = tail[: match.start()]
        yield match["kind"], match["body"]


# -- fixtures: names documents use without defining them -------------------------------------

SEQ2SEQ = """
import torch
from torch import nn

class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.encoder = nn.LSTM(32, 64, num_layers=2, bidirectional=True, proj_size=16)
        self.decoder = nn.LSTM(32, 48, batch_first=True)
        self.out = nn.Linear(48, 100)

torch.manual_seed(0)
_model = Seq2Seq()
torch.save({"epoch": 12, "model_state_dict": _model.state_dict(),
            "optimizer_state_dict": torch.optim.Adam(_model.parameters()).state_dict()},
           "seq2seq.pt")
"""

# The files docs/cli.md's error examples read: a text file, a pickle of a __main__ object (the
# class is put on __main__ for the pickler while saving) and a checkpoint without an LSTM.
CLI_FILES = """
import sys, torch
with open("notes.txt", "w") as f:
    f.write("notes: resume training from epoch 12\\n")
torch.save(torch.nn.Linear(3, 4).state_dict(), "linear.pt")

class Config:
    lr = 0.1

Config.__module__ = "__main__"
setattr(sys.modules["__main__"], "Config", Config)
try:
    torch.save({"config": Config(), "state_dict": {}}, "pickled.pt")
finally:
    delattr(sys.modules["__main__"], "Config")
"""

MY_LSTM = """
from handlstm import HandLSTM as MyLSTM  # stands for the reader's own LSTM class
"""


@dataclass(frozen=True)
class Fixture:
    names: tuple[str, ...]  # what the code defines
    code: str


FIXTURES: dict[str, list[Fixture]] = {
    "README.md": [
        Fixture(("model",), "model = torch.nn.Sequential(torch.nn.LSTM(4, 8))"),
        Fixture(("MyLSTM",), MY_LSTM),
        Fixture(("torch_lstm",), "torch_lstm = torch.nn.LSTM(32, 64, num_layers=2)"),
    ],
    "docs/cli.md": [
        Fixture(
            ("model", "optimizer"),
            "torch.manual_seed(0)\nfrom torch import nn\nmodel = Seq2Seq()\n"
            "optimizer = torch.optim.Adam(model.parameters())",
        ),
        Fixture(("nn",), "from torch import nn"),
        Fixture(("torch",), "import torch"),
    ],
    "docs/works_with.md": [
        Fixture(("torch",), "import torch"),
        Fixture(
            ("lstm", "D", "num_layers", "N", "H_out", "H_cell", "x"),
            "from handlstm import HandLSTM\nlstm = HandLSTM(3, 5, num_layers=2)\n"
            "D, num_layers, N, H_out, H_cell = 1, 2, 2, 5, 5\nx = torch.randn(4, N, 3)",
        ),
    ],
}
#: Blocks that take long (a full sweep, a training run, torch.compile) run only with -m slow:
#: (document, the block's first line). A ``<!-- test-slow -->`` marker does the same.
SLOW: set[tuple[str, str]] = {
    ("docs/cli.md", "$ handlstm check"),
    ("docs/variants.md", "$ python examples/variants_train.py"),
    (
        "docs/works_with.md",
        "step = torch.compile(lstm, fullgraph=True)           # lstm: HandLSTM, unidirectional",
    ),
}
#: Known drift in documents this branch does not own, fixed by their owner: (document,
#: command) -> who fixes it. Strict: an entry whose command matches again fails, to be removed.
PENDING: dict[tuple[str, str], str] = {}
#: Files the shell blocks of a document read, written before its first block runs.
FILES: dict[str, str] = {"README.md": SEQ2SEQ, "docs/cli.md": SEQ2SEQ + CLI_FILES}


def free_names(statement: ast.stmt, namespace: dict[str, object]) -> set[str]:
    """Names ``statement`` reads that neither ``namespace`` nor builtins define, nor the
    statement itself binds."""
    loaded, bound = set(), set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                bound.update(a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg))
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.comprehension | ast.Lambda):
            pass
    builtins = set(dir(__builtins__)) if not isinstance(__builtins__, dict) else set(__builtins__)
    return loaded - bound - set(namespace) - builtins


def run_source(
    text: str, filename: str, namespace: dict[str, object], fixtures: list[Fixture]
) -> None:
    """Execute ``text`` statement by statement; before a statement that reads a name nothing
    defined yet, run the fixture that provides it (fixtures may use other fixtures)."""
    tree = ast.parse(text, filename=filename)
    for statement in tree.body:
        missing = free_names(statement, namespace)
        for fixture in fixtures:
            if missing & set(fixture.names):
                others = [f for f in fixtures if f is not fixture]
                run_source(fixture.code, f"fixture for {filename}", namespace, others)
                missing -= set(namespace)
        module = ast.Module(body=[statement], type_ignores=[])
        exec(compile(module, filename, "exec"), namespace)


def run_python(block: Block, namespace: dict[str, object], fixtures: list[Fixture]) -> None:
    for setup in block.setup:
        run_source(setup, f"{block.where} (test-setup)", namespace, fixtures)
    run_source(block.text, block.where, namespace, fixtures)
    # A snippet that defines a hypothesis test (``def test_mine(case)``) has that test run.
    for name in [n for n in namespace if n.startswith("test_")]:
        test = namespace.pop(name)
        if callable(test) and hasattr(test, "hypothesis"):
            test()


NUMBER = re.compile(r"[-+]?(?:\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)")


def normalise(line: str) -> str:
    line = NUMBER.sub("<num>", line)
    line = re.sub(r"-{3,}", "---", line)
    return " ".join(line.split())


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line after :func:`normalise`; an expected ``...`` matches any lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` for each ``$ `` line of an output block."""
    found: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            found.append((line[2:], []))
        elif found:
            found[-1][1].append(line)
    return found


def shims(directory: Path) -> Path:
    """A bin directory where ``handlstm`` and ``python`` run this interpreter."""
    bin_dir = directory / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for name, target in (("handlstm", "-m handlstm "), ("python", "")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" {target}"$@"\n')
        script.chmod(0o755)
    return bin_dir


SIMPLE_HANDLSTM = re.compile(r"handlstm(?: [\w.=/ -]*)?")


def run_command(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``command`` in bash; a plain ``handlstm ...`` (no pipe, quote or redirection) runs as
    ``handlstm.cli.main(argv)`` in this process instead, with stdout and stderr captured
    together: the same code and output, without a second torch import per command. In
    ``handlstm ... | rest`` the first part runs so and its output is piped into ``rest``."""
    head, bar, rest = command.partition(" | ")
    if bar and SIMPLE_HANDLSTM.fullmatch(head):  # `handlstm ... | python -c ...`: feed it
        first = run_command(head, cwd, env)
        return in_bash(rest, cwd, env, first.stdout)
    if SIMPLE_HANDLSTM.fullmatch(command):
        import contextlib
        import io

        from handlstm.cli import main

        out = io.StringIO()
        columns = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = env["COLUMNS"]  # argparse's help width
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                status = main(command.split()[1:])
        except SystemExit as exit:  # argparse's usage errors and --help
            status = exit.code if isinstance(exit.code, int) else 1
        finally:
            if columns is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = columns
        return subprocess.CompletedProcess(command, status, out.getvalue())
    return in_bash(command, cwd, env)


def in_bash(
    command: str, cwd: Path, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess:
    """``bash -c command`` with stdout and stderr captured together."""
    return subprocess.run(
        ["bash", "-c", command],
        input=stdin,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )


def run_output_block(block: Block, cwd: Path) -> list[str]:
    """Run each command of ``block``; return a description of every mismatch."""
    problems = []
    env = dict(os.environ)
    env["PATH"] = f"{shims(cwd)}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "80"
    for command, expected_lines in commands(block):
        expected_status = None
        while expected_lines and not expected_lines[-1].strip():
            expected_lines.pop()
        if expected_lines and re.fullmatch(r"exit code \d+", expected_lines[-1].strip()):
            expected_status = int(expected_lines.pop().split()[-1])
        result = run_command(command, cwd, env)
        actual = [normalise(line) for line in result.stdout.rstrip("\n").splitlines()]
        expected = [normalise(line) for line in expected_lines]
        pending = PENDING.get((document_name(block.path), command))
        if pending is not None:
            if matches(expected, actual) and result.returncode == (expected_status or 0):
                problems.append(
                    f"{block.where}: `{command}` matches its document now: remove its PENDING "
                    f"entry ({pending})"
                )
            continue
        if expected_status is not None and result.returncode != expected_status:
            problems.append(
                f"{block.where}: `{command}` exited {result.returncode}, the document says "
                f"{expected_status}; output:\n{result.stdout}"
            )
        elif not matches(expected, actual):
            problems.append(
                f"{block.where}: `{command}` printed something else than the document.\n"
                + "\n".join(_diff(expected, actual))
            )
    return problems


def _diff(expected: list[str], actual: list[str]) -> list[str]:
    import difflib

    return list(difflib.unified_diff(expected, actual, "document", "real", lineterm="", n=1))


def run_document(path: Path, tmp_path: Path, slow: bool) -> tuple[list[str], int]:
    """Run ``path``'s blocks (with ``slow``, the slow ones too); return the problems and how
    many output blocks were compared."""
    name = document_name(path)
    for entry in ROOT.iterdir():  # examples/, benchmarks/, ... as seen from the repo root
        if not entry.name.startswith(".") and not (tmp_path / entry.name).exists():
            (tmp_path / entry.name).symlink_to(entry)
    fixtures = FIXTURES.get(name, [])
    namespace: dict[str, object] = {"__name__": f"docs:{name}"}
    problems: list[str] = []
    compared = 0
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        if name in FILES:
            exec(compile(FILES[name], f"files for {name}", "exec"), {"__name__": "files"})
        for block in blocks(path):
            if block.skip is not None or (block.slow and not slow):
                continue
            if block.is_python:
                try:
                    run_python(block, namespace, fixtures)
                except Exception as error:  # noqa: BLE001 - reported with the block's line
                    problems.append(f"{block.where}: {type(error).__name__}: {error}")
            elif block.is_output:
                problems += run_output_block(block, tmp_path)
                compared += 1
    finally:
        os.chdir(cwd)
    return problems, compared


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_document_blocks_run_and_outputs_match(path: Path, tmp_path: Path) -> None:
    problems, _ = run_document(path, tmp_path, slow=False)
    assert not problems, "\n\n".join(problems)


SLOW_DOCUMENTS = [p for p in DOCUMENTS if any(b.slow for b in blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("path", SLOW_DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_slow_document_outputs_match(path: Path, tmp_path: Path) -> None:
    problems, _ = run_document(path, tmp_path, slow=True)
    assert not problems, "\n\n".join(problems)


# -- the runner itself ------------------------------------------------------------------------


def test_runner_reads_markers_and_catches_drift(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        textwrap.dedent(
            """\
            <!-- skip-test: needs a GPU -->
            ```python
            raise RuntimeError("must not run")
            ```
            <!-- test-setup
            value = 41
            -->
            ```python
            value += 1
            ```
            ```
            $ python -c "print(1.5, 'x'); raise SystemExit(3)"
            2.25 x
            exit code 3
            ```
            """
        )
    )
    found = blocks(doc)
    assert [b.skip for b in found] == ["needs a GPU", None, None]
    assert found[1].setup == ["value = 41\n"] and found[2].is_output
    namespace: dict[str, object] = {}
    run_python(found[1], namespace, [])
    assert namespace["value"] == 42
    assert run_output_block(found[2], tmp_path) == []  # numbers normalised, status compared
    found[2].text = found[2].text.replace("2.25 x", "2.25 y")
    assert run_output_block(found[2], tmp_path), "a changed word must be caught"
    found[2].text = found[2].text.replace("exit code 3", "exit code 0")
    assert "exited 3" in run_output_block(found[2], tmp_path)[0]
    with pytest.raises(NameError):
        run_python(Block(doc, 1, "python", "print(undefined_name)"), {}, [])
    fixture = Fixture(("later",), "later = 5")
    namespace = {}
    run_python(Block(doc, 1, "python", "a = 1\nb = later + a"), namespace, [fixture])
    assert namespace["b"] == 6


def test_matches_ellipsis_and_layout() -> None:
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert not matches(["a", "d"], ["a", "b", "d"])
    assert normalise("x  1.11e-16   --------  pass") == normalise(
        "x 2.00e+00 -- pass".replace("--", "-----")
    )
    assert normalise("72 checks") != normalise("71 checks")


def test_test_needs_skips_only_where_a_module_is_missing(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- test-needs: os -->\n```python\nx = 1\n```\n\n"
        "<!-- test-needs: os no_such_module_handlstm -->\n```python\nraise RuntimeError\n```\n"
    )
    found = blocks(doc)
    assert found[0].skip is None
    assert found[1].skip == "needs no_such_module_handlstm (an optional extra)"
