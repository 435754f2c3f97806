"""A run's output files as one consistent set (issue 11, class 5).

Each file is written atomically, but a set of them is not: a kill between `audit.json` and `audit.html`, or two runs
writing into one directory, would leave a new JSON beside an old HTML, or a new `model.pt` beside an earlier run's
`after.json`, on which a gate then passes. So a run

- holds an advisory lock on its directory from its first check to its last write (a second run into the same
  directory is refused at once, not after an hour of work; the kernel drops the lock when a process dies, even by
  kill -9);
- writes every file into a staging directory inside it, then moves them into place one by one, with Ctrl-C held
  back during the moves and a marker file present while they happen;
- stamps every file with the run's id and the names of its set (JSON: `manifest.run` or `run`; HTML: a meta tag;
  binary files: their SHA-256 in the stamp).

A reader (`check_set`) refuses a file whose directory still holds the marker naming it (a run died while moving its
files), or whose siblings of the same set carry another run's id. A file copied elsewhere, or without siblings, is
judged alone. A failed or interrupted run leaves the directory as it found it, apart from a training state that `fix`
keeps on purpose for `--resume`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Mapping

from biasaudit._core.files import atomic_write_bytes, file_sha256
from biasaudit.errors import InputError
from biasaudit._core.output_paths import check_output_dir

LOCK_NAME = ".biasaudit.lock"
MOVING_MARKER = ".biasaudit-moving"
STAGING_PREFIX = ".staging-"
_HTML_RUN = re.compile(rb'<meta name="biasaudit-run" content="([0-9a-f]{32})">')
_BINARY_SUFFIXES = (".pt",)

try:  # POSIX; elsewhere directories are not locked (the staging, marker and stamps still hold)
    import fcntl

    _CAN_LOCK = True
except ImportError:  # pragma: no cover - Windows
    _CAN_LOCK = False


class OutputSet:
    """The files one run writes into `out`, written together.

    ``with OutputSet(out, files=("audit.json", "audit.html")) as outputs``: checks and locks `out` (creating it if
    needed); ``outputs.staged(name)`` is where to write each file, ``outputs.stamp()`` the run stamp to record in it,
    ``outputs.commit(order)`` moves them into place. Leaving without a commit removes the staging directory, the lock
    file and the directories this run created, if empty.
    """

    def __init__(
        self, out: str | os.PathLike, *, files: tuple[str, ...], option: str = "--out", optional: tuple[str, ...] = ()
    ) -> None:
        self.out = Path(out)
        self.files = tuple(files)
        self.optional = tuple(optional)  # files a run may add (include); the commit removes those it did not write
        self.option = option
        self.run_id = uuid.uuid4().hex
        self.committed = False
        self._sha256: dict[str, str] = {}
        self._created: list[Path] = []
        self._stage: Path | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> OutputSet:
        check_output_dir(self.out, option=self.option)
        missing = []
        for directory in (self.out, *self.out.parents):
            if directory.exists():
                break
            missing.append(directory)
        self.out.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first: the order they are removed in
        try:
            self._lock()
        except BaseException:
            self._remove_created()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
        self._unlock()
        if not self.committed:
            self._remove_created()

    def staged(self, name: str) -> Path:
        """Where this run writes `name` before the commit."""
        if name not in self.files:
            raise ValueError(f"{name} is not one of this set's files {self.files}")
        if self._stage is None:
            self._stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))
        return self._stage / name

    def include(self, *names: str) -> None:
        """Make optional files part of this set; before the first stamp, which lists the set's files."""
        unknown = [name for name in names if name not in self.optional]
        if unknown:
            raise ValueError(f"{unknown} are not optional files of this set {self.optional}")
        self.files += tuple(name for name in names if name not in self.files)

    def record_binary(self, name: str) -> None:
        """Record the SHA-256 of a staged binary file (a state dict cannot carry a stamp inside it)."""
        self._sha256[name] = file_sha256(self.staged(name))

    def stamp(self) -> dict[str, Any]:
        return {"id": self.run_id, "files": list(self.files), "sha256": dict(self._sha256)}

    def commit(self, order: tuple[str, ...] | None = None) -> dict[str, Path]:
        """Move every staged file into place (in `order`, the file readers trust last); Ctrl-C waits until done."""
        order = tuple(order or self.files)
        missing = [name for name in order if not self.staged(name).is_file()]
        if missing or set(order) != set(self.files):
            raise RuntimeError(f"commit of an incomplete set: {missing or order}")
        self._remove_stale_staging()
        marker = self.out / MOVING_MARKER
        with _interrupts_held():
            atomic_write_bytes(json.dumps({"id": self.run_id, "files": list(self.files)}).encode("utf-8"), marker)
            for name in order:
                os.replace(self.staged(name), self.out / name)
            for name in self.optional:  # an earlier run's optional file would pose as this run's
                if name not in self.files:
                    (self.out / name).unlink(missing_ok=True)
            os.unlink(marker)
            self.committed = True
        return {name: self.out / name for name in self.files}

    # --- the lock ---------------------------------------------------------------------------------------------

    def _lock(self) -> None:
        if not _CAN_LOCK:
            return
        path = self.out / LOCK_NAME
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the directory itself vanished
                raise InputError(f"{self.option} {self.out} disappeared while biasaudit was locking it.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InputError(
                    f"{self.option} {self.out} is being written by another biasaudit run right now; wait for it "
                    f"to finish or choose another directory."
                ) from None
            # A finishing run removes the lock file: a lock on a removed file locks nothing.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        # Removed while still held (also one a killed run left): a run that opened it meanwhile finds, once it holds
        # the lock, that the path no longer names its file, and starts again (_lock).
        with suppress(FileNotFoundError):
            os.unlink(self.out / LOCK_NAME)
        os.close(self._lock_fd)
        self._lock_fd = None

    def _remove_created(self) -> None:
        for directory in self._created:
            try:
                directory.rmdir()  # only when empty: never anything a user or an earlier step put there
            except OSError:
                break

    def _remove_stale_staging(self) -> None:
        """Staging directories of runs killed before their commit (this run holds the lock: none is in use)."""
        for entry in self.out.glob(f"{STAGING_PREFIX}*"):
            if entry.is_dir() and entry != self._stage:
                shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then interrupt as Ctrl-C does: the files are then all in place."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt("after the results were written")


