"""`groundup upcycle`: a dense checkpoint made a mixture of experts (its FFN copied into every expert)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from ..checkpoint.hf import config_to_hf, from_pretrained
from ..checkpoint.io import CheckpointError
from ..config import Router
from ..models.upcycle import upcycle, upcycled_config
from ..tokenizer import Tokenizer


def main_upcycle(args: argparse.Namespace) -> int:
    dense = from_pretrained(args.model, dequantize=True)  # experts are copied from float weights
    moe = dict(router=args.router, capacity_factor=args.capacity_factor,
               router_z_loss_coef=args.z_loss, router_aux_loss_coef=args.aux_loss)
    layers = None
    if args.every > 1:  # every k-th layer, counting from the k-th (as Switch and Qwen2-MoE's decoder_sparse_step)
        layers = [i for i in range(dense.config.n_stack_layers) if (i + 1) % args.every == 0]
    # the first layout that holds the result: the dense family's MoE sibling, else groundup's own
    sibling = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}
    native = "groundup_seq2seq" if dense.config.arch == "seq2seq" else "groundup"
    candidates = [args.family] if args.family else [sibling.get(dense.config.family, ""), native]
    family, error = None, None
    for name in [c for c in candidates if c]:  # checked on the config alone: the weights are copied once
        try:
            config_to_hf(upcycled_config(dense.config, args.experts, args.top_k, moe_layers=layers, family=name,
                                         **moe))
            family = name
            break
        except CheckpointError as err:
            error = err
    if family is None:
        raise ValueError(f"no layout holds the upcycled model: {error}")
    model = upcycle(dense, args.experts, args.top_k, moe_layers=layers, family=family, **moe)
    model.save_pretrained(args.out)
    if (Path(args.model) / "tokenizer.json").is_file():  # the tokenizer travels with the weights

        Tokenizer.from_pretrained(args.model).save_pretrained(args.out)
    total, active = model.num_params(), model.num_params(active=True)
    print(f"upcycled {args.model} -> {args.out} ({model.config.family}): {args.experts} experts top-{args.top_k} "
          f"in {model.config.moe_layer_count} layers; {total:,} parameters, {active:,} active "
          f"(dense: {dense.num_params():,})")
    return 0


def add_moe_parser(sub) -> None:
    u = sub.add_parser("upcycle", help="make a dense checkpoint an MoE: its FFN copied into every expert, a new "
                       "router (Komatsuzaki et al., 2022)")
    u.add_argument("model", help="dense HF model folder")
    u.add_argument("out", help="output folder")
    u.add_argument("--experts", type=int, default=8)
    u.add_argument("--top-k", type=int, default=2)
    u.add_argument("--router", default="topk_softmax", choices=get_args(Router),
                   help="topk_softmax keeps the dense model's outputs exactly at first (weights sum to 1)")
    u.add_argument("--capacity-factor", type=float, default=None)
    u.add_argument("--every", type=int, default=1, help="make every k-th layer MoE (default: all)")
    u.add_argument("--z-loss", type=float, default=0.0, help="router z-loss coefficient for later training")
    u.add_argument("--aux-loss", type=float, default=0.01, help="load-balancing loss coefficient")
    u.add_argument("--family", default=None, help="the layout to write (default: the dense family's MoE sibling "
                   "when it holds the result, else groundup's own)")
    u.set_defaults(func=main_upcycle)
