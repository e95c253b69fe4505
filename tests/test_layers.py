"""The dependency direction of docs/architecture.md, enforced: every import of every module (module level
and inside functions) is parsed, and one that points up the layers fails with the file, line and rule; no two
modules import each other, directly or around a loop (package __init__ files included); and imports inside
functions are kept for what needs them (an optional extra, the declared exception), each saying why."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import groundup

ROOT = Path(groundup.__file__).parent
# rank of each top-level part of the package: a module may import its own part and parts of lower rank
RANK = {"utils": 0, "presets": 0, "config": 1, "kernels": 1, "multimodal": 2, "nn": 2, "models": 3, "tokenizer": 3,
        "checkpoint": 4, "calc": 4, "peft": 5, "quant": 5, "data": 5, "vision": 5, "audio": 5, "generate": 6,
        "train": 7, "align": 8, "eval": 7, "serve": 8, "cli": 9, "__init__": 10, "__main__": 10}
# the one place a model reaches up, at call time: the save/load/generate entry points every model offers
ALLOWED_UP = {("models/base.py", "checkpoint"), ("models/base.py", "generate")}
# parts that must not even be imported lazily by the layers below them at module level
HEAVY = ("checkpoint", "generate", "train", "cli")


# the most imports of groundup's own modules that may sit inside a function
MAX_FUNCTION_LEVEL = 40


def _part(module: str) -> str:
    return module.split(".")[1] if module.startswith("groundup.") and "." in module else "__init__"


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported groundup module, at module level) for every import in the file."""
    package = ".".join(path.relative_to(ROOT.parent).parts[:-1])  # the package the file is in
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                names = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            if n == "groundup" or n.startswith("groundup."):
                out.append((node.lineno, n, id(node) in top))
    return out


def _violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        mine = rel.split("/")[0].removesuffix(".py")
        for line, module, _ in _imports(path):
            theirs = _part(module)
            if theirs == mine or theirs not in RANK:
                continue
            if RANK[theirs] >= RANK[mine] and (rel, theirs) not in ALLOWED_UP:
                bad.append(f"{rel}:{line} imports {module} ({theirs}, rank {RANK[theirs]}) from {mine} "
                           f"(rank {RANK[mine]})")
    return bad


def test_imports_follow_the_layers():
    assert _violations() == []


def test_no_model_or_nn_module_imports_upward_at_module_level():
    bad = [f"{p.relative_to(ROOT)}:{line} {m}" for sub in ("nn", "models") for p in (ROOT / sub).rglob("*.py")
           for line, m, top in _imports(p) if top and _part(m) in HEAVY]
    assert bad == []


def test_every_part_has_a_rank():
    parts = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts <= set(RANK), sorted(parts - set(RANK))


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """A mutation: an nn module that imports train must be reported (the test can fail)."""
    fake = ROOT / "nn" / "_layers_probe.py"
    fake.write_text("from ..train import loop\n")
    try:
        assert any("_layers_probe.py:1 imports groundup.train" in v for v in _violations())
    finally:
        fake.unlink()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: they never run, so they make no dependency."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out |= {id(n) for child in node.body for n in ast.walk(child)}
    return out


def _graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """module -> the groundup modules it imports (``from . import x`` of a submodule x is an edge to x), less
    the declared exception; and every function-level import as 'file:line import' (with its comment line)."""
    paths = {_module_name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    inner = []
    for mod, path in paths.items():
        rel = path.relative_to(ROOT).as_posix()
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        source = path.read_text()
        tree = ast.parse(source, str(path))
        top, skip = set(map(id, tree.body)), _type_checking_only(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level \
                    else ""
                name = ".".join(x for x in (base, node.module or "") if x)
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in paths else name for a in node.names]
            else:
                targets = [a.name for a in node.names]
            targets = [t for t in targets if t in paths and t != mod]
            if targets and id(node) not in top:
                inner.append(f"{rel}:{node.lineno} {source.splitlines()[node.lineno - 1].strip()}")
            graph[mod] |= {t for t in targets if (rel, _part(t)) not in ALLOWED_UP}
    return graph, inner


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a list of module names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            visit(v)
    return found


@functools.lru_cache(maxsize=1)
def _package_graph() -> tuple[dict[str, set[str]], list[str]]:
    return _graph()  # parsed once for the tests that read the package as it is


def test_no_import_cycles():
    assert _cycles(_package_graph()[0]) == []


def test_the_cycle_check_reports_a_planted_cycle():
    """A mutation: two modules that import each other inside functions (the lazy way cycles hide) are found."""
    a, b = ROOT / "utils" / "_probe_a.py", ROOT / "utils" / "_probe_b.py"
    a.write_text("def f():\n    from . import _probe_b\n")
    b.write_text("from . import _probe_a\n")
    try:
        assert ["groundup.utils._probe_a", "groundup.utils._probe_b"] in _cycles(_graph()[0])
    finally:
        a.unlink()
        b.unlink()


def test_function_level_imports_are_few_and_say_why():
    inner = _package_graph()[1]
    assert len(inner) <= MAX_FUNCTION_LEVEL, "\n".join(inner)
    unexplained = [line for line in inner if "#" not in line]
    assert unexplained == [], "a function-level import needs a comment saying why it is not at module level"
