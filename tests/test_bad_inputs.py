"""A catalogue of user mistakes (issue 11): every one exits 2 with one sentence that names what the user typed (the
option, the config key or the file), never a traceback, and leaves an output directory that already holds earlier
results byte-identical (no file changed, none added, none removed).

Every case runs in-process through typer's runner (the console script's code without a new interpreter). The earlier
results are real ones, written once per module by the CLI itself: a scan, a fix, a compare, a report and a gate's
JUnit file. Each case copies the one its command writes into and points --out (gate: --junit) at the copy; a case whose
mistake is the output location itself points elsewhere and the copy next to it must stay as it was.

Each case id reads like the mistake; the cases are grouped per command as in test_cli.py's CASES.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import pickle
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

from biasaudit.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
SHORTCUT = f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdapter"
TINY = f"{FIXTURES / 'tiny_adapter.py'}:adapter"
BROKEN = FIXTURES / "broken_adapters.py"
LOADERS = FIXTURES / "loader_adapters.py"
EXAMPLE_AUDIT = FIXTURES / "audit_example.json"
FAST_SCAN = ["--projection", "pca", "--bootstrap", "50", "--gradient-batches", "1", "--embedding-points", "50"]
FAST_FIX = ["--method", "ce", "--epochs", "1", "--scan-projection", "pca", "--bootstrap", "50", "--gradient-batches", "1",
            "--embedding-points", "50"]


def invoke(args: list) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------------------------------
# Earlier results, written once through the CLI.


@dataclass(frozen=True)
class Earlier:
    root: Path
    shortcut_ckpt: Path  # ShortcutModel (no trainable parameter: scan only)
    tiny_ckpt: Path  # ReadsOnlyA (trainable: fix)
    scan: Path  # audit.json, audit.html of the shortcut checkpoint
    fix: Path  # model.pt, before/after.json, compare.json, train_log.json, after/compare.html, state/last.pt
    compare: Path  # compare.json, compare.html
    report: Path  # report.html
    junit: Path  # gate.xml

    @property
    def audit(self) -> Path:
        return self.scan / "audit.json"


def _model(module: str, name: str) -> torch.nn.Module:
    sys.path.insert(0, str(FIXTURES))
    try:
        mod = __import__(module)
    finally:
        sys.path.pop(0)
    return getattr(mod, name)()


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Earlier:
    root = tmp_path_factory.mktemp("earlier")
    shortcut_ckpt, tiny_ckpt = root / "shortcut.pt", root / "tiny.pt"
    torch.save(_model("shortcut_adapter", "ShortcutModel").state_dict(), shortcut_ckpt)
    torch.save(_model("tiny_adapter", "ReadsOnlyA").state_dict(), tiny_ckpt)
    e = Earlier(root, shortcut_ckpt, tiny_ckpt, root / "scan", root / "fix", root / "compare", root / "report", root / "junit")
    runs = [["scan", shortcut_ckpt, "--adapter", SHORTCUT, *FAST_SCAN, "--out", e.scan],
            ["fix", tiny_ckpt, "--adapter", TINY, *FAST_FIX, "--out", e.fix],
            ["compare", e.fix / "before.json", e.fix / "after.json", "--train-log", e.fix / "train_log.json", "--out", e.compare],
            ["report", e.audit, "--out", e.report / "report.html"],
            ["gate", e.audit, "--max-gap", "90", "--junit", e.junit / "gate.xml"]]
    for args in runs:
        result = invoke(args)
        assert result.exit_code == 0, (args[0], result.exit_code, result.stderr, result.exception)
    assert (e.fix / "state" / "last.pt").is_file()
    return e


# ---------------------------------------------------------------------------------------------------------------------
# What a case can build its arguments from.


class CreatesAFile:
    """Unpickling this calls Path.touch on the marker: code run by merely loading the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


OUT_OF = {"scan": "scan", "fix": "fix", "compare": "compare", "report": "report", "gate": "junit", "demo": "scan", "app": "scan"}
_DEFAULT = object()


class Ctx:
    """One case's world: `out` is a copy of the earlier results its command writes into; `inputs` holds the bad files
    the case makes; `cwd` is the (empty) working directory the command runs in."""

    def __init__(self, tmp: Path, e: Earlier, command: str) -> None:
        self.e, self.tmp = e, tmp
        self.inputs, self.cwd = tmp / "inputs", tmp / "cwd"
        self.inputs.mkdir()
        self.cwd.mkdir()
        self.out = tmp / "out"
        shutil.copytree(getattr(e, OUT_OF[command]), self.out)

    # ---- files ----
    def file(self, name: str, content: bytes | str) -> Path:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def folder(self, name: str) -> Path:
        path = self.inputs / name
        path.mkdir(parents=True)
        (path / "README").write_text("a directory, not what was asked for")
        return path

    def saved(self, name: str, obj: Any) -> Path:
        path = self.inputs / name
        torch.save(obj, path)
        return path

    def toml(self, text: str, name: str = "settings.toml") -> Path:
        return self.file(name, text)

    def audit_like(self, name: str, change: Callable[[dict], Any], source: Path | None = None) -> Path:
        """A copy of an earlier audit (default: the scan's) changed in place by `change`."""
        data = json.loads((source or self.e.audit).read_text())
        change(data)  # in place
        return self.file(name, json.dumps(data))

    def spec(self, name: str, text: str, attr: str = "adapter") -> str:
        """An --adapter value naming a file written from raw text."""
        return f"{self.file(name, text)}:{attr}"

    def adapter_file(self, name: str, body: str) -> Path:
        head = (f"import sys\nsys.path.insert(0, {str(FIXTURES)!r})\n"
                "import torch\nfrom torch import nn\nfrom biasaudit import Adapter, Modality\n")
        return self.file(name, head + body)

    # ---- commands, each with its --out at the copy; a case's own later --out wins ----
    def scan(self, *extra, ckpt=_DEFAULT, adapter=_DEFAULT, drop: str | None = None) -> list:
        """`drop`: a fast option left out, so that a config file's value of it is the one in force."""
        ckpt = self.e.shortcut_ckpt if ckpt is _DEFAULT else ckpt
        adapter = SHORTCUT if adapter is _DEFAULT else adapter
        fast = [a for i, a in enumerate(FAST_SCAN) if drop is None or drop not in (a, FAST_SCAN[i - 1] if i else None)]
        return ["scan", *([ckpt] if ckpt is not None else []), *(["--adapter", adapter] if adapter is not None else []),
                *fast, "--out", self.out, *extra]

    def fix(self, *extra, ckpt=_DEFAULT, adapter=_DEFAULT) -> list:
        ckpt = self.e.tiny_ckpt if ckpt is _DEFAULT else ckpt
        adapter = TINY if adapter is _DEFAULT else adapter
        return ["fix", *([ckpt] if ckpt is not None else []), *(["--adapter", adapter] if adapter is not None else []),
                *FAST_FIX, "--out", self.out, *extra]

    def mmdb(self, *extra, **kw) -> list:
        return self.fix("--method", "mmdb", *extra, **kw)

    def balgrad(self, *extra, **kw) -> list:
        return self.fix("--method", "balgrad", *extra, **kw)

    def compare(self, *extra, before=_DEFAULT, after=_DEFAULT) -> list:
        before = self.e.fix / "before.json" if before is _DEFAULT else before
        after = self.e.fix / "after.json" if after is _DEFAULT else after
        return ["compare", *[p for p in (before, after) if p is not None], "--out", self.out, *extra]

    def report(self, *extra, audit=_DEFAULT) -> list:
        audit = self.e.audit if audit is _DEFAULT else audit
        return ["report", *([audit] if audit is not None else []), "--out", self.out / "report.html", *extra]

    def gate(self, *extra, current=_DEFAULT) -> list:
        current = self.e.audit if current is _DEFAULT else current
        return ["gate", *([current] if current is not None else []), "--junit", self.out / "gate.xml", *extra]

    def gate_config(self, text: str, *extra) -> list:
        return self.gate("--config", self.toml(text, "rules.toml"), *extra)

    def scan_config(self, text: str, *extra, **kw) -> list:
        return self.scan("--config", self.toml(text, "scan.toml"), *extra, **kw)

    def demo(self, *extra) -> list:
        return ["demo", "--out", self.out, *extra]


# A path that is a directory where a file is expected: the sentence says so (not "does not exist") and names it.
DIR = r"^(?=.*(?i:director|not a file)).*"


def opt(name: str) -> str:
    """The pattern of a message that names the option as typed."""
    return re.escape(name)


# ---------------------------------------------------------------------------------------------------------------------
# The catalogue: id -> (arguments from a Ctx, pattern the sentence must match). Patterns name the input as typed.

