"""A command line that starts fast: `biasaudit --help` and every command's `--help` answer without importing torch,
scikit-learn, scipy, umap or matplotlib (seconds of CPU before the first line of help), and `scan --help` lists every
condition group the scan accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "sklearn", "scipy", "umap", "matplotlib")
HELPS = (["--help"], ["scan", "--help"], ["merge", "--help"], ["fix", "--help"], ["leaderboard", "--help"], ["compare", "--help"],
         ["report", "--help"], ["gate", "--help"], ["demo", "--help"])
MARK = "@@startup@@"


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """`code` in a new interpreter, as a user's shell would start it (nothing imported yet), help on a wide terminal."""
    env = {**os.environ, "COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def helps() -> dict:
    """Each help's text, and which heavy libraries were imported once every help was shown."""
    done = fresh_python(f"""
        import json, sys
        from biasaudit.cli import app

        texts = {{}}
        for args in {[list(a) for a in HELPS]!r}:
            print({MARK!r}, " ".join(args), flush=True)
            try:
                app(args, prog_name="biasaudit")
            except SystemExit as exc:
                assert exc.code in (0, None), (args, exc.code)
        print({MARK!r}, "imported", json.dumps([m for m in {HEAVY!r} if m in sys.modules]), flush=True)
    """)
    texts: dict[str, str] = {}
    current = None
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            current = line[len(MARK):].strip()
            texts[current] = ""
        elif current is not None:
            texts[current] += line + "\n"
    return texts


def test_help_imports_no_heavy_library(helps):
    """`biasaudit --help` (and each command's --help) takes seconds when building the options imports torch or
    scikit-learn: none of them may be imported before a command runs."""
    imported = json.loads(next(key for key in helps if key.startswith("imported"))[len("imported"):])
    assert imported == [], f"--help imported {imported}: import it inside the command that uses it"
    for args in HELPS:
        assert "Usage" in helps[" ".join(args)], f"biasaudit {' '.join(args)} printed no help"


def test_import_biasaudit_is_light_and_names_still_work():
    """`import biasaudit` alone (which any `biasaudit.X` import runs first) pulls in no heavy library; the public names
    are there on first use, as before."""
    done = fresh_python(f"""
        import sys
        import biasaudit
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert heavy == [], heavy
        assert set(biasaudit.__all__) <= set(dir(biasaudit))
        from biasaudit import Audit, BiasAuditError, Modality
        from biasaudit.data.adapter import Modality as AdapterModality
        assert Modality is AdapterModality
        assert callable(biasaudit.scan) and biasaudit.__version__
        try:
            biasaudit.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("an unknown name must raise AttributeError")
        print("ok")
    """)
    assert done.stdout.strip() == "ok"


def test_scan_help_names_every_condition_group(helps):
    """`scan --help` omitted carrier, ceilings, shapley and interaction: a user could not learn from it how to ask for
    (or leave out) a diagnostic. Every group and diagnostic --conditions accepts must be named."""
    from biasaudit.scanning.conditions import DIAGNOSTICS, GROUPS

    words = set(helps["scan --help"].replace(",", " ").replace(".", " ").replace(";", " ").split())
    missing = [name for name in ("default", *GROUPS, *DIAGNOSTICS) if name not in words]
    assert not missing, f"scan --help does not name {missing} under --conditions"


def test_choices_match_the_library_registries():
    """The CLI writes out its choices so that --help need not import the registries (torch): a method, optimizer or mode
    added to the library but not to biasaudit/cli/choices.py would be refused by click with exit 2."""
    from biasaudit.cli import choices
    from biasaudit.diagnostics.groups import GROUPINGS
    from biasaudit.methods.balgrad import KL_MODES, PROJECTIONS as BALGRAD_PROJECTIONS, SCHEDULES
    from biasaudit.scanning.config import PRECISIONS, PROJECTIONS
    from biasaudit.training.method_balgrad import HEAD_MODES, WEIGHT_MODES
    from biasaudit.training.method_mmdb import BIAS_SOURCES
    from biasaudit.training.methods import METHODS
    from biasaudit.training.feature_cache import MODES as FEATURE_CACHE_MODES
    from biasaudit.training.optimizers import OPTIMIZERS

    registries = {"PROJECTIONS": PROJECTIONS, "PRECISIONS": PRECISIONS, "GROUPINGS": GROUPINGS, "METHODS": METHODS, "OPTIMIZERS": OPTIMIZERS,
                  "BIAS_SOURCES": BIAS_SOURCES, "SCHEDULES": SCHEDULES, "KL_MODES": KL_MODES, "BALGRAD_PROJECTIONS": BALGRAD_PROJECTIONS,
                  "HEAD_MODES": HEAD_MODES, "WEIGHT_MODES": WEIGHT_MODES, "FEATURE_CACHE_MODES": FEATURE_CACHE_MODES}
    for name, registry in registries.items():
        assert tuple(getattr(choices, name)) == tuple(registry), f"biasaudit/cli/choices.py {name} differs from the library's registry"
