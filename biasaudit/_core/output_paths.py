"""Where results go, checked before any work: a scan that ran for an hour must not end in an OSError because its
output directory sits below a regular file, on a read-only or pseudo filesystem, or has a name too long.

Checked by trying what writing will do: the nearest existing ancestor must be a directory in which a file can be
created (a probe file, removed at once); running as root, permission bits say nothing, so asking os.access is not
enough. Every component of the path must fit the filesystem's name limit.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from biasaudit.errors import InputError


def _name_limit(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up: it does not exist, and _check_creatable says why
        return False


def _existing_ancestor(path: Path) -> Path:
    current = path
    while not _exists(current):
        if current.parent == current:
            break
        current = current.parent
    return current


def _check_creatable(path: Path, *, option: str, what: str, named: Path) -> None:
    """`path`: the directory that must exist or be creatable; `named`: the path the user gave (its names checked)."""
    ancestor = _existing_ancestor(path.absolute())
    limit = _name_limit(ancestor if ancestor.is_dir() else ancestor.parent)
    long = next((part for part in named.absolute().parts if len(os.fsencode(part)) > limit), None)
    if long is not None:
        raise InputError(
            f"{option} {named}: the name {long[:40]}... has {len(os.fsencode(long))} bytes, more than this "
            f"filesystem allows ({limit}); choose a shorter {what}."
        )
    if not ancestor.is_dir():
        raise InputError(f"{option} {named} lies below {ancestor}, which is a file, not a directory; choose another {what}.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".biasaudit-probe-", dir=ancestor)
    except OSError as exc:
        reason = (
            "it is read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else (exc.strerror or "it refused a file")
        )
        raise InputError(
            f"{option} {named} cannot be written: nothing can be created in {ancestor} ({reason}); choose another {what}."
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """The directory a command will write its files into: it is a directory (or can be created) and writable."""
    path = Path(path)
    if _exists(path) and not path.is_dir():
        raise InputError(f"{option} {path} exists and is not a directory; expected a directory for the output files.")
    _check_creatable(path, option=option, what="directory", named=path)
    return path


def check_output_file(path: str | os.PathLike, *, option: str) -> Path:
    """A file a command will write: not a directory, and its directory can be created and written."""
    path = Path(path)
    if _exists(path) and path.is_dir():
        raise InputError(f"{option} {path} is a directory; expected the path of a file to write.")
    _check_creatable(path.parent, option=option, what="file", named=path)
    return path