SCAN_CHECKPOINTS = {
    "scan checkpoint that does not exist": (lambda c: c.scan(ckpt=c.inputs / "nope.pt"), r"nope\.pt"),
    "scan checkpoint is a directory": (lambda c: c.scan(ckpt=c.folder("weights")), DIR + r"weights"),
    "scan checkpoint is an empty file": (lambda c: c.scan(ckpt=c.file("empty.pt", b"")), r"empty\.pt"),
    "scan checkpoint of random bytes": (lambda c: c.scan(ckpt=c.file("random.pt", bytes(range(256)) * 4)), r"random\.pt"),
    "scan checkpoint is a python file": (lambda c: c.scan(ckpt=c.file("train.py", "import os\nprint('hi')\n")), r"train\.py"),
    "scan checkpoint is a json file": (lambda c: c.scan(ckpt=c.file("weights.json", '{"w": [1, 2]}')), r"weights\.json"),
    "scan checkpoint is a gzip file": (lambda c: c.scan(ckpt=c.file("model.pt.gz", gzip.compress(b"x" * 100))), r"model\.pt\.gz"),
    "scan checkpoint is a zip that is no torch file": (lambda c: c.scan(ckpt=c.file("bundle.pt", _zip_bytes())), r"bundle\.pt"),
    "scan checkpoint truncated in half": (lambda c: c.scan(ckpt=c.file("cut.pt", c.e.shortcut_ckpt.read_bytes()[:200])), r"cut\.pt"),
    "scan checkpoint that is a dangling symlink": (lambda c: c.scan(ckpt=_dangling(c, "gone.pt")), r"gone\.pt"),
    "scan checkpoint pickle that runs code (torch.save)": (
        lambda c: c.scan(ckpt=c.saved("evil.pt", {"scale": torch.ones(()), "x": CreatesAFile(c.inputs / "pwned")})),
        r"evil\.pt.*--trust-checkpoint"),
    "scan checkpoint legacy pickle that runs code": (
        lambda c: c.scan(ckpt=c.file("evil.pkl", pickle.dumps({"x": CreatesAFile(c.inputs / "pwned")}, protocol=2))),
        r"evil\.pkl.*--trust-checkpoint"),
    "scan checkpoint with pickled objects (a Path)": (
        lambda c: c.scan(ckpt=c.saved("objects.pt", {"scale": torch.ones(()), "note": Path("x")})), r"objects\.pt"),
    "scan checkpoint state dict of the wrong keys": (lambda c: c.scan(ckpt=c.saved("keys.pt", {"head.weight": torch.eye(3)})),
                                                      r"keys\.pt.*head\.weight"),
    "scan checkpoint state dict of the wrong shapes": (lambda c: c.scan(ckpt=c.saved("shapes.pt", {"scale": torch.ones(2, 2)})),
                                                        r"shapes\.pt.*scale"),
    "scan checkpoint state dict with an extra key": (
        lambda c: c.scan(ckpt=c.saved("extra.pt", {"scale": torch.ones(()), "extra": torch.ones(1)})), r"extra\.pt.*extra"),
    "scan checkpoint is a tensor": (lambda c: c.scan(ckpt=c.saved("tensor.pt", torch.ones(3))), r"tensor\.pt.*Tensor"),
    "scan checkpoint is a list of tensors": (lambda c: c.scan(ckpt=c.saved("list.pt", [torch.ones(3)])), r"list\.pt"),
    "scan checkpoint is an empty dict": (lambda c: c.scan(ckpt=c.saved("nothing.pt", {})), r"nothing\.pt"),
    "scan checkpoint holds numbers not tensors": (lambda c: c.scan(ckpt=c.saved("numbers.pt", {"scale": 1.0})), r"numbers\.pt"),
    "scan checkpoint of another model (tiny)": (lambda c: c.scan(ckpt=c.e.tiny_ckpt), r"tiny\.pt.*classifier\.weight"),
    "scan checkpoint is the earlier audit.json": (lambda c: c.scan(ckpt=c.e.audit), r"audit\.json"),
    "scan checkpoint argument missing": (lambda c: c.scan(ckpt=None), r"(?i)missing argument.*checkpoint"),
    "scan --unimodal checkpoint that does not exist": (lambda c: c.scan("--unimodal", f"content={c.inputs / 'solo.pt'}"), r"solo\.pt"),
    "scan --unimodal checkpoint is a directory": (lambda c: c.scan("--unimodal", f"content={c.folder('solo')}"), DIR + r"--unimodal.*solo"),
    "scan --unimodal checkpoint of random bytes": (
        lambda c: c.scan("--unimodal", f"content={c.file('solo.pt', bytes(range(256)))}"), r"solo\.pt"),
    "scan --unimodal checkpoint of the wrong keys": (
        lambda c: c.scan("--unimodal", f"content={c.saved('solo.pt', {'w': torch.ones(1)})}"), r"solo\.pt"),
    "scan --unimodal without =": (lambda c: c.scan("--unimodal", str(c.e.shortcut_ckpt)), opt("--unimodal")),
    "scan --unimodal of an unknown modality": (lambda c: c.scan("--unimodal", f"audio={c.e.shortcut_ckpt}"), r"--unimodal.*audio"),
    "scan --unimodal with an empty checkpoint path": (lambda c: c.scan("--unimodal", "content="), opt("--unimodal")),
    "scan --unimodal with an empty modality": (lambda c: c.scan("--unimodal", f"={c.e.shortcut_ckpt}"), opt("--unimodal")),
}


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a tensor")
    return buffer.getvalue()


def _dangling(c: Ctx, name: str) -> Path:
    link = c.inputs / name
    link.symlink_to(c.inputs / "was-deleted.pt")
    return link


def _variant(line: str) -> str:
    return f"from shortcut_adapter import ShortcutAdapter\nclass Variant(ShortcutAdapter):\n    {line}\nadapter = Variant()\n"


DUPLICATE_NAMES = _variant('modalities = [Modality("x", "tensor"), Modality("x", "image")]')
ONE_CLASS = _variant("num_classes = 1")
STR_CLASSES = _variant('num_classes = "3"')
AUDIO_KIND = _variant('modalities = [Modality("bias_cue", "audio"), Modality("content", "image")]')
STRING_MODALITIES = _variant('modalities = ["bias_cue", "content"]')

ONE_BRANCH = """
from tiny_adapter import TinyAdapter
class OneBranch(TinyAdapter):
    def branches(self, model):
        return {"a": model.classifier}
adapter = OneBranch()
"""

ONE_MODALITY = """
class OneModality(Adapter):
    modalities = [Modality("a", "tensor")]
    num_classes = 2
    def build_model(self): return nn.Linear(2, 2)
    def data(self, split, *, batch_size): return iter(())
    def prepare(self, batch, *, device): return batch["a"]
adapter = OneModality()
"""