# --- reading -------------------------------------------------------------------------------------------------


def stamp_of(data: Any) -> Mapping[str, Any] | None:
    """The run stamp a JSON result carries: `manifest.run` (audits) or `run` (compare.json, train_log.json)."""
    if not isinstance(data, Mapping):
        return None
    manifest = data.get("manifest")
    run = manifest.get("run") if isinstance(manifest, Mapping) else None
    run = run if run is not None else data.get("run")
    return run if isinstance(run, Mapping) and isinstance(run.get("id"), str) else None


def _run_id_of_sibling(path: Path, stamp: Mapping[str, Any]) -> str | None:
    """The id of the run that wrote `path`: None when it carries none (an older file, or one of another run)."""
    if path.suffix in _BINARY_SUFFIXES:
        return stamp["id"] if (stamp.get("sha256") or {}).get(path.name) == file_sha256(path) else None
    if path.suffix == ".html":
        with open(path, "rb") as handle:
            marked = _HTML_RUN.search(handle.read(8192))
        return marked.group(1).decode() if marked else None
    try:
        found = stamp_of(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
    return found["id"] if found else None


def check_set(path: str | os.PathLike, data: Any, *, source: str) -> None:
    """Refuse a result file that belongs to an incomplete or mixed set of files in its directory."""
    path = Path(path)
    directory = path.parent
    marker = directory / MOVING_MARKER
    if marker.is_file():
        try:
            moving = json.loads(marker.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            moving = []
        if path.name in moving:
            raise InputError(
                f"{source} belongs to an incomplete set of results: a run was interrupted (or is still running) "
                f"while moving its files into {directory}; re-run the command that writes them."
            )
    stamp = stamp_of(data)
    if stamp is None or path.name not in (stamp.get("files") or []):
        return  # an older file, or one copied under another name: judged alone
    for name in stamp["files"]:
        sibling = directory / name
        if name == path.name or not sibling.is_file():
            continue
        if _run_id_of_sibling(sibling, stamp) != stamp["id"]:
            raise InputError(
                f"{source} and {sibling} were written by different runs: {directory} holds a mixed set of results "
                f"(a run killed while writing, or two runs into one directory); re-run the command that writes them."
            )
