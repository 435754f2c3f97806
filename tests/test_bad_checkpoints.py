"""Checkpoints that are not what they claim (issue 11, classes 8 and the unsafe-pickle tests): random bytes or a
Python file are "not a PyTorch checkpoint", not "holds pickled objects"; a pickle whose unpickling would run code
(here: create a file) is refused without running it."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
SHORTCUT = f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdapter"
SCRIPT = Path(sys.executable).parent / "biasaudit"


def scan(checkpoint: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "scan", str(checkpoint), "--adapter", SHORTCUT, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"import os\nprint('hello')\n", b'{"weights": [1, 2]}'],
                         ids=["random bytes", "a python file", "json"])
def test_a_file_that_is_no_checkpoint_is_called_so(content, tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(content)
    result = scan(checkpoint, tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert "is not a PyTorch checkpoint" in text and "pickled" not in text
    assert not (tmp_path / "out").exists()


class CreatesAFile:
    """Unpickling this calls pathlib.Path.touch on the marker: code run by merely loading the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save zip", "legacy pickle"])
def test_a_checkpoint_whose_unpickling_would_create_a_file_is_refused_and_the_file_never_appears(zip_format, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "model.pt"
    if zip_format:
        torch.save({"weight": torch.zeros(2), "payload": CreatesAFile(marker)}, checkpoint)
    else:
        buffer = io.BytesIO()
        pickle.dump({"payload": CreatesAFile(marker)}, buffer, protocol=2)
        checkpoint.write_bytes(buffer.getvalue())
    assert not marker.exists()
    result = scan(checkpoint, tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--trust-checkpoint" in result.stderr
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert not (tmp_path / "out").exists()
