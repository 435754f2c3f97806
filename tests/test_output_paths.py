"""Output locations are checked before any work (issue 11, class 1): an --out below a regular file, on a pseudo
filesystem, or with a name too long is one sentence and exit 2 at once, never an OSError after an hour's scan; and a
directory of earlier results is left byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from biasaudit.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
SHORTCUT = f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdapter"
EXAMPLE_AUDIT = FIXTURES / "audit_example.json"


def run(*args):
    """In-process (typer's runner): the same code as the console script without 18 torch imports."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(shortcut_checkpoint) -> Path:
    return shortcut_checkpoint


def places(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Bad output locations and the words their sentence must hold."""
    regular = tmp / "a-file.txt"
    regular.write_text("keep me")
    return {"below a file": (regular / "out", "which is a file, not a directory"),
            "pseudo filesystem": (Path("/proc/biasaudit-out"), "cannot be written"),
            "name too long": (tmp / ("x" * 300), "more than this filesystem allows")}


def commands(checkpoint: Path, target: Path) -> dict[str, list]:
    scan_args = ["--adapter", SHORTCUT, "--projection", "pca", "--bootstrap", "50"]
    return {"scan --out": ["scan", checkpoint, *scan_args, "--out", target],
            "fix --out": ["fix", checkpoint, *scan_args[:2], "--method", "ce", "--epochs", "1", "--out", target],
            "compare --out": ["compare", EXAMPLE_AUDIT, EXAMPLE_AUDIT, "--out", target],
            "report --out": ["report", EXAMPLE_AUDIT, "--out", target],
            "gate --junit": ["gate", EXAMPLE_AUDIT, "--max-gap", "missing=90", "--junit", target],
            "demo --out": ["demo", "--out", target]}


@pytest.mark.parametrize("place", ["below a file", "pseudo filesystem", "name too long"])
@pytest.mark.parametrize("command", ["scan --out", "fix --out", "compare --out", "report --out", "gate --junit", "demo --out"])
def test_a_bad_output_location_is_one_sentence_and_exit_2_before_any_work(command, place, checkpoint, tmp_path):
    target, words = places(tmp_path)[place]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(*commands(checkpoint, target)[command])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and words in " ".join(result.stderr.split())
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 3  # one sentence, wrapped at most
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "a-file.txt").read_text() == "keep me"
