"""The dependency direction of docs/architecture.md, enforced: every import of every module (module level
and inside functions) is parsed, and one that points up the layers fails with the file, line and rule."""

from __future__ import annotations

import ast
from pathlib import Path

import groundup

ROOT = Path(groundup.__file__).parent
# rank of each top-level part of the package: a module may import its own part and parts of lower rank
RANK = {"utils": 0, "presets": 0, "config": 1, "multimodal": 2, "nn": 2, "models": 3, "tokenizer": 3, "checkpoint": 4,
        "calc": 4, "peft": 5, "quant": 5, "data": 5, "vision": 5, "audio": 5, "generate": 6, "train": 7, "align": 8,
        "eval": 7, "serve": 8, "cli": 9, "__init__": 10, "__main__": 10}
# the one place a model reaches up, at call time: the save/load/generate entry points every model offers
ALLOWED_UP = {("models/base.py", "checkpoint"), ("models/base.py", "generate")}
# parts that must not even be imported lazily by the layers below them at module level
HEAVY = ("checkpoint", "generate", "train", "cli")


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
