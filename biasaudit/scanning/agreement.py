"""What the processes of a torchrun (or of any torch.distributed group that splits a scan) must agree on.

Each process parses its own command line, reads its own checkpoint and imports its own adapter, and the merge adds
their counts as if one process had made them (methods.md section 10). Processes started with another seed or another
checkpoint would merge, exit 0, into one audit of two scans. So before any work every process shares a fingerprint of
what it was given (settings, the contents of the adapter and checkpoint files, library versions), and unless every
fingerprint equals rank 0's, every process stops naming the first difference.

And a process that fails must not leave the others waiting in a collective for it (a hang), nor meet them there gone
(gloo's "connection closed" traceback): `stopping_together` exchanges every process's error, or None, at a point
every process reaches, and all stop there with one sentence naming the failed rank.
"""

from __future__ import annotations

from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Mapping, Sequence

from biasaudit.errors import BiasAuditError, InputError

# kind -> name -> (what the user sees: "--seed 1", a path, "torch 2.4.0"; what must be equal: the value, a SHA-256).
Fingerprint = dict[str, dict[str, tuple[str, Any]]]


def option_settings(values: Mapping[str, Any], flags: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """Command-line settings by flag, shown as typed: {"--seed": ("--seed 1", 1),
    "--mute-compare": ("no --mute-compare", False)}."""
    settings = {}
    for key, value in values.items():
        flag = flags[key]
        if isinstance(value, bool):
            shown = flag if value else f"no {flag}"
        elif isinstance(value, (list, tuple)):
            shown = " ".join(f"{flag} {item}" for item in value) or f"no {flag}"
        else:
            shown = f"{flag} {value}"
        settings[flag] = (shown, tuple(value) if isinstance(value, list) else value)
    return settings


def keyword_settings(config: Any, unimodal_models: Mapping[str, Any] | None = None) -> dict[str, tuple[str, Any]]:
    """A ScanConfig's settings as `scan` keywords. The device is compared by kind only: each process passes its own GPU.
    The unimodal models by modality and class (their weights, like the model's, are not hashed)."""
    settings = {name: (f"{name}={value!r}", value) for name, value in config.to_dict().items()}
    settings["device"] = (settings["device"][0], str(config.device).partition(":")[0])
    unimodal = tuple(sorted((name, type(model).__name__) for name, model in (unimodal_models or {}).items()))
    settings["unimodal_models"] = (f"unimodal_models={dict(unimodal)!r}", unimodal)
    return settings


def scan_fingerprint(
    settings: Mapping[str, tuple[str, Any]],
    *,
    adapter: Mapping[str, Any],
    checkpoint: str | Path | None = None,
    unimodal: Sequence[tuple[str, str | Path]] = (),
) -> Fingerprint:
    """`adapter`: biasaudit.scanning.audit.adapter_source's spec and SHA-256 of the adapter's file. Checkpoints are compared by
    contents, not path: nodes may mount the same file at other places."""
    from biasaudit import __version__
    from biasaudit._core.files import file_sha256
    from biasaudit.results import library_versions

    files = {"adapter": (str(adapter["spec"]), adapter["sha256"])}
    if checkpoint is not None:
        files["checkpoint"] = (str(checkpoint), file_sha256(checkpoint))
    for modality, path in unimodal:
        files[f"--unimodal {modality} checkpoint"] = (str(path), file_sha256(path))
    versions = {"biasaudit": __version__, **library_versions()}
    return {
        "setting": dict(settings),
        "file": files,
        "version": {name: (f"{name} {version}", version) for name, version in versions.items()},
    }


def _ranks(ranks: list[int]) -> str:
    return f"Rank {ranks[0]}" if len(ranks) == 1 else f"Ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]}"


def _difference(fingerprints: list[Fingerprint], *, group: str, remedy: str) -> str | None:
    """One sentence naming the first entry (settings, then files, then versions) in which some rank differs from rank 0."""
    ours = fingerprints[0]
    for kind in ("setting", "file", "version"):
        names = list(ours[kind]) + [name for theirs in fingerprints[1:] for name in theirs[kind] if name not in ours[kind]]
        for name in dict.fromkeys(names):
            absent = (f"no {name}", None)
            mine = ours[kind].get(name, absent)
            differing = [rank for rank, theirs in enumerate(fingerprints) if theirs[kind].get(name, absent)[1] != mine[1]]
            if not differing:
                continue
            shown = " and ".join(dict.fromkeys(fingerprints[rank][kind].get(name, absent)[0] for rank in differing))
            one = len(differing) == 1
            who = f"{_ranks(differing)} of {group}"
            if kind == "setting":
                return f"{who} {'was' if one else 'were'} given {shown} but rank 0 {mine[0]}; every process must {remedy}."
            if kind == "file":
                return (
                    f"{who} {'reads' if one else 'read'} {name} {shown} but rank 0 {mine[0]}, and the files' contents differ; "
                    "every process must read the same files."
                )
            return (
                f"{who} {'runs' if one else 'run'} {shown} but rank 0 {mine[0]}; "
                "every process must run the same library versions."
            )
    return None


def check_agreement(fingerprint: Fingerprint, *, group: str, remedy: str) -> None:
    """Every rank calls this with its own fingerprint; unless all equal rank 0's, every rank raises the same InputError.
    `group` names the processes ("this torchrun"); `remedy` ends the sentence ("be started with the same arguments")."""
    import torch.distributed as dist

    fingerprints: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(fingerprints, fingerprint)
    difference = _difference(fingerprints, group=group, remedy=remedy)
    if difference is not None:
        raise InputError(difference)


def _described(exc: Exception) -> tuple[int, str | None, str]:
    """(exit code, the type of an unexpected error or None for biasaudit's own, its text) as the other ranks tell it."""
    if isinstance(exc, BiasAuditError):
        return exc.exit_code, None, str(exc)
    return 3, type(exc).__name__, (str(exc).splitlines() or ["no detail"])[0]


def _exchanged(failure: tuple[int, str | None, str] | None) -> list[Any]:
    import torch.distributed as dist

    failures: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, failure)
    return failures


@contextmanager
def stopping_together(enabled: bool = True, *, group: str = "this process group") -> Iterator[None]:
    """Run a block on every rank; when it raises on any, every rank stops at its end: the failed rank with its own
    error, the others with one sentence naming it (exit 2 for an input error there, else 3). The block ends in a
    collective, so every rank must enter it; a rank that finishes first waits there for the others, within the
    process group's timeout. Off (`enabled` False, one process) it is only the block."""
    if not enabled:
        yield
        return
    try:
        yield
    except Exception as exc:
        with suppress(RuntimeError):  # another rank is gone too: this rank's own error is what its output must say
            _exchanged(_described(exc))
        raise
    try:
        failures = _exchanged(None)
    except RuntimeError:  # a process left without reaching the exchange (killed, or out of memory in native code)
        raise BiasAuditError(f"Another process of {group} left before the others finished; its own output says why.") from None
    for rank, failure in enumerate(failures):
        if failure is not None:
            code, kind, text = failure
            if kind is not None:
                raise BiasAuditError(f"Rank {rank} of {group} failed with {kind} ({text}); that rank's traceback says where.")
            raise (InputError if code == InputError.exit_code else BiasAuditError)(f"Rank {rank} of {group} stopped: {text}")
