"""`groundup quantize FOLDER --to int8|int4 [--group 64] [--head] --out DIR`: a weight-only quantized copy of a
model folder (its tokenizer files copied along), loadable with groundup.from_pretrained."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


def add_quantize_parser(sub) -> None:
    p = sub.add_parser("quantize", help="weight-only int8 / int4 copy of a model folder")
    p.add_argument("folder", help="a local HF model folder (config.json + safetensors)")
    p.add_argument("--to", required=True, choices=("int8", "int4"), help="int8: per output row; int4: groups")
    p.add_argument("--group", type=int, default=64, help="int4 group size: 32, 64 or 128 inputs (default 64)")
    p.add_argument("--head", action="store_true", help="quantize an untied lm_head too")
    p.add_argument("--out", required=True, help="the folder to write (replaced atomically)")
    p.set_defaults(func=main_quantize)


def main_quantize(args: argparse.Namespace) -> int:
    from ..checkpoint.hf import from_pretrained
    from ..quant import quantize

    src, out = Path(args.folder), Path(args.out)
    if src.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the source folder: write the quantized copy elsewhere")
    model = from_pretrained(src)
    before = model.num_params()
    floats = _tensor_bytes(model)
    quantize(model, args.to, group_size=args.group, include_head=args.head)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    size = _tensor_bytes(model)
    print(f"{len(model.quantization['modules'])} linear layers -> {args.to}"
          + (f" (groups of {args.group})" if args.to == "int4" else "")
          + f"; {before:,} parameters; tensors {floats / 2**20:,.1f} MiB -> {size / 2**20:,.1f} MiB; wrote {out}")
    return 0


def _tensor_bytes(model) -> int:
    """Bytes of the model's tensors, a tied one counted once."""
    return sum({t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}.values())
