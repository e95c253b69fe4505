"""What a reader can hold: no function of the package runs over 80 lines (from its def to its last line), and
Config's top level stays small, the fields only some models use living in records."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import groundup
import groundup as gu

ROOT = Path(groundup.__file__).parent
MAX_FUNCTION_LINES = 80
MAX_CONFIG_FIELDS = 60


def _long_functions(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {length} lines")
    return out


def test_no_function_over_80_lines():
    assert _long_functions() == []


def test_the_length_check_sees_a_long_function(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert _long_functions(tmp_path) == [f"m.py:1 f: {MAX_FUNCTION_LINES + 1} lines"]


def test_config_top_level_is_small_and_its_records_take_flat_names():
    assert len(dataclasses.fields(gu.Config)) <= MAX_CONFIG_FIELDS
    cfg = gu.Config(rope_theta=5e5, rotary_fraction=0.5, pooler=True, arch="encoder", pos="rope", n_heads=4,
                    d_model=32, n_layers=2, vocab_size=50)  # flat names
    assert (cfg.rope.theta, cfg.rope.fraction, cfg.heads.pooler) == (5e5, 0.5, True)
    dense = gu.Config.preset("tiny-llama")
    assert dense.moe is None and dense.audio is None and dense.image is None and dense.n_experts == 0
    moe = dense.replace(n_experts=4, top_k=2, capacity_factor=1.25)
    assert (moe.moe.n_experts, moe.moe.capacity(8)) == (4, 5)
    assert moe.replace(n_experts=0).moe is None
    # a config written before the records (flat keys) and one written now (nested) read the same
    flat = {k: v for k, v in moe.to_dict().items() if k not in ("moe", "rope")}
    flat.update({"n_experts": 4, "top_k": 2, "capacity_factor": 1.25, "rope_theta": moe.rope.theta})
    assert gu.Config.from_dict(flat) == gu.Config.from_dict(moe.to_dict()) == moe
    assert moe.value("rope_theta") == moe.rope.theta and dense.value("top_k") is None
