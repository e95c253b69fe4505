"""`groundup quantize FOLDER --to int8|int4|nf4|fp4 [--group 64] [--head] [--method rtn|gptq|awq --calib FILE ...]
--out DIR`: a weight-only quantized copy of a model folder (its tokenizer files copied along), loadable with
groundup.from_pretrained. nf4/fp4 folders are in the bitsandbytes format transformers loads; gptq/awq ones in the
GPTQ checkpoint layout. Round to nearest quantizes each weight as it is read (quant.load_quantized); GPTQ and
AWQ calibrate on --samples windows of --seqlen tokens of the --calib text, block by block with a progress bar."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..checkpoint.hf import check_model_folder, from_pretrained
from ..checkpoint.io import weight_files
from ..nn.qlinear import QUANTIZED
from ..quant import load_quantized
from ..quant.awq import quantize_awq
from ..quant.calibrate import calibration_ids
from ..quant.gptq import quantize_gptq
from ..tokenizer import Tokenizer

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
    p.add_argument("--method", choices=("rtn", "gptq", "awq"), default="rtn",
                   help="rtn: round to nearest; gptq (Frantar et al. 2022) / awq (Lin et al. 2023): calibrated, "
                        "with --to int4 (gptq also int8, or --bits 2/3)")
    p.add_argument("--bits", type=int, default=None, help="gptq: 2, 3, 4 or 8 bits (default: from --to)")
    p.add_argument("--calib", nargs="+", default=None, help="gptq/awq: text files to calibrate on")
    p.add_argument("--samples", type=int, default=128, help="gptq/awq: calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=512, help="gptq/awq: tokens a window (default 512)")
    p.add_argument("--act-order", action="store_true", help="gptq: quantize columns by descending Hessian diagonal")
    p.add_argument("--damp", type=float, default=0.01, help="gptq: dampening, a fraction of the mean diagonal")
    p.add_argument("--head", action="store_true", help="quantize an untied lm_head too")
    p.add_argument("--out", required=True, help="the folder to write (replaced atomically)")
    p.set_defaults(func=main_quantize)


def main_quantize(args: argparse.Namespace) -> int:
    src, out = Path(args.folder), Path(args.out)
    if src.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the source folder: write the quantized copy elsewhere")
    if args.method != "rtn":
        return _calibrated(args, src, out)
    extra = {"double_quant": not args.no_double_quant} if args.to in ("nf4", "fp4") else {}
    model = load_quantized(src, args.to, dtype=None, group_size=args.group, include_head=args.head, **extra)
    _write(model, src, out)
    floats = sum(f.stat().st_size for f in weight_files(src))
    size = _tensor_bytes(model)
    print(f"{len(model.quantization.modules)} linear layers -> {args.to}"
          + (f" (groups of {args.group})" if args.to == "int4" else "")
          + (f" (blocks of {args.group}{', double-quantized' if extra['double_quant'] else ''})" if extra else "")
          + f"; {model.num_params():,} parameters; weights {floats / 2**20:,.1f} MiB -> {size / 2**20:,.1f} MiB; "
          f"wrote {out}")
    return 0


def _calibrated(args: argparse.Namespace, src: Path, out: Path) -> int:
    """GPTQ or AWQ: every setting and the calibration text checked before the model is read."""
    import time

    bits = args.bits or {"int4": 4, "int8": 8}.get(args.to)
    if args.to in ("nf4", "fp4") or bits is None:
        raise ValueError(f"--method {args.method} makes integer codes: use --to int4 (or int8), not --to {args.to}")
    if args.method == "awq" and bits != 4:
        raise ValueError("--method awq quantizes to 4 bits (--to int4)")
    if args.head:
        raise ValueError(f"--head: {args.method} quantizes the blocks' linear layers; the head stays float")
    if not args.calib:
        raise ValueError(f"--method {args.method} needs calibration text: --calib FILE ... (text of the model's "
                         "domain)")
    check_model_folder(src, "causal_lm", "a decoder-only")
    ids = calibration_ids(args.calib, Tokenizer.from_pretrained(src), samples=args.samples, seqlen=args.seqlen)
    model = from_pretrained(src, dequantize=True)  # calibration needs float weights (a GGUF file is decoded)
    stored = model.embed.weight.dtype
    model.float()  # the searches and Hessians in fp32 (fast on any CPU); the float parts are saved as they came
    t0 = time.perf_counter()
    if args.method == "gptq":
        quantize_gptq(model, ids, bits=bits, group_size=args.group, damp=args.damp, act_order=args.act_order)
    else:
        quantize_awq(model, ids, group_size=args.group)
    seconds = time.perf_counter() - t0
    for module in model.modules():  # the float parts back in the checkpoint's dtype (the codes keep theirs)
        if not isinstance(module, QUANTIZED):
            for p in module.parameters(recurse=False):
                p.data = p.data.to(stored)
    _write(model, src, out)
    print(f"{len(model.quantization.modules)} linear layers -> {args.method} int{bits} (groups of {args.group}) "
          f"in {seconds:.0f} s from {ids.shape[0]} x {ids.shape[1]} calibration tokens; wrote {out} (GPTQ layout, "
          f"{model.quantization.checkpoint_format})")
    return 0


def _write(model, src: Path, out: Path) -> None:
    """The quantized folder, with the source's tokenizer files copied along."""
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)


def _tensor_bytes(model) -> int:
    """Bytes of the model's tensors, a tied one counted once."""
    return sum({t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}.values())
