"""Files a command reads, checked with one sentence each: a path that does not exist and a directory given where a
file is expected are different mistakes, and the message says which."""

from __future__ import annotations

from pathlib import Path

from biasaudit.errors import InputError


def check_input_file(path: Path, *, named: str, expected: str, error: type[InputError] = InputError) -> Path:
    """`named`: how the message names the file ("Config file x.toml"); `expected`: what should be there."""
    if path.is_dir():
        raise error(f"{named} is a directory; expected {expected}.")
    if not path.exists():
        raise error(f"{named} does not exist.")
    if not path.is_file():
        raise error(f"{named} is not a regular file; expected {expected}.")
    return path
