"""`groundup calc | presets | demo`: sizes, memory and FLOPs of an architecture, and a forward pass."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .. import calc
from ..checkpoint import vision
from ..checkpoint.hf import config_from_hf
from ..checkpoint.io import read_json
from ..config import Config
from ..models import meta_model
from ..models.causal_lm import CausalLM
from ..multimodal import PRESETS_MM, preset
from ..presets import PRESETS


def _config_from(spec: str) -> Config:
    """A preset name, a Config JSON file, or an HF model folder (its config.json)."""
    from pathlib import Path

    path = Path(spec)
    if path.is_dir():

        return config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
    return Config.load(spec)


def _vision_config(spec: str):
    """A vision preset, or a vit/clip/siglip/llava folder's config; None for anything else."""
    from pathlib import Path

    if spec in PRESETS_MM:
        return preset(spec)
    config = Path(spec) / "config.json"
    if config.is_file():

        hf = read_json(config)
        if hf.get("model_type") in vision.MODEL_TYPES:
            return vision.config_of(hf, str(config))
    return None


def cmd_calc(args: argparse.Namespace) -> int:
    mm = _vision_config(args.model)
    if mm is not None:
        print(calc.vision_report(mm, Path(args.model).name))
        return 0
    cfg = _config_from(args.model)
    if cfg.n_mels:  # Whisper: the audio front end and the parts
        print(calc.audio_report(cfg, Path(args.model).name))
        return 0
    if args.kv_heads is not None:
        cfg = cfg.replace(n_kv_heads=args.kv_heads)
    print(calc.report(cfg, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    width = max(map(len, PRESETS))
    for name in PRESETS:
        cfg = Config.preset(name)
        b = calc.param_breakdown(cfg)
        if cfg.n_mels:  # the audio stem and the encoder's own position table: counted on the meta device

            b = {"total": meta_model(cfg).num_params()}
        active = f" ({calc.human(b['active'])} active)" if cfg.n_experts else ""
        print(f"{name:<{width}}  {cfg.family:<9} {calc.human(b['total']):>8}{active}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build a preset, print its parameter table, run one forward pass on random tokens."""

    torch.manual_seed(0)
    cfg = Config.preset(args.preset)
    print(calc.report(cfg, seq_len=args.seq_len))
    t0 = time.perf_counter()
    model = CausalLM(cfg).eval()
    print(f"\nbuilt {args.preset} with {model.num_params():,} parameters in {time.perf_counter() - t0:.1f}s")
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len))
    with torch.inference_mode():
        model(ids)  # warm-up
        t0 = time.perf_counter()
        logits = model(ids)
        dt = time.perf_counter() - t0
    n = args.batch * args.seq_len
    print(f"forward: input {tuple(ids.shape)} -> logits {tuple(logits.shape)} in {dt * 1e3:.0f} ms "
          f"({n / dt:,.0f} tokens/s, {calc.flops_per_token(cfg, args.seq_len) * n / dt / 1e9:.1f} GFLOP/s)")
    return 0


def add_calc_parsers(sub) -> None:
    c = sub.add_parser("calc", help="parameters, FLOPs, KV cache, memory and Chinchilla figures of a model")
    c.add_argument("model", help="preset name, Config JSON file or HF model folder")
    c.add_argument("--batch", type=int, default=1)
    c.add_argument("--seq-len", type=int, default=None, help="context length (default: max_seq_len)")
    c.add_argument("--dtype", default="float16", choices=sorted(calc.DTYPE_BYTES))
    c.add_argument("--kv-heads", type=int, default=None, help="override n_kv_heads (what-if for GQA/MQA)")
    c.set_defaults(func=cmd_calc)

    s = sub.add_parser("presets", help="list the named architectures")
    s.set_defaults(func=cmd_presets)

    d = sub.add_parser("demo", help="build a preset, print its table, run a forward pass")
    d.add_argument("--preset", default="gpt2")
    d.add_argument("--batch", type=int, default=1)
    d.add_argument("--seq-len", type=int, default=128)
    d.set_defaults(func=cmd_demo)
