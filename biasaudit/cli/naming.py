"""Errors named as the user typed them: the one mechanism every command shares.

The public API names a bad value by its Python keyword ("The 'bootstrap' parameter of ba.scan is 5; ...",
"ba.scan's 'out' /x cannot be written", "min_wrong is 0; ..."). A command calls that API, so the same check runs from
the shell; `named_as` rewrites the sentence to name the flag the user typed (`--bootstrap`), or the settings file,
table and key the value came from, and keeps the error's class (its exit code)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from collections.abc import Iterator, Mapping

from biasaudit.errors import BiasAuditError

_PARAMETER = re.compile(r"^The '(?P<key>\w+)' parameter of [\w.]+(?P<rest>.*)$", re.S)
_POSSESSIVE = re.compile(r"^[\w.]+'s '(?P<key>\w+)'(?P<rest>.*)$", re.S)
_LEADING = re.compile(r"^(?P<key>[a-z][a-z0-9_]*)(?P<rest>\s.*)$", re.S)
_TYPED = re.compile(r"^ is (?:str|int|float|bool) ")
COMMAND_LINE, DEFAULT = "command line", "default"


# Keywords every command spells the same way: the adapter spec (ba.load_adapter's) and the checkpoint argument.
SHARED = {"spec": "--adapter", "model": "CHECKPOINT", "checkpoint": "CHECKPOINT"}


def flag_of(key: str, flags: Mapping[str, str]) -> str:
    return flags.get(key, SHARED.get(key, f"--{key.replace('_', '-')}"))


def respelled(text: str, flags: Mapping[str, str], sources: Mapping[str, str] | None = None) -> str | None:
    """`text` naming its keyword as the user spelled it; None when it names none. A sentence that names the parameter of
    a public call ("The 'lr' parameter of ba.fix", "ba.scan's 'out'") names one of its keywords; a leading bare name
    ("min_count is -1") only a keyword of `flags` or `sources`. A sentence that names no keyword but the setting (e.g.
    "Split 'ood' is not offered by the adapter") of a value from a settings file is prefixed with its file and key."""
    sources = sources or {}
    for pattern in (_PARAMETER, _POSSESSIVE, _LEADING):
        match = pattern.match(text)
        if match is not None and (pattern is not _LEADING or match["key"] in set(flags) | set(sources)):
            # The shell gave text, not a Python type: "is int 0" reads "is 0" there.
            key, rest = match["key"], _TYPED.sub(" is ", match["rest"], count=1)
            source = sources.get(key, COMMAND_LINE)
            if not source.startswith((COMMAND_LINE, DEFAULT)):  # from a settings file: its file, table and key
                return f"{source} {key}{rest}"
            return f"{flag_of(key, flags)}{rest}"
    lowered = text.lower()
    for key, source in sources.items():
        word = key.replace("_", " ").removesuffix("s")
        if not source.startswith((COMMAND_LINE, DEFAULT)) and re.search(rf"(^|\W){re.escape(word)}", lowered):
            return f"{source} {key}: {text}"
    return None


@contextmanager
def named_as(flags: Mapping[str, str], sources: Mapping[str, str] | None = None) -> Iterator[None]:
    """Re-raise a library error that names one of `flags`' keywords (keyword -> flag) with the flag, or with the settings
    file's key when `sources` (keyword -> where its value came from, config_file.resolve) says it came from one."""
    try:
        yield
    except BiasAuditError as exc:
        text = respelled(str(exc), flags, sources)
        if text is None:
            raise
        raise type(exc)(text) from exc
