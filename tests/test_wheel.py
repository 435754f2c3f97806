"""The built wheel works on its own: templates ship inside it and a report renders from an installed copy.

The editable install used for development finds templates/ in the source tree, so only a real
wheel in a fresh environment shows whether `pip install biasaudit` users get a working report.
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "audit_example.json"

# Runs inside the fresh venv; prints where biasaudit and its template came from.
RENDER_SCRIPT = """
import json, sys
import biasaudit
from biasaudit.report import write_audit_html
from biasaudit.report.render import templates_dir
audit = json.load(open(sys.argv[1], encoding="utf-8"))
write_audit_html(audit, sys.argv[2])
from biasaudit.results import check_against_schema
check_against_schema(audit, "audit", source=sys.argv[1])  # the published schema, read from the installed package
print(json.dumps({"package": biasaudit.__file__, "templates": str(templates_dir()), "path": sys.path}))
"""


def _build_wheel(out_dir: Path) -> Path:
    if importlib.util.find_spec("build") is not None:
        command = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out_dir), str(REPO)]
    else:  # pip builds in an isolated environment too, fetching hatchling itself
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out_dir), str(REPO)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"building the wheel failed:\n{result.stdout}\n{result.stderr}"
    wheels = sorted(out_dir.glob("biasaudit-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out_dir}, found {wheels}"
    return wheels[0]


def _venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def test_wheel_ships_templates_and_renders_a_report_from_a_fresh_venv(tmp_path):
    """`pip install biasaudit` users would get 'template not found' (or a stale copy) instead of a report."""
    wheel = _build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "biasaudit/templates/audit.html.j2" in names
    assert "biasaudit/report/render.py" in names
    for schema in ("audit", "compare", "gate", "train_log"):  # the published schemas (docs/audit-json.md)
        assert f"biasaudit/schemas/{schema}.schema.json" in names

    env_dir = tmp_path / "fresh-venv"
    venv.create(env_dir, with_pip=False)
    python = _venv_python(env_dir)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, f"installing the wheel failed:\n{install.stdout}\n{install.stderr}"

    # Dependencies (torch, matplotlib, ...) come from this environment. A plain path line in a .pth
    # is appended after the venv's own site-packages, and .pth files inside appended directories are
    # not processed, so this environment's editable biasaudit cannot shadow the installed wheel.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    current = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "_current_env_dependencies.pth").write_text("\n".join(current) + "\n", encoding="utf-8")

    work = tmp_path / "cwd"
    work.mkdir()
    report = work / "audit.html"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    result = subprocess.run([str(python), "-c", RENDER_SCRIPT, str(FIXTURE), str(report)],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"rendering from the installed wheel failed:\n{result.stderr}"
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    env_root = env_dir.resolve()
    assert Path(seen["package"]).resolve().is_relative_to(env_root), f"biasaudit came from {seen['package']}, not the wheel"
    assert Path(seen["templates"]).resolve().is_relative_to(env_root), f"template came from {seen['templates']}"
    assert str(REPO) not in seen["path"], "the source checkout leaked onto sys.path"
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert 'id="gradient-conflict"' in html and "data:image/png;base64," in html
