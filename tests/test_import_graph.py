"""The package's import graph: layers that import only downwards, and no cycle among the imports a module runs when it is loaded. A cycle there is what makes
a module half-initialised when a sibling reads it (an ImportError or an AttributeError that depends on which module
a user imported first). Imports inside functions (lazy, for start-up time) and under TYPE_CHECKING are not
load-time edges; `from package import submodule` is an edge to the submodule, as Python resolves it.

The layers, lowest first, read in the order a scan's data flows (docs/architecture.md). A module may import its own
layer and those below; an import upwards, lazy ones inside functions included, is a layer reaching into code that is
meant to be built on it (e.g. training into a scan's internals rather than its entry points)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "biasaudit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path, modules: set[str]) -> set[str]:
    """The biasaudit modules `path` imports at module level (if/try blocks included, TYPE_CHECKING blocks not)."""
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
                found.update(submodules)
                if len(submodules) < len(node.names):  # names defined in the module itself
                    found.add(node.module)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_module_imports_itself_back_at_load_time():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: load_time_imports(path, modules) - {name} for name, path in paths.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


LAYERS = (
    ("errors", "_core"),
    ("data", "adapters"),
    ("diagnostics", "methods"),
    ("verdict",),
    ("report",),
    ("results",),
    ("scanning",),
    ("comparing",),
    ("gating",),
    ("training",),
    ("choosing",),
    ("datasets", "integrations"),
    ("api",),
    ("cli", "__main__"),
)
# Modules the layers above may import only through these entry points, never their other modules directly; the
# public facade (api) is exempt, and the command line goes through it (test_cli_calls_the_api).
ENTRY_POINTS = {"biasaudit.scanning": ("biasaudit.scanning", "biasaudit.scanning.audit", "biasaudit.scanning.config")}
FACADES = ("biasaudit.api", "biasaudit.cli")
MAX_LINES = 350


def layer_of(module: str) -> int:
    top = module.split(".")[1]
    return next(rank for rank, names in enumerate(LAYERS) if top in names)


def every_import(path: Path, modules: set[str]) -> set[str]:
    """The biasaudit modules `path` imports anywhere (inside functions too), TYPE_CHECKING blocks aside."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            named = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update(named & modules or {node.module})
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        if module == "biasaudit":  # the package's face: names re-exported lazily from every layer
            continue
        for target in sorted(imported - {"biasaudit"}):
            if layer_of(target) > layer_of(module):
                found.append(f"{module} -> {target}")
            for package, entries in ENTRY_POINTS.items():
                if (target.startswith(package + ".") and target not in entries and not module.startswith((package + ".", *FACADES))):
                    found.append(f"{module} -> {target} (internal to {package}; use {', '.join(entries)})")
    return found


def test_every_package_belongs_to_a_layer():
    tops = {module_name(p).split(".")[1] for p in PACKAGE.rglob("*.py") if module_name(p) != "biasaudit"}
    assert tops <= {name for names in LAYERS for name in names}


def test_no_layer_imports_one_above_it():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: every_import(path, set(paths)) - {name} for name, path in paths.items()}
    assert upward_imports(graph) == []


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"biasaudit.data.batches": {"biasaudit.training.loop"}}) == ["biasaudit.data.batches -> biasaudit.training.loop"]
    assert upward_imports({"biasaudit.training.fix": {"biasaudit.scanning.engine"}}) == [
        "biasaudit.training.fix -> biasaudit.scanning.engine (internal to biasaudit.scanning; use biasaudit.scanning, "
        "biasaudit.scanning.audit, biasaudit.scanning.config)"]
    assert upward_imports({"biasaudit.training.fix": {"biasaudit.scanning.audit", "biasaudit.data.batches"}}) == []


def test_no_module_is_longer_than_the_limit():
    """design.md: modules stay small, one concept each; a module past the limit holds two."""
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_cli_calls_the_api():
    """Issue 23, item 1: every command is a public call plus argument parsing and printing, so the command line imports
    from biasaudit only the package, its public API (biasaudit.api and its modules), the errors and its own modules;
    and biasaudit.verdict.words, the number formats every report prints its figures in (pure and light), so that the
    console's table shows a figure exactly as audit.html does. PENDING lists what is still to move under the API, each
    with the internals it reaches; an entry no longer needed fails the test, so the list only shrinks."""
    allowed = ("biasaudit", "biasaudit.errors", "biasaudit.verdict.words")
    pending = {
        # torchrun: joining the process group and comparing every rank's flags and files (ba.scan(distributed=True) joining
        # a torchrun itself would replace it).
        "biasaudit.cli.torchrun": {"biasaudit._core.output_paths", "biasaudit._core.sharding", "biasaudit.data.adapter",
                                   "biasaudit.data.checkpoint", "biasaudit.scanning.agreement", "biasaudit.scanning.audit"},
    }
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    reached = {}
    for name, path in sorted(paths.items()):
        if name == "biasaudit.cli" or name.startswith("biasaudit.cli."):
            internal = {target for target in every_import(path, set(paths))
                        if target not in allowed and not target.startswith(("biasaudit.api", "biasaudit.cli"))}
            if internal:
                reached[name] = internal
    assert {name: sorted(internal) for name, internal in reached.items() if internal - pending.get(name, set())} == {}
    assert sorted(name for name in pending if not reached.get(name)) == [], "a pending module no longer needs its exception"