SCAN_ADAPTERS = {
    "scan --adapter file that does not exist": (lambda c: c.scan(adapter=f"{c.inputs / 'my_adapter.py'}:adapter"), r"my_adapter\.py"),
    "scan --adapter path is a directory": (lambda c: c.scan(adapter=f"{c.folder('adapters')}:adapter"), DIR + r"adapters"),
    "scan --adapter without :NAME": (lambda c: c.scan(adapter=str(FIXTURES / "shortcut_adapter.py")), r"shortcut_adapter\.py"),
    "scan --adapter with an empty NAME": (lambda c: c.scan(adapter=f"{FIXTURES / 'shortcut_adapter.py'}:"), r"shortcut_adapter\.py"),
    "scan --adapter with an empty file part": (lambda c: c.scan(adapter=":ShortcutAdapter"), r"ShortcutAdapter"),
    "scan --adapter is an empty string": (lambda c: c.scan(adapter=""), r"(?i)adapter"),
    "scan --adapter wrong attribute name": (lambda c: c.scan(adapter=f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdaptor"),
                                            r"ShortcutAdaptor"),
    "scan --adapter attribute that is no adapter (an int)": (
        lambda c: c.scan(adapter=f"{FIXTURES / 'shortcut_adapter.py'}:NUM_CLASSES"), r"NUM_CLASSES"),
    "scan --adapter attribute that is a model class": (
        lambda c: c.scan(adapter=f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutModel"), r"ShortcutModel"),
    "scan --adapter module that cannot be imported": (lambda c: c.scan(adapter="no_such_package.adapters:adapter"), r"no_such_package"),
    "scan --adapter file with a syntax error": (lambda c: c.scan(adapter=c.spec("syntax.py", "def broken(:\n")),
                                                r"syntax\.py"),
    "scan --adapter file raising at import": (
        lambda c: c.scan(adapter=c.spec("raises.py", "raise RuntimeError(1)\n")), r"raises\.py"),
    "scan --adapter file importing a missing package": (
        lambda c: c.scan(adapter=c.spec("needs.py", "import not_installed_pkg\n")), r"needs\.py"),
    "scan --adapter file calling sys.exit at import": (lambda c: c.scan(adapter=f"{FIXTURES / 'exits_at_import.py'}:adapter"),
                                                       r"exits_at_import\.py"),
    "scan --adapter file that is not python (.txt)": (lambda c: c.scan(adapter=c.spec("adapter.txt", "hello\n")),
                                                      r"adapter\.txt"),
    "scan --adapter class that needs arguments": (
        lambda c: c.scan(adapter=f"{c.adapter_file('needs_args.py', _NEEDS_ARGS)}:NeedsArgs"), r"NeedsArgs"),
    "scan --adapter class raising in __init__": (
        lambda c: c.scan(adapter=f"{c.adapter_file('init_raises.py', _INIT_RAISES)}:InitRaises"), r"InitRaises"),
    "scan --adapter with one modality": (lambda c: c.scan(adapter=f"{c.adapter_file('one.py', ONE_MODALITY)}:adapter"),
                                         r"one\.py:adapter"),
    "scan --adapter with duplicate modality names": (
        lambda c: c.scan(adapter=f"{c.adapter_file('dup.py', DUPLICATE_NAMES)}:adapter"),
        r"dup\.py:adapter"),
    "scan --adapter with num_classes = 1": (
        lambda c: c.scan(adapter=f"{c.adapter_file('one_class.py', ONE_CLASS)}:adapter"), r"one_class\.py:adapter"),
    "scan --adapter with num_classes = '3'": (
        lambda c: c.scan(adapter=f"{c.adapter_file('str_classes.py', STR_CLASSES)}:adapter"),
        r"str_classes\.py:adapter"),
    "scan --adapter with a modality of unknown kind": (
        lambda c: c.scan(adapter=f"{c.adapter_file('audio.py', AUDIO_KIND)}:adapter"),
        r"audio\.py:adapter"),
    "scan --adapter whose modalities are strings": (
        lambda c: c.scan(adapter=f"{c.adapter_file('strings.py', STRING_MODALITIES)}:adapter"),
        r"strings\.py:adapter"),
    "scan --adapter missing prepare()": (lambda c: c.scan(adapter=f"{BROKEN}:no_prepare", ckpt=c.e.tiny_ckpt), r"no_prepare"),
    "scan --adapter that is a plain object": (lambda c: c.scan(adapter=f"{BROKEN}:PlainObject"), r"PlainObject"),
    "scan --adapter with an empty test split": (lambda c: c.scan(adapter=f"{BROKEN}:empty_split", ckpt=c.e.tiny_ckpt), r"'test'"),
    "scan --adapter labels out of range": (lambda c: c.scan(adapter=f"{BROKEN}:labels_out_of_range", ckpt=c.e.tiny_ckpt), r"label"),
    "scan --adapter whose model returns NaN": (lambda c: c.scan(adapter=f"{BROKEN}:returns_nan", ckpt=c.e.tiny_ckpt), r"NaN"),
    "scan --adapter modality key absent from batches": (
        lambda c: c.scan(adapter=f"{BROKEN}:wrong_modality_key", ckpt=c.e.tiny_ckpt), r"'features'"),
    "scan --adapter pixels outside value_range": (lambda c: c.scan(adapter=f"{BROKEN}:pixels_out_of_range", ckpt=c.e.tiny_ckpt),
                                                  r"value_range"),
    "scan --adapter data() returns None": (lambda c: c.scan(adapter=f"{BROKEN}:data_returns_none", ckpt=c.e.tiny_ckpt), r"data\("),
    "scan --adapter data() yields ints": (lambda c: c.scan(adapter=f"{BROKEN}:yields_ints", ckpt=c.e.tiny_ckpt), r"data\("),
    "scan --adapter text modality given a tensor": (lambda c: c.scan(adapter=f"{BROKEN}:text_as_tensor", ckpt=c.e.tiny_ckpt),
                                                    r"Text modality 'b'"),
    "scan --adapter classifier() returns a string": (
        lambda c: c.scan(adapter=f"{BROKEN}:classifier_is_string", ckpt=c.e.tiny_ckpt), r"classifier\(model\)"),
    "scan --adapter forward() returns bool logits": (lambda c: c.scan(adapter=f"{BROKEN}:bool_logits", ckpt=c.e.tiny_ckpt),
                                                     r"forward\(\)"),
    "scan --adapter class_names too short": (lambda c: c.scan(adapter=f"{BROKEN}:short_class_names", ckpt=c.e.tiny_ckpt),
                                             r"class_names"),
    "scan --adapter branches() of an unknown modality": (
        lambda c: c.scan(adapter=f"{BROKEN}:branches_of_an_unknown_modality", ckpt=c.e.tiny_ckpt), r"branches\(model\)"),
    "scan --adapter LoaderAdapter with a shuffling loader": (lambda c: c.scan(adapter=f"{LOADERS}:Shuffles"), r"Shuffles"),
    "scan --adapter LoaderAdapter shuffling in its batch sampler": (lambda c: c.scan(adapter=f"{LOADERS}:ShufflesInBatchSampler"),
                                                                    r"ShufflesInBatchSampler"),
    "scan --adapter LoaderAdapter with a misspelt branch": (lambda c: c.scan(adapter=f"{LOADERS}:MisspeltBranch"), r"'image_brnch'"),
    "scan --adapter not given and no config": (lambda c: c.scan(adapter=None), opt("--adapter")),
    "scan -a without a value": (lambda c: c.scan("-a"), r"-a"),
}

_NEEDS_ARGS = """
from shortcut_adapter import ShortcutAdapter
class NeedsArgs(ShortcutAdapter):
    def __init__(self, root):
        self.root = root
"""

_INIT_RAISES = """
from shortcut_adapter import ShortcutAdapter
class InitRaises(ShortcutAdapter):
    def __init__(self):
        raise FileNotFoundError("/data/imagenet")
"""



SCAN_OPTIONS = {
    "scan --batch-size 0": (lambda c: c.scan("--batch-size", "0"), opt("--batch-size")),
    "scan --batch-size -1": (lambda c: c.scan("--batch-size", "-1"), opt("--batch-size")),
    "scan --batch-size abc": (lambda c: c.scan("--batch-size", "abc"), opt("--batch-size")),
    "scan --batch-size 1.5": (lambda c: c.scan("--batch-size", "1.5"), opt("--batch-size")),
    "scan --bootstrap 0": (lambda c: c.scan("--bootstrap", "0"), opt("--bootstrap")),
    "scan --bootstrap 9 (below 10)": (lambda c: c.scan("--bootstrap", "9"), opt("--bootstrap")),
    "scan --bootstrap -100": (lambda c: c.scan("--bootstrap", "-100"), opt("--bootstrap")),
    "scan --bootstrap many": (lambda c: c.scan("--bootstrap", "many"), opt("--bootstrap")),
    "scan --gradient-batches 0": (lambda c: c.scan("--gradient-batches", "0"), opt("--gradient-batches")),
    "scan --gradient-batches -2": (lambda c: c.scan("--gradient-batches", "-2"), opt("--gradient-batches")),
    "scan --min-wrong 0": (lambda c: c.scan("--min-wrong", "0"), opt("--min-wrong")),
    "scan --min-wrong -30": (lambda c: c.scan("--min-wrong", "-30"), opt("--min-wrong")),
    "scan --kmeans-k 1": (lambda c: c.scan("--kmeans-k", "1"), opt("--kmeans-k")),
    "scan --kmeans-k 0": (lambda c: c.scan("--kmeans-k", "0"), opt("--kmeans-k")),
    "scan --kmeans-k -4": (lambda c: c.scan("--kmeans-k", "-4"), opt("--kmeans-k")),
    "scan --kmeans-k four": (lambda c: c.scan("--kmeans-k", "four"), opt("--kmeans-k")),
    "scan --embedding-points 9": (lambda c: c.scan("--embedding-points", "9"), opt("--embedding-points")),
    "scan --embedding-points -1": (lambda c: c.scan("--embedding-points", "-1"), opt("--embedding-points")),
    "scan --min-group 0": (lambda c: c.scan("--min-group", "0"), opt("--min-group")),
    "scan --min-group -10": (lambda c: c.scan("--min-group", "-10"), opt("--min-group")),
    "scan --ceiling-per-class 0": (lambda c: c.scan("--ceiling-per-class", "0"), opt("--ceiling-per-class")),
    "scan --ceiling-per-class -5": (lambda c: c.scan("--ceiling-per-class", "-5"), opt("--ceiling-per-class")),
    "scan --precision fp8": (lambda c: c.scan("--precision", "fp8"), r"--precision.*'fp8' is not one of 'fp32', 'bf16', 'fp16'"),
    "scan config precision fp8": (lambda c: c.scan("--config", c.file("biasaudit.toml", '[scan]\nprecision = "fp8"\n')),
                                  r"biasaudit\.toml.*precision is 'fp8', which is unknown\. Available: fp32, bf16, fp16"),
    "scan --precision bf16 on the CPU": (lambda c: c.scan("--precision", "bf16"), r"--precision is 'bf16', which needs a CUDA device"),
    "scan config precision fp16 on the CPU": (lambda c: c.scan("--config", c.file("biasaudit.toml", '[scan]\nprecision = "fp16"\n')),
                                               r"biasaudit\.toml.*precision.*needs a CUDA device"),
    "scan --seed abc": (lambda c: c.scan("--seed", "abc"), opt("--seed")),
    "scan --seed 1.5": (lambda c: c.scan("--seed", "1.5"), opt("--seed")),
    "scan --seed -1": (lambda c: c.scan("--seed", "-1"), opt("--seed")),
    "scan --seed 2**70": (lambda c: c.scan("--seed", str(2**70)), opt("--seed")),
    "scan --projection tsne": (lambda c: c.scan("--projection", "tsne"), r"tsne"),
    "scan --projection PCA (wrong case)": (lambda c: c.scan("--projection", "PCA"), r"PCA"),
    "scan --projection empty": (lambda c: c.scan("--projection", ""), r"(?i)projection"),
    "scan --group-by label": (lambda c: c.scan("--group-by", "label"), r"--group-by.*label|label.*--group-by"),
    "scan --group-by empty": (lambda c: c.scan("--group-by", ""), opt("--group-by")),
    "scan --split ood (not offered)": (lambda c: c.scan("--split", "ood"), r"'ood'"),
    "scan --split empty": (lambda c: c.scan("--split", ""), r"(?i)split"),
    "scan --split TEST (wrong case)": (lambda c: c.scan("--split", "TEST"), r"'TEST'"),
    "scan --conditions blurry": (lambda c: c.scan("--conditions", "missing,blurry"), r"'blurry'"),
    "scan --conditions missing:audio": (lambda c: c.scan("--conditions", "missing:audio"), r"missing:audio"),
    "scan --conditions noisy:audio": (lambda c: c.scan("--conditions", "noisy:audio"), r"noisy:audio"),
    "scan --conditions unknown impairment": (lambda c: c.scan("--conditions", "content=blur:0.1"), r"'blur'"),
    "scan --conditions severity 2": (lambda c: c.scan("--conditions", "content=gaussian:2"), r"content=gaussian:2|Severity 2"),
    "scan --conditions severity -0.5": (lambda c: c.scan("--conditions", "content=gaussian:-0.5"), r"-0\.5"),
    "scan --conditions severity abc": (lambda c: c.scan("--conditions", "content=gaussian:abc"), r"abc"),
    "scan --conditions severity nan": (lambda c: c.scan("--conditions", "content=gaussian:nan"), r"nan"),
    "scan --conditions impairment of the wrong kind": (lambda c: c.scan("--conditions", "bias_cue=blur"), r"blur"),
    "scan --conditions of an unknown modality": (lambda c: c.scan("--conditions", "audio=gaussian:0.5"), r"audio"),
    "scan --conditions empty": (lambda c: c.scan("--conditions", ""), r"(?i)condition"),
    "scan --conditions only commas": (lambda c: c.scan("--conditions", ",,"), r"(?i)condition"),
    "scan --conditions ratio of an unknown modality": (lambda c: c.scan("--conditions", "ratio:audio"), r"ratio:audio"),
    "scan --mute without =": (lambda c: c.scan("--mute", "content"), opt("--mute")),
    "scan --mute with an empty impairment": (lambda c: c.scan("--mute", "content="), opt("--mute")),
    "scan --mute with an empty modality": (lambda c: c.scan("--mute", "=mean"), opt("--mute")),
    "scan --mute of an unknown modality": (lambda c: c.scan("--mute", "audio=mean"), r"--mute.*audio"),
    "scan --mute with a noise": (lambda c: c.scan("--mute", "content=gaussian"), r"--mute.*gaussian"),
    "scan --mute with an unknown impairment": (lambda c: c.scan("--mute", "content=grey"), r"--mute.*grey"),
    "scan --mute a tensor modality with mean": (lambda c: c.scan("--mute", "bias_cue=mean"), r"--mute.*bias_cue"),
    "scan --device nonsense": (lambda c: c.scan("--device", "nonsense"), r"nonsense"),
    "scan --device cuda (CPU-only machine)": (lambda c: c.scan("--device", "cuda"), r"'cuda'"),
    "scan --device cuda:7": (lambda c: c.scan("--device", "cuda:7"), r"cuda:7"),
    "scan --device empty": (lambda c: c.scan("--device", ""), r"(?i)device"),
    "scan --device cpu:x": (lambda c: c.scan("--device", "cpu:x"), r"cpu:x"),
    "scan --device gpu": (lambda c: c.scan("--device", "gpu"), r"'gpu'"),
    "scan --out is the earlier audit.json": (lambda c: c.scan("--out", c.out / "audit.json"), r"audit\.json"),
    "scan --out below the earlier audit.json": (lambda c: c.scan("--out", c.out / "audit.json" / "again"), r"audit\.json"),
    "scan --out name too long": (lambda c: c.scan("--out", c.tmp / ("x" * 300)), opt("--out")),
    "scan --out on /proc": (lambda c: c.scan("--out", "/proc/biasaudit-out"), r"/proc/biasaudit-out"),
    "scan unknown option --epochs": (lambda c: c.scan("--epochs", "3"), opt("--epochs")),
    "scan misspelt option --batchsize": (lambda c: c.scan("--batchsize", "8"), opt("--batchsize")),
    "scan option without its value at the end": (lambda c: c.scan("--seed"), opt("--seed")),
    "scan --trust-checkpoint given a value": (lambda c: c.scan("--trust-checkpoint=yes"), opt("--trust-checkpoint")),
    "scan extra argument": (lambda c: c.scan(str(c.e.tiny_ckpt)), r"tiny\.pt"),
}

SCAN_CONFIG = {
    "scan --config file that does not exist": (lambda c: c.scan("--config", c.inputs / "biasaudit.toml"), r"biasaudit\.toml"),
    "scan --config is a directory": (lambda c: c.scan("--config", c.folder("conf")), DIR + r"conf"),
    "scan --config invalid TOML": (lambda c: c.scan_config("[scan\nbatch_size = "), r"scan\.toml"),
    "scan --config not UTF-8": (lambda c: c.scan("--config", c.file("latin.toml", b"[scan]\nsplit = '\xe9'\n")), r"latin\.toml"),
    "scan --config is a JSON file": (lambda c: c.scan("--config", c.file("settings.json", '{"scan": {"seed": 1}}')), r"settings\.json"),
    "scan --config unknown table [scans]": (lambda c: c.scan_config("[scans]\nseed = 1\n"), r"scan\.toml.*scans"),
    "scan --config scan is not a table": (lambda c: c.scan_config("scan = 3\n"), r"scan\.toml.*scan"),
    "scan --config unknown key epochs": (lambda c: c.scan_config("[scan]\nepochs = 3\n"), r"scan\.toml.*epochs"),
    "scan --config misspelt key batchsize": (lambda c: c.scan_config("[scan]\nbatchsize = 8\n"), r"scan\.toml.*batchsize"),
    "scan --config batch_size = 0": (lambda c: c.scan_config("[scan]\nbatch_size = 0\n"), r"scan\.toml.*batch_size"),
    "scan --config batch_size = -8": (lambda c: c.scan_config("[scan]\nbatch_size = -8\n"), r"scan\.toml.*batch_size"),
    "scan --config batch_size = '8' (a string)": (lambda c: c.scan_config("[scan]\nbatch_size = '8'\n"), r"scan\.toml.*batch_size"),
    "scan --config batch_size = 8.5": (lambda c: c.scan_config("[scan]\nbatch_size = 8.5\n"), r"scan\.toml.*batch_size"),
    "scan --config batch_size = true": (lambda c: c.scan_config("[scan]\nbatch_size = true\n"), r"scan\.toml.*batch_size"),
    "scan --config kmeans_k = 0": (lambda c: c.scan_config("[scan]\nkmeans_k = 0\n"), r"scan\.toml.*kmeans_k"),
    "scan --config kmeans_k = 1": (lambda c: c.scan_config("[scan]\nkmeans_k = 1\n"), r"scan\.toml.*kmeans_k"),
    "scan --config gradient_batches = 0": (lambda c: c.scan_config("[scan]\ngradient_batches = 0\n", drop="--gradient-batches"),
                                           r"scan\.toml.*gradient_batches"),
    "scan --config bootstrap = 5": (lambda c: c.scan_config("[scan]\nbootstrap = 5\n", drop="--bootstrap"), r"scan\.toml.*bootstrap"),
    "scan --config min_wrong = 0": (lambda c: c.scan_config("[scan]\nmin_wrong = 0\n"), r"scan\.toml.*min_wrong"),
    "scan --config embedding_points = 1": (lambda c: c.scan_config("[scan]\nembedding_points = 1\n", drop="--embedding-points"),
                                           r"scan\.toml.*embedding_points"),
    "scan --config min_group = 0": (lambda c: c.scan_config("[scan]\nmin_group = 0\n"), r"scan\.toml.*min_group"),
    "scan --config ceiling_per_class = 0": (lambda c: c.scan_config("[scan]\nceiling_per_class = 0\n"), r"scan\.toml.*ceiling_per_class"),
    "scan --config seed = 1.5": (lambda c: c.scan_config("[scan]\nseed = 1.5\n"), r"scan\.toml.*seed"),
    "scan --config seed = 'zero'": (lambda c: c.scan_config("[scan]\nseed = 'zero'\n"), r"scan\.toml.*seed"),
    "scan --config mute = [1, 2]": (lambda c: c.scan_config("[scan]\nmute = [1, 2]\n"), r"scan\.toml.*mute"),
    "scan --config mute = 'content=mean' (not a list)": (lambda c: c.scan_config("[scan]\nmute = 'content=mean'\n"), r"scan\.toml.*mute"),
    "scan --config mute = ['content']": (lambda c: c.scan_config("[scan]\nmute = ['content']\n"), r"scan\.toml.*mute"),
    "scan --config mute = ['audio=mean']": (lambda c: c.scan_config("[scan]\nmute = ['audio=mean']\n"), r"scan\.toml.*mute"),
    "scan --config mute_compare = 'yes'": (lambda c: c.scan_config("[scan]\nmute_compare = 'yes'\n"), r"scan\.toml.*mute_compare"),
    "scan --config projection = 'tsne'": (lambda c: c.scan_config("[scan]\nprojection = 'tsne'\n", drop="--projection"),
                                          r"scan\.toml.*projection"),
    "scan --config projection = 2": (lambda c: c.scan_config("[scan]\nprojection = 2\n", drop="--projection"), r"scan\.toml.*projection"),
    "scan --config group_by = 'label'": (lambda c: c.scan_config("[scan]\ngroup_by = 'label'\n"), r"scan\.toml.*group_by"),
    "scan --config conditions = 'blurry'": (lambda c: c.scan_config("[scan]\nconditions = 'blurry'\n"), r"scan\.toml.*conditions"),
    "scan --config conditions = ['missing'] (a list)": (lambda c: c.scan_config("[scan]\nconditions = ['missing']\n"),
                                                        r"scan\.toml.*conditions"),
    "scan --config split = 'ood'": (lambda c: c.scan_config("[scan]\nsplit = 'ood'\n"), r"scan\.toml.*split.*'ood'"),
    "scan --config device = 'nonsense'": (lambda c: c.scan_config("[scan]\ndevice = 'nonsense'\n"), r"scan\.toml.*device.*'nonsense'"),
    "scan --config adapter = 3": (lambda c: c.scan_config("[scan]\nadapter = 3\n", adapter=None), r"scan\.toml.*adapter"),
    "scan --config adapter file that does not exist": (
        lambda c: c.scan_config("[scan]\nadapter = 'nope/adapter.py:adapter'\n", adapter=None), r"scan\.toml.*adapter.*nope/adapter\.py"),
    "scan --config unimodal = 'content=x.pt' (not a list)": (lambda c: c.scan_config("[scan]\nunimodal = 'content=x.pt'\n"),
                                                             r"scan\.toml.*unimodal"),
    "scan --config unimodal = ['nothing']": (lambda c: c.scan_config("[scan]\nunimodal = ['nothing']\n"), r"scan\.toml.*unimodal"),
    "scan --config pyproject.toml without [tool.biasaudit]": (
        lambda c: c.scan("--config", c.file("pyproject.toml", "[project]\nname = 'x'\n")), r"pyproject\.toml"),
    "scan --config pyproject.toml with a bad key": (
        lambda c: c.scan("--config", c.file("pyproject.toml", "[tool.biasaudit.scan]\nbatch = 1\n")), r"pyproject\.toml.*batch"),
    "scan biasaudit.toml in the working directory with batch_size = 0": (
        lambda c: (c.file("../cwd/biasaudit.toml", "[scan]\nbatch_size = 0\n"), c.scan())[1], r"biasaudit\.toml.*batch_size"),
    "scan pyproject.toml in the working directory with an unknown table": (
        lambda c: (c.file("../cwd/pyproject.toml", "[tool.biasaudit.scna]\nseed = 1\n"), c.scan())[1], r"pyproject\.toml.*scna"),
}

FIX = {
    "fix --method nonsense": (lambda c: c.fix("--method", "nonsense"), r"'nonsense'"),
    "fix --method CE (wrong case)": (lambda c: c.fix("--method", "CE"), r"'CE'"),
    "fix --method empty": (lambda c: c.fix("--method", ""), r"(?i)method"),
    "fix --epochs 0": (lambda c: c.fix("--epochs", "0"), opt("--epochs")),
    "fix --epochs -1": (lambda c: c.fix("--epochs", "-1"), opt("--epochs")),
    "fix --epochs ten": (lambda c: c.fix("--epochs", "ten"), opt("--epochs")),
    "fix --epochs 1.5": (lambda c: c.fix("--epochs", "1.5"), opt("--epochs")),
    "fix --lr 0": (lambda c: c.fix("--lr", "0"), opt("--lr")),
    "fix --lr -0.001": (lambda c: c.fix("--lr", "-0.001"), opt("--lr")),
    "fix --lr nan": (lambda c: c.fix("--lr", "nan"), opt("--lr")),
    "fix --lr inf": (lambda c: c.fix("--lr", "inf"), opt("--lr")),
    "fix --lr fast": (lambda c: c.fix("--lr", "fast"), opt("--lr")),
    "fix --lr 1e300 (training diverges)": (lambda c: c.fix("--lr", "1e300"), opt("--lr")),
    "fix --batch-size 0": (lambda c: c.fix("--batch-size", "0"), opt("--batch-size")),
    "fix --batch-size -64": (lambda c: c.fix("--batch-size", "-64"), opt("--batch-size")),
    "fix --seed abc": (lambda c: c.fix("--seed", "abc"), opt("--seed")),
    "fix --seed -1": (lambda c: c.fix("--seed", "-1"), opt("--seed")),
    "fix --scale 0": (lambda c: c.mmdb("--scale", "0"), opt("--scale")),
    "fix --scale -4": (lambda c: c.mmdb("--scale", "-4"), opt("--scale")),
    "fix --scale big": (lambda c: c.mmdb("--scale", "big"), opt("--scale")),
    "fix --scale nan": (lambda c: c.mmdb("--scale", "nan"), opt("--scale")),
    "fix --scale inf": (lambda c: c.mmdb("--scale", "inf"), opt("--scale")),
    "fix --scale empty": (lambda c: c.mmdb("--scale", ""), opt("--scale")),
    "fix --scale AUTO (wrong case)": (lambda c: c.mmdb("--scale", "AUTO"), opt("--scale")),
    "fix --bias nonsense": (lambda c: c.mmdb("--bias", "nonsense"), r"'nonsense'"),
    "fix --bias key with an adapter without bias_key": (lambda c: c.mmdb("--bias", "key", adapter=f"{BROKEN}:no_bias"), r"bias_key"),
    "fix --bias-modality of an unknown modality": (
        lambda c: c.mmdb("--bias", "kmeans", "--bias-modality", "audio", adapter=f"{c.adapter_file('branch.py', ONE_BRANCH)}:adapter"),
        r"'audio'"),
    "fix --kmeans-k 1": (lambda c: c.fix("--kmeans-k", "1"), opt("--kmeans-k")),
    "fix --kmeans-k 0": (lambda c: c.mmdb("--kmeans-k", "0"), opt("--kmeans-k")),
    "fix --kmeans-k -2": (lambda c: c.fix("--kmeans-k", "-2"), opt("--kmeans-k")),
    "fix --min-count -1": (lambda c: c.mmdb("--min-count", "-1", "--scale", "4"), opt("--min-count")),
    "fix --min-count abc": (lambda c: c.mmdb("--min-count", "abc"), opt("--min-count")),
    "fix --entropy-gate -1": (lambda c: c.mmdb("--entropy-gate", "-1", "--scale", "4"), opt("--entropy-gate")),
    "fix --entropy-gate nan": (lambda c: c.mmdb("--entropy-gate", "nan", "--scale", "4"), opt("--entropy-gate")),
    "fix --entropy-gate high": (lambda c: c.mmdb("--entropy-gate", "high"), opt("--entropy-gate")),
    "fix --min-group 0 (MMDB)": (lambda c: c.mmdb("--min-group", "0"), opt("--min-group")),
    "fix --lambda-initial -0.1": (lambda c: c.balgrad("--lambda-initial", "-0.1"), opt("--lambda-initial")),
    "fix --lambda-initial 1.5": (lambda c: c.balgrad("--lambda-initial", "1.5"), opt("--lambda-initial")),
    "fix --lambda-initial nan": (lambda c: c.balgrad("--lambda-initial", "nan"), opt("--lambda-initial")),
    "fix --lambda-initial inf": (lambda c: c.balgrad("--lambda-initial", "inf"), opt("--lambda-initial")),
    "fix --lambda-initial half": (lambda c: c.balgrad("--lambda-initial", "half"), opt("--lambda-initial")),
    "fix --lambda-schedule cosine": (lambda c: c.balgrad("--lambda-schedule", "cosine"), opt("--lambda-schedule")),
    "fix --beta -1": (lambda c: c.balgrad("--beta", "-1"), opt("--beta")),
    "fix --beta nan": (lambda c: c.balgrad("--beta", "nan"), opt("--beta")),
    "fix --beta inf": (lambda c: c.balgrad("--beta", "inf"), opt("--beta")),
    "fix --beta one": (lambda c: c.balgrad("--beta", "one"), opt("--beta")),
    "fix --kl-mode forward": (lambda c: c.balgrad("--kl-mode", "forward"), opt("--kl-mode")),
    "fix --projection local": (lambda c: c.balgrad("--projection", "local"), opt("--projection")),
    "fix --projection pca (a scan projection)": (lambda c: c.balgrad("--projection", "pca"), opt("--projection")),
    "fix --head-mode shared": (lambda c: c.balgrad("--head-mode", "shared"), opt("--head-mode")),
    "fix --balgrad-weights mean": (lambda c: c.balgrad("--balgrad-weights", "mean"), opt("--balgrad-weights")),
    "fix --method balgrad with an adapter without branches()": (lambda c: c.balgrad(), r"branches\(model\)"),
    "fix --method mmdb with an adapter without classifier()": (
        lambda c: c.mmdb(adapter=f"{BROKEN}:classifier_set_to_none"), r"classifier\(model\)"),
    "fix --method ce with a model without trainable parameters": (
        lambda c: c.fix(ckpt=c.e.shortcut_ckpt, adapter=SHORTCUT), r"trainable"),
    "fix --scan-projection tsne": (lambda c: c.fix("--scan-projection", "tsne"), opt("--scan-projection")),
    "fix --scan-batch-size 0": (lambda c: c.fix("--scan-batch-size", "0"), opt("--scan-batch-size")),
    "fix --bootstrap 5": (lambda c: c.fix("--bootstrap", "5"), opt("--bootstrap")),
    "fix --min-wrong 0": (lambda c: c.fix("--min-wrong", "0"), opt("--min-wrong")),
    "fix --embedding-points 0": (lambda c: c.fix("--embedding-points", "0"), opt("--embedding-points")),
    "fix --gradient-batches 0": (lambda c: c.fix("--gradient-batches", "0"), opt("--gradient-batches")),
    "fix --ceiling-per-class 0": (lambda c: c.fix("--ceiling-per-class", "0"), opt("--ceiling-per-class")),
    "fix --audit-min-group 0": (lambda c: c.fix("--audit-min-group", "0"), opt("--audit-min-group")),
    "fix --group-by label": (lambda c: c.fix("--group-by", "label"), opt("--group-by")),
    "fix --mute without =": (lambda c: c.fix("--mute", "a"), opt("--mute")),
    "fix --mute with a noise": (lambda c: c.fix("--mute", "a=gaussian"), r"--mute.*gaussian"),
    "fix --mute of an unknown modality": (lambda c: c.fix("--mute", "zz=zero"), r"--mute.*zz"),
    "fix --conditions blurry": (lambda c: c.fix("--conditions", "blurry"), r"'blurry'"),
    "fix --conditions severity 3": (lambda c: c.fix("--conditions", "a=gaussian:3"), r"a=gaussian:3|Severity 3"),
    "fix --split ood": (lambda c: c.fix("--split", "ood"), r"'ood'"),
    "fix --device nonsense": (lambda c: c.fix("--device", "nonsense"), r"nonsense"),
    "fix --device cuda (CPU-only machine)": (lambda c: c.fix("--device", "cuda"), r"'cuda'"),
    "fix --device cuda:3": (lambda c: c.fix("--device", "cuda:3"), r"cuda:3"),
    "fix --before that does not exist": (lambda c: c.fix("--before", c.inputs / "before.json"), r"before\.json"),
    "fix --before is a directory": (lambda c: c.fix("--before", c.folder("audits")), DIR + r"audits"),
    "fix --before is not JSON": (lambda c: c.fix("--before", c.file("before.json", "not json")), r"before\.json"),
    "fix --before is the train log": (lambda c: c.fix("--before", c.e.fix / "train_log.json"), r"train_log\.json"),
    "fix --before is damaged": (lambda c: c.fix("--before", c.audit_like("damaged.json", lambda a: a.pop("summary"),
                                                                         c.e.fix / "before.json")),
                                r"damaged\.json"),
    "fix --before of another checkpoint": (lambda c: c.fix("--before", c.e.audit), r"--before.*audit\.json"),
    "fix --before taken with other settings": (lambda c: c.fix("--before", c.e.fix / "before.json", "--bootstrap", "60"),
                                               r"--before.*before\.json"),
    "fix --resume where no run was interrupted": (lambda c: c.fix("--resume", "--out", c.tmp / "fresh"), opt("--resume")),
    "fix --resume with other settings": (lambda c: c.fix("--resume", "--lr", "0.5"), opt("--resume")),
    "fix --resume with another method": (lambda c: c.mmdb("--resume", "--scale", "4"), r"(?i)resume"),
    "fix --resume from a damaged state": (lambda c: (c.file("../out/state/last.pt", b"garbage"), c.fix("--resume"))[1], r"last\.pt"),
    "fix checkpoint that does not exist": (lambda c: c.fix(ckpt=c.inputs / "nope.pt"), r"nope\.pt"),
    "fix checkpoint is a directory": (lambda c: c.fix(ckpt=c.folder("weights")), DIR + r"weights"),
    "fix checkpoint of random bytes": (lambda c: c.fix(ckpt=c.file("random.pt", bytes(range(256)))), r"random\.pt"),
    "fix checkpoint is a tensor": (lambda c: c.fix(ckpt=c.saved("tensor.pt", torch.eye(4))), r"tensor\.pt"),
    "fix checkpoint of the wrong shapes": (lambda c: c.fix(ckpt=c.saved("shapes.pt", {"classifier.weight": torch.eye(3)})),
                                           r"shapes\.pt"),
    "fix checkpoint pickle that runs code": (
        lambda c: c.fix(ckpt=c.saved("evil.pt", {"classifier.weight": torch.eye(4), "x": CreatesAFile(c.inputs / "pwned")})),
        r"evil\.pt"),
    "fix checkpoint argument missing": (lambda c: c.fix(ckpt=None), r"(?i)missing argument"),
    "fix --adapter not given": (lambda c: c.fix(adapter=None), opt("--adapter")),
    "fix --adapter file that does not exist": (lambda c: c.fix(adapter=f"{c.inputs / 'mine.py'}:adapter"), r"mine\.py"),
    "fix --adapter path is a directory": (lambda c: c.fix(adapter=f"{c.folder('pkg')}:adapter"), DIR + r"pkg"),
    "fix --adapter wrong attribute name": (lambda c: c.fix(adapter=f"{FIXTURES / 'tiny_adapter.py'}:adaptor"), r"adaptor"),
    "fix --adapter file with a syntax error": (lambda c: c.fix(adapter=c.spec("bad.py", "class (:\n")), r"bad\.py"),
    "fix --adapter data() returns None": (lambda c: c.fix(adapter=f"{BROKEN}:data_returns_none"), r"data\("),
    "fix --adapter labels out of range": (lambda c: c.fix(adapter=f"{BROKEN}:labels_out_of_range"), r"label"),
    "fix --out holds the input checkpoint as model.pt": (lambda c: c.fix(ckpt=c.out / "model.pt"), r"model\.pt"),
    "fix --out is the earlier model.pt": (lambda c: c.fix("--out", c.out / "model.pt"), r"model\.pt"),
    "fix --out below the earlier compare.json": (lambda c: c.fix("--out", c.out / "compare.json" / "x"), r"compare\.json"),
    "fix unknown option --epoch": (lambda c: c.fix("--epoch", "2"), opt("--epoch")),
    "fix --resume given a value": (lambda c: c.fix("--resume=true"), opt("--resume")),
}

COMPARE = {
    "compare before that does not exist": (lambda c: c.compare(before=c.inputs / "old.json"), r"old\.json"),
    "compare after that does not exist": (lambda c: c.compare(after=c.inputs / "new.json"), r"new\.json"),
    "compare before is a directory": (lambda c: c.compare(before=c.folder("old")), DIR + r"old"),
    "compare after is a directory": (lambda c: c.compare(after=c.folder("new")), DIR + r"new"),
    "compare before is an empty file": (lambda c: c.compare(before=c.file("old.json", "")), r"old\.json"),
    "compare after is garbage": (lambda c: c.compare(after=c.file("new.json", bytes(range(256)))), r"new\.json"),
    "compare before is a JSON list": (lambda c: c.compare(before=c.file("old.json", "[1, 2]")), r"old\.json"),
    "compare after of another schema": (lambda c: c.compare(after=c.e.fix / "compare.json"), r"compare\.json"),
    "compare before with schema_version 99": (
        lambda c: c.compare(before=c.audit_like("old.json", lambda a: a.update(schema_version=99), c.e.fix / "before.json")), r"old\.json"),
    "compare after holding NaN": (
        lambda c: c.compare(after=c.file("new.json", json.dumps(_with(json.loads((c.e.fix / "after.json").read_text()),
                                                                      ("summary", "full", "accuracy"), math.nan)))), r"new\.json"),
    "compare before truncated": (lambda c: c.compare(before=c.file("old.json", (c.e.fix / "before.json").read_text()[:500])),
                                 r"old\.json"),
    "compare after lacking its summary": (
        lambda c: c.compare(after=c.audit_like("new.json", lambda a: a.pop("summary"), c.e.fix / "after.json")), r"new\.json"),
    "compare before with conditions of the wrong type": (
        lambda c: c.compare(before=c.audit_like("old.json", lambda a: a.update(conditions="full"), c.e.fix / "before.json")),
        r"old\.json"),
    "compare after with a damaged bootstrap section": (
        lambda c: c.compare(after=c.audit_like("new.json", lambda a: a.update(bootstrap={"replicates": "many"}), c.e.fix / "after.json")),
        r"new\.json"),
    "compare after not UTF-8": (lambda c: c.compare(after=c.file("new.json", b'{"schema": "\xff"}')), r"new\.json"),
    "compare audits of different runs": (lambda c: c.compare(after=c.e.audit), r"before\.json.*audit\.json|audit\.json.*before\.json"),
    "compare after is the html report": (lambda c: c.compare(after=c.e.scan / "audit.html"), r"audit\.html"),
    "compare --train-log that does not exist": (lambda c: c.compare("--train-log", c.inputs / "log.json"), r"log\.json"),
    "compare --train-log is a directory": (lambda c: c.compare("--train-log", c.folder("logs")), DIR + r"logs"),
    "compare --train-log is not JSON": (lambda c: c.compare("--train-log", c.file("log.json", "step 1 loss 0.3")), r"log\.json"),
    "compare --train-log is a JSON list": (lambda c: c.compare("--train-log", c.file("log.json", "[1, 2]")), r"log\.json"),
    "compare --train-log is an audit": (lambda c: c.compare("--train-log", c.e.fix / "before.json"), r"before\.json"),
    "compare --train-log lacking its training section": (
        lambda c: c.compare("--train-log", c.file("log.json", json.dumps({"steps": []}))), r"log\.json"),
    "compare --out is the earlier compare.json": (lambda c: c.compare("--out", c.out / "compare.json"), r"compare\.json"),
    "compare --out below the earlier compare.html": (lambda c: c.compare("--out", c.out / "compare.html" / "x"), r"compare\.html"),
    "compare only one audit given": (lambda c: c.compare(after=None), r"(?i)missing argument.*after"),
    "compare three audits given": (lambda c: c.compare(str(c.e.audit)), r"(?i)audit\.json|extra argument"),
}


def _with(data: dict, keys: tuple, value: Any) -> dict:
    node = data
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return data


REPORT = {
    "report audit that does not exist": (lambda c: c.report(audit=c.inputs / "audit.json"), r"audit\.json"),
    "report audit is a directory": (lambda c: c.report(audit=c.folder("results")), DIR + r"results"),
    "report audit is an empty file": (lambda c: c.report(audit=c.file("audit.json", "")), r"audit\.json"),
    "report audit of random bytes": (lambda c: c.report(audit=c.file("audit.json", bytes(range(256)))), r"audit\.json"),
    "report audit is a JSON string": (lambda c: c.report(audit=c.file("audit.json", '"audit"')), r"audit\.json"),
    "report audit of another schema (compare.json)": (lambda c: c.report(audit=c.e.fix / "compare.json"), r"compare\.json"),
    "report audit is a train log": (lambda c: c.report(audit=c.e.fix / "train_log.json"), r"train_log\.json"),
    "report audit with schema_version 2": (lambda c: c.report(audit=c.audit_like("v2.json", lambda a: a.update(schema_version=2))),
                                           r"v2\.json"),
    "report audit holding Infinity": (
        lambda c: c.report(audit=c.file("inf.json", json.dumps(_with(json.loads(c.e.audit.read_text()), ("summary", "missing", "gap"),
                                                                      math.inf)))), r"inf\.json"),
    "report audit truncated": (lambda c: c.report(audit=c.file("cut.json", c.e.audit.read_text()[:1000])), r"cut\.json"),
    "report audit lacking its conditions": (lambda c: c.report(audit=c.audit_like("lacking.json", lambda a: a.pop("conditions"))),
                                            r"lacking\.json"),
    "report audit with a string accuracy": (
        lambda c: c.report(audit=c.audit_like("typed.json", lambda a: _with(a, ("summary", "full", "accuracy"), "high"))), r"typed\.json"),
    "report audit with a damaged samples section": (
        lambda c: c.report(audit=c.audit_like("samples.json", lambda a: a.update(samples={"n": -1}))), r"samples\.json"),
    "report audit is the html page": (lambda c: c.report(audit=c.e.scan / "audit.html"), r"audit\.html"),
    "report --out is a directory": (lambda c: c.report("--out", c.out), opt("--out")),
    "report --out below the earlier report.html": (lambda c: c.report("--out", c.out / "report.html" / "r.html"), r"report\.html"),
    "report --out name too long": (lambda c: c.report("--out", c.out / ("r" * 300 + ".html")), opt("--out")),
    "report --out on /proc": (lambda c: c.report("--out", "/proc/report.html"), r"/proc/report\.html"),
    "report damaged audit beside earlier html (default --out)": (
        lambda c: ["report", c.file("../out/report.json", "{}")], r"report\.json"),
    "report audit argument missing": (lambda c: c.report(audit=None), r"(?i)missing argument"),
}

GATE_RULES = {
    "gate no rule given": (lambda c: c.gate(), r"(?i)no gate rule"),
    "gate --max-gap abc": (lambda c: c.gate("--max-gap", "abc"), r"--max-gap 'abc'"),
    "gate --max-gap -1": (lambda c: c.gate("--max-gap", "-1"), r"--max-gap '-1'"),
    "gate --max-gap nan": (lambda c: c.gate("--max-gap", "nan"), r"--max-gap 'nan'"),
    "gate --max-gap inf": (lambda c: c.gate("--max-gap", "inf"), r"--max-gap 'inf'"),
    "gate --max-gap -inf": (lambda c: c.gate("--max-gap", "-inf"), r"--max-gap '-inf'"),
    "gate --max-gap empty": (lambda c: c.gate("--max-gap", ""), r"--max-gap"),
    "gate --max-gap missing=": (lambda c: c.gate("--max-gap", "missing="), r"--max-gap 'missing='"),
    "gate --max-gap =5": (lambda c: c.gate("--max-gap", "=5"), r"--max-gap '=5'"),
    "gate --max-gap missing=abc": (lambda c: c.gate("--max-gap", "missing=abc"), r"--max-gap 'missing=abc'"),
    "gate --max-gap missing=-3": (lambda c: c.gate("--max-gap", "missing=-3"), r"--max-gap 'missing=-3'"),
    "gate --max-gap missing=nan": (lambda c: c.gate("--max-gap", "missing=nan"), r"--max-gap 'missing=nan'"),
    "gate --max-gap missing=inf": (lambda c: c.gate("--max-gap", "missing=inf"), r"--max-gap 'missing=inf'"),
    "gate --max-gap blurry=5 (unknown group)": (lambda c: c.gate("--max-gap", "blurry=5"), r"--max-gap 'blurry=5'"),
    "gate --max-gap missing:content=5 (a condition, not a group)": (lambda c: c.gate("--max-gap", "missing:content=5"),
                                                                     r"--max-gap 'missing:content=5'"),
    "gate --max-gap 5%": (lambda c: c.gate("--max-gap", "5%"), r"--max-gap '5%'"),
    "gate --max-gap 1,5 (decimal comma)": (lambda c: c.gate("--max-gap", "1,5"), r"--max-gap '1,5'"),
    "gate --max-gap-increase -1": (lambda c: c.gate("--max-gap-increase", "-1", "--baseline", c.e.audit), r"--max-gap-increase '-1'"),
    "gate --max-gap-increase abc": (lambda c: c.gate("--max-gap-increase", "abc", "--baseline", c.e.audit), r"--max-gap-increase 'abc'"),
    "gate --max-gap-increase noisy=nan": (lambda c: c.gate("--max-gap-increase", "noisy=nan", "--baseline", c.e.audit),
                                          r"--max-gap-increase 'noisy=nan'"),
    "gate --max-gap-increase colour=2": (lambda c: c.gate("--max-gap-increase", "colour=2", "--baseline", c.e.audit),
                                         r"--max-gap-increase 'colour=2'"),
    "gate --max-gap-increase without --baseline": (lambda c: c.gate("--max-gap-increase", "2"), r"--max-gap-increase.*--baseline"),
    "gate --min-accuracy 90 (no condition)": (lambda c: c.gate("--min-accuracy", "90"), r"--min-accuracy '90'"),
    "gate --min-accuracy full=101": (lambda c: c.gate("--min-accuracy", "full=101"), r"--min-accuracy 'full=101'"),
    "gate --min-accuracy full=-1": (lambda c: c.gate("--min-accuracy", "full=-1"), r"--min-accuracy 'full=-1'"),
    "gate --min-accuracy full=abc": (lambda c: c.gate("--min-accuracy", "full=abc"), r"--min-accuracy 'full=abc'"),
    "gate --min-accuracy full=nan": (lambda c: c.gate("--min-accuracy", "full=nan"), r"--min-accuracy 'full=nan'"),
    "gate --min-accuracy =90": (lambda c: c.gate("--min-accuracy", "=90"), r"--min-accuracy '=90'"),
    "gate --min-accuracy full=9000": (lambda c: c.gate("--min-accuracy", "full=9000"),
                                                                                 r"--min-accuracy 'full=9000'"),
    "gate --min-accuracy of an unknown condition": (lambda c: c.gate("--min-accuracy", "blurry=50"), r"--min-accuracy.*blurry"),
    "gate --min-accuracy of a condition the audit lacks": (lambda c: c.gate("--min-accuracy", "missing:image=50"),
                                                           r"--min-accuracy.*missing:image"),
    "gate --min-worst-group 60 (no condition)": (lambda c: c.gate("--min-worst-group", "60"), r"--min-worst-group '60'"),
    "gate --min-worst-group full=150": (lambda c: c.gate("--min-worst-group", "full=150"), r"--min-worst-group 'full=150'"),
    "gate --min-worst-group full=-5": (lambda c: c.gate("--min-worst-group", "full=-5"), r"--min-worst-group 'full=-5'"),
    "gate --min-worst-group full=x": (lambda c: c.gate("--min-worst-group", "full=x"), r"--min-worst-group 'full=x'"),
    "gate --min-worst-group full=inf": (lambda c: c.gate("--min-worst-group", "full=inf"), r"--min-worst-group 'full=inf'"),
    "gate --min-worst-group of an unknown condition": (lambda c: c.gate("--min-worst-group", "blurry=50"), r"--min-worst-group.*blurry"),
    "gate --max-worst-group-drop without --baseline": (lambda c: c.gate("--max-worst-group-drop", "2"),
                                                       r"--max-worst-group-drop.*--baseline"),
    "gate --max-worst-group-drop -2": (lambda c: c.gate("--max-worst-group-drop", "-2", "--baseline", c.e.audit),
                                       r"--max-worst-group-drop '-2'"),
    "gate --max-worst-group-drop abc": (lambda c: c.gate("--max-worst-group-drop", "abc", "--baseline", c.e.audit),
                                        r"--max-worst-group-drop 'abc'"),
    "gate --max-worst-group-drop full=nan": (lambda c: c.gate("--max-worst-group-drop", "full=nan", "--baseline", c.e.audit),
                                             r"--max-worst-group-drop 'full=nan'"),
    "gate --max-worst-group-drop of an unknown condition": (
        lambda c: c.gate("--max-worst-group-drop", "blurry=2", "--baseline", c.e.audit), r"--max-worst-group-drop.*blurry"),
    "gate --max-bias-follow-increase without --baseline": (lambda c: c.gate("--max-bias-follow-increase", "5"),
                                                           r"--max-bias-follow-increase.*--baseline"),
    "gate --max-bias-follow-increase -5": (lambda c: c.gate("--max-bias-follow-increase", "-5", "--baseline", c.e.audit),
                                           r"--max-bias-follow-increase '-5'"),
    "gate --max-bias-follow-increase five": (lambda c: c.gate("--max-bias-follow-increase", "five", "--baseline", c.e.audit),
                                             r"--max-bias-follow-increase 'five'"),
    "gate --max-bias-follow-increase inf": (lambda c: c.gate("--max-bias-follow-increase", "inf", "--baseline", c.e.audit),
                                            r"--max-bias-follow-increase 'inf'"),
    "gate --max-bias-follow-increase of an unknown modality": (
        lambda c: c.gate("--max-bias-follow-increase", "audio=5", "--baseline", c.e.audit), r"--max-bias-follow-increase.*audio"),
    "gate --max-jsd-drop without --baseline": (lambda c: c.gate("--max-jsd-drop", "0.1"), r"--max-jsd-drop.*--baseline"),
    "gate --max-jsd-drop -0.1": (lambda c: c.gate("--max-jsd-drop", "-0.1", "--baseline", c.e.audit), opt("--max-jsd-drop")),
    "gate --max-jsd-drop abc": (lambda c: c.gate("--max-jsd-drop", "abc", "--baseline", c.e.audit), opt("--max-jsd-drop")),
    "gate --max-jsd-drop nan": (lambda c: c.gate("--max-jsd-drop", "nan", "--baseline", c.e.audit), opt("--max-jsd-drop")),
    "gate --max-jsd-drop inf": (lambda c: c.gate("--max-jsd-drop", "inf", "--baseline", c.e.audit), opt("--max-jsd-drop")),
    "gate --jsd median": (lambda c: c.gate("--jsd", "median", "--max-gap", "90"), r"--jsd 'median'"),
    "gate --jsd empty": (lambda c: c.gate("--jsd", "", "--max-gap", "90"), opt("--jsd")),
    "gate --significant given a value": (lambda c: c.gate("--significant=yes", "--max-gap", "90"), opt("--significant")),
    "gate unknown option --max-gaps": (lambda c: c.gate("--max-gaps", "5"), opt("--max-gaps")),
}

GATE_FILES = {
    "gate current audit that does not exist": (lambda c: c.gate("--max-gap", "90", current=c.inputs / "cand.json"), r"cand\.json"),
    "gate current audit is a directory": (lambda c: c.gate("--max-gap", "90", current=c.folder("cand")), DIR + r"cand"),
    "gate current audit is empty": (lambda c: c.gate("--max-gap", "90", current=c.file("cand.json", "")), r"cand\.json"),
    "gate current audit is garbage": (lambda c: c.gate("--max-gap", "90", current=c.file("cand.json", bytes(range(256)))), r"cand\.json"),
    "gate current audit is a compare.json": (lambda c: c.gate("--max-gap", "90", current=c.e.fix / "compare.json"), r"compare\.json"),
    "gate current audit with schema_version 0": (
        lambda c: c.gate("--max-gap", "90", current=c.audit_like("cand.json", lambda a: a.update(schema_version=0))), r"cand\.json"),
    "gate current audit holding NaN": (
        lambda c: c.gate("--max-gap", "90", current=c.file("cand.json", json.dumps(_with(json.loads(c.e.audit.read_text()),
                                                                                        ("summary", "missing", "gap"), math.nan)))),
        r"cand\.json"),
    "gate current audit lacking its summary": (
        lambda c: c.gate("--max-gap", "90", current=c.audit_like("cand.json", lambda a: a.pop("summary"))), r"cand\.json"),
    "gate current audit with a string gap": (
        lambda c: c.gate("--max-gap", "90", current=c.audit_like("cand.json", lambda a: _with(a, ("summary", "missing", "gap"), "big")))
        , r"cand\.json"),
    "gate current audit argument missing": (lambda c: c.gate("--max-gap", "90", current=None), r"(?i)missing argument"),
    "gate --baseline that does not exist": (lambda c: c.gate("--max-gap-increase", "2", "--baseline", c.inputs / "base.json"),
                                            r"base\.json"),
    "gate --baseline is a directory": (lambda c: c.gate("--max-gap-increase", "2", "--baseline", c.folder("base")), DIR + r"base"),
    "gate --baseline is garbage": (lambda c: c.gate("--max-gap-increase", "2", "--baseline", c.file("base.json", "<xml/>")), r"base\.json"),
    "gate --baseline is damaged": (
        lambda c: c.gate("--max-gap-increase", "2", "--baseline", c.audit_like("base.json", lambda a: a.update(conditions=[1, 2]))),
        r"base\.json"),
    "gate --baseline of different conditions": (
        lambda c: c.gate("--max-gap-increase", "2", "--baseline", c.e.fix / "before.json"), r"before\.json"),
    "gate --junit is a directory": (lambda c: c.gate("--max-gap", "90", "--junit", c.out), opt("--junit")),
    "gate --junit below the earlier gate.xml": (lambda c: c.gate("--max-gap", "90", "--junit", c.out / "gate.xml" / "j.xml"),
                                                r"gate\.xml"),
    "gate --junit on /proc": (lambda c: c.gate("--max-gap", "90", "--junit", "/proc/gate.xml"), r"/proc/gate\.xml"),
    "gate --junit name too long": (lambda c: c.gate("--max-gap", "90", "--junit", c.out / ("j" * 300 + ".xml")), opt("--junit")),
}

GATE_CONFIG = {
    "gate --config that does not exist": (lambda c: c.gate("--config", c.inputs / "rules.toml"), r"rules\.toml"),
    "gate --config is a directory": (lambda c: c.gate("--config", c.folder("rules")), DIR + r"rules"),
    "gate --config invalid TOML": (lambda c: c.gate_config("[gate]\nmax_gap = = 3\n"), r"rules\.toml"),
    "gate --config unknown table [gait]": (lambda c: c.gate_config("[gait]\nmax_gap = 3\n"), r"rules\.toml.*gait"),
    "gate --config gate is not a table": (lambda c: c.gate_config("gate = 'strict'\n"), r"rules\.toml.*gate"),
    "gate --config unknown key max_gaps": (lambda c: c.gate_config("[gate]\nmax_gaps = 3\n"), r"rules\.toml.*max_gaps"),
    "gate --config max_gap = 'abc'": (lambda c: c.gate_config("[gate]\nmax_gap = 'abc'\n"), r"rules\.toml.*max_gap"),
    "gate --config max_gap = -1": (lambda c: c.gate_config("[gate]\nmax_gap = -1\n"), r"rules\.toml.*max_gap"),
    "gate --config max_gap = nan": (lambda c: c.gate_config("[gate]\nmax_gap = nan\n"), r"rules\.toml.*max_gap"),
    "gate --config max_gap = inf": (lambda c: c.gate_config("[gate]\nmax_gap = inf\n"), r"rules\.toml.*max_gap"),
    "gate --config max_gap = true": (lambda c: c.gate_config("[gate]\nmax_gap = true\n"), r"rules\.toml.*max_gap"),
    "gate --config max_gap = [5] (a list)": (lambda c: c.gate_config("[gate]\nmax_gap = [5]\n"), r"rules\.toml.*max_gap"),
    "gate --config max_gap = {blurry = 1}": (lambda c: c.gate_config("[gate]\nmax_gap = {blurry = 1}\n"), r"rules\.toml.*max_gap.*blurry"),
    "gate --config max_gap = {missing = 'x'}": (lambda c: c.gate_config("[gate]\nmax_gap = {missing = 'x'}\n"), r"rules\.toml.*max_gap"),
    "gate --config max_gap = {missing = -2} overridden on another key": (
        lambda c: c.gate_config("[gate]\nmax_gap = {missing = -2}\n", "--max-gap", "noisy=5"), r"rules\.toml.*max_gap"),
    "gate --config max_gap_increase = -2": (lambda c: c.gate_config(f"[gate]\nbaseline = '{c.e.audit}'\nmax_gap_increase = -2\n"),
                                            r"rules\.toml.*max_gap_increase"),
    "gate --config min_accuracy = 90 (not a table)": (lambda c: c.gate_config("[gate]\nmin_accuracy = 90\n"), r"rules\.toml.*min_accuracy"),
    "gate --config min_accuracy = {full = 101}": (lambda c: c.gate_config("[gate]\nmin_accuracy = {full = 101}\n"),
                                                  r"rules\.toml.*min_accuracy"),
    "gate --config min_accuracy = {full = '90'}": (lambda c: c.gate_config("[gate]\nmin_accuracy = {full = '90'}\n"),
                                                   r"rules\.toml.*min_accuracy"),
    "gate --config min_accuracy of an unknown condition": (lambda c: c.gate_config("[gate]\nmin_accuracy = {blurry = 50}\n"),
                                                           r"rules\.toml.*min_accuracy.*blurry"),
    "gate --config min_worst_group = {full = -1}": (lambda c: c.gate_config("[gate]\nmin_worst_group = {full = -1}\n"),
                                                    r"rules\.toml.*min_worst_group"),
    "gate --config max_worst_group_drop = 'two'": (lambda c: c.gate_config("[gate]\nmax_worst_group_drop = 'two'\n"),
                                                   r"rules\.toml.*max_worst_group_drop"),
    "gate --config max_bias_follow_increase = {audio = 5}": (
        lambda c: c.gate_config(f"[gate]\nbaseline = '{c.e.audit}'\nmax_bias_follow_increase = {{audio = 5}}\n"),
        r"rules\.toml.*max_bias_follow_increase.*audio"),
    "gate --config max_jsd_drop = -1": (lambda c: c.gate_config(f"[gate]\nbaseline = '{c.e.audit}'\nmax_jsd_drop = -1\n"),
                                        r"rules\.toml.*max_jsd_drop"),
    "gate --config max_jsd_drop = nan": (lambda c: c.gate_config(f"[gate]\nbaseline = '{c.e.audit}'\nmax_jsd_drop = nan\n"),
                                         r"rules\.toml.*max_jsd_drop"),
    "gate --config max_jsd_drop = inf": (lambda c: c.gate_config(f"[gate]\nbaseline = '{c.e.audit}'\nmax_jsd_drop = inf\n"),
                                         r"rules\.toml.*max_jsd_drop"),
    "gate --config max_jsd_drop = '0.1'": (lambda c: c.gate_config("[gate]\nmax_jsd_drop = '0.1'\n"), r"rules\.toml.*max_jsd_drop"),
    "gate --config jsd = 'median'": (lambda c: c.gate_config("[gate]\njsd = 'median'\nmax_gap = 90\n"), r"rules\.toml.*jsd"),
    "gate --config significant = 'yes'": (lambda c: c.gate_config("[gate]\nsignificant = 'yes'\nmax_gap = 90\n"),
                                          r"rules\.toml.*significant"),
    "gate --config baseline = 3": (lambda c: c.gate_config("[gate]\nbaseline = 3\nmax_gap = 90\n"), r"rules\.toml.*baseline"),
    "gate --config baseline that does not exist": (
        lambda c: c.gate_config("[gate]\nbaseline = 'old/base.json'\nmax_gap_increase = 2\n"), r"rules\.toml.*base\.json"),
    "gate biasaudit.toml in the working directory with max_gap = -5": (
        lambda c: (c.file("../cwd/biasaudit.toml", "[gate]\nmax_gap = -5\n"), c.gate())[1], r"biasaudit\.toml.*max_gap"),
}

DEMO = {
    "demo --split nonsense": (lambda c: c.demo("--split", "nonsense"), r"'nonsense'"),
    "demo --split empty": (lambda c: c.demo("--split", ""), r"(?i)split"),
    "demo --seed abc": (lambda c: c.demo("--seed", "abc"), opt("--seed")),
    "demo --out is the earlier audit.json": (lambda c: c.demo("--out", c.out / "audit.json"), r"audit\.json"),
    "demo --out below the earlier audit.html": (lambda c: c.demo("--out", c.out / "audit.html" / "demo"), r"audit\.html"),
    "demo --out on /proc": (lambda c: c.demo("--out", "/proc/demo"), r"/proc/demo"),
    "demo unknown option --epochs": (lambda c: c.demo("--epochs", "1"), opt("--epochs")),
}

APP = {
    "unknown command scann": (lambda c: ["scann", c.e.shortcut_ckpt], r"scann"),
    "unknown command audit": (lambda c: ["audit", c.e.shortcut_ckpt], r"audit"),
    "unknown global option --verbose": (lambda c: ["--verbose", "scan"], opt("--verbose")),
}

GROUPS = {"scan": {**SCAN_CHECKPOINTS, **SCAN_ADAPTERS, **SCAN_OPTIONS, **SCAN_CONFIG}, "fix": FIX, "compare": COMPARE,
          "report": REPORT, "gate": {**GATE_RULES, **GATE_FILES, **GATE_CONFIG}, "demo": DEMO, "app": APP}
CASES = {case: (command, *spec) for command, cases in GROUPS.items() for case, spec in cases.items()}


# ---------------------------------------------------------------------------------------------------------------------
# What every case must show.


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and directory below root, hidden ones included: relative path -> bytes (None for a directory,
    the link target for a symlink)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = b"-> " + str(path.readlink()).encode()
        elif path.is_dir():
            found[key] = None
        else:
            found[key] = path.read_bytes()
    return found


def the_sentence(stderr: str) -> str:
    """The one sentence a mistake prints: biasaudit's 'error: ...' line, or click's usage error ('Usage: ...' then the
    'Error' box or line), whose message is returned with the box drawn around it removed."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    if lines[0].strip().startswith(("Usage:", "╭", "Error:")):
        body = []
        for line in lines:
            if line.strip().startswith("Usage:"):
                continue
            text = line.strip().strip("│").strip()
            if not text or text.startswith(("Try '", "╭", "╰")):
                continue
            body.append(text.removeprefix("Error: "))
        assert body, stderr
        return " ".join(body)
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_sentence_exit_2_and_leaves_earlier_results_alone(case, earlier, tmp_path, monkeypatch):
    command, make_args, pattern = CASES[case]
    c = Ctx(tmp_path, earlier, command)
    args = make_args(c)
    monkeypatch.chdir(c.cwd)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an adapter file imported from inputs/ leaves no __pycache__
    before = snapshot(tmp_path)
    result = invoke(args)
    shown = f"exit {result.exit_code}; stderr:\n{result.stderr}\nstdout:\n{result.stdout[-2000:]}\nexception: {result.exception!r}"
    assert "Traceback" not in result.output + result.stderr, shown
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    assert result.exit_code == 2, shown
    sentence = the_sentence(result.stderr)
    assert re.search(pattern, sentence), f"{pattern!r} not in the sentence: {sentence}"
    after = snapshot(tmp_path)
    assert sorted(set(after) - set(before)) == [], "the failed run created files"
    assert sorted(set(before) - set(after)) == [], "the failed run removed files"
    assert [k for k in before if before[k] != after[k]] == [], "the failed run changed files"


def test_the_catalogue_holds_at_least_250_distinct_mistakes():
    assert len(CASES) >= 250
    assert all(command in ("scan", "fix", "compare", "report", "gate", "demo", "app") for command, *_ in CASES.values())
