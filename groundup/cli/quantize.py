"""`groundup quantize FOLDER --to int8|int4|nf4|fp4 [--group 64] [--head] --out DIR`: a weight-only quantized copy
of a model folder (its tokenizer files copied along), loadable with groundup.from_pretrained; nf4/fp4 folders are
in the bitsandbytes format transformers loads. Each weight is quantized as it is read (quant.load_quantized)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


def add_quantize_parser(sub) -> None:
    p = sub.add_parser("quantize", help="weight-only int8 / int4 / nf4 copy of a model folder")
    p.add_argument("folder", help="a local HF model folder (config.json + safetensors)")
    p.add_argument("--to", required=True, choices=("int8", "int4", "nf4", "fp4"),
                   help="int8: per output row; int4: groups of inputs; nf4/fp4: QLoRA's 4-bit blocks (bitsandbytes)")
    p.add_argument("--group", type=int, default=64, help="int4 group size: 32, 64 or 128 inputs; nf4/fp4 block "
                   "size: 32 ... 4096 values (default 64)")
    p.add_argument("--no-double-quant", action="store_true", help="nf4/fp4: keep the block scales in fp32")
    p.add_argument("--head", action="store_true", help="quantize an untied lm_head too")
    p.add_argument("--out", required=True, help="the folder to write (replaced atomically)")
    p.set_defaults(func=main_quantize)


def main_quantize(args: argparse.Namespace) -> int:
    from ..checkpoint.io import weight_files
    from ..quant import load_quantized

    src, out = Path(args.folder), Path(args.out)
    if src.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the source folder: write the quantized copy elsewhere")
    extra = {"double_quant": not args.no_double_quant} if args.to in ("nf4", "fp4") else {}
    model = load_quantized(src, args.to, dtype=None, group_size=args.group, include_head=args.head, **extra)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    floats = sum(f.stat().st_size for f in weight_files(src))
    size = _tensor_bytes(model)
    print(f"{len(model.quantization['modules'])} linear layers -> {args.to}"
          + (f" (groups of {args.group})" if args.to == "int4" else "")
          + (f" (blocks of {args.group}{', double-quantized' if extra['double_quant'] else ''})" if extra else "")
          + f"; {model.num_params():,} parameters; weights {floats / 2**20:,.1f} MiB -> {size / 2**20:,.1f} MiB; "
          f"wrote {out}")
    return 0


def _tensor_bytes(model) -> int:
    """Bytes of the model's tensors, a tied one counted once."""
    return sum({t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}.values())
