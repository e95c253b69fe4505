"""`groundup finetune`: instruction fine-tuning of a decoder-only model folder: full, LoRA, IA3, BitFit,
prompt tuning or prefix tuning.

    groundup finetune MODEL_DIR --data train.jsonl --method lora --r 8 --alpha 16 --steps 300 --out out/ft

The data (data/instruct.py: prompt/completion, instruction/response or conversation records) is read and
checked in full before the model is loaded; the loss covers answer tokens only. ``--method full`` trains
every weight; ``lora`` low-rank updates of ``--target-modules``; ``ia3`` rescaling vectors; ``bitfit``
the biases only; ``prompt`` a soft prompt; ``prefix`` per-layer key/value prefixes. The run writes
<out>/checkpoint (resumable: the model, or only the adapter for the adapter methods), and at the end
<out>/adapter (a peft folder) and, with --merge (LoRA, IA3), <out>/merged (a plain model folder).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

METHODS = ("full", "lora", "ia3", "bitfit", "prompt", "prefix")
LR = {"full": 1e-4, "lora": 1e-3, "ia3": 3e-3, "bitfit": 1e-3, "prompt": 3e-2, "prefix": 1e-2}


def add_finetune_parser(sub) -> None:
    p = sub.add_parser("finetune", help="instruction fine-tuning of a decoder-only model folder (full, LoRA, IA3, "
                       "BitFit)")
    p.add_argument("model", help="HF folder of a decoder-only model with tokenizer.json")
    p.add_argument("--data", nargs="+", required=True, help="JSONL files of instruction records")
    p.add_argument("--method", choices=METHODS, default="lora")
    p.add_argument("--r", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (the update is scaled by alpha / r)")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--target-modules", nargs="+", default=None,
                   help="module-name suffixes to adapt (LoRA default q_proj v_proj; IA3 k_proj v_proj down_proj)")
    p.add_argument("--feedforward-modules", nargs="+", default=["down_proj"],
                   help="IA3: targets rescaled on their input (the FFN activation), default down_proj")
    p.add_argument("--target-regex", default=None, help="a regex matching whole module names, in place of "
                   "--target-modules (e.g. 'blocks\\.[0-3]\\.attn\\.(q|v)_proj')")
    p.add_argument("--modules-to-save", nargs="+", default=None, help="LoRA/IA3: whole modules trained too and "
                   "saved in the adapter (peft's modules_to_save), e.g. embed lm_head")
    p.add_argument("--num-virtual-tokens", type=int, default=20, help="prompt/prefix tuning: virtual tokens")
    p.add_argument("--prefix-projection", action="store_true", help="prefix tuning: train through an MLP "
                   "(Li & Liang's reparameterisation)")
    p.add_argument("--prompt-init-text", default=None, help="prompt tuning: initialise the soft prompt from the "
                   "embeddings of this text's tokens (default: random)")
    p.add_argument("--separator", default=None, help="prompt/completion separator (default '\\n\\n###\\n\\n')")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="batch examples of similar length (within groups of 50 batches, in shuffled order) "
                   "to pad less (default on)")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 for LoRA, 1e-4 for full")
    p.add_argument("--min-lr", type=float, default=None, help="default lr / 10")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--out", default="out/finetune")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--merge", action="store_true", help="LoRA/IA3: also write <out>/merged, a plain model folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=main_finetune)


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    import torch

    from .. import peft
    from ..checkpoint.hf import config_from_hf, from_pretrained
    from ..checkpoint.io import read_json
    from ..data.instruct import SEPARATOR, InstructionData, load_examples, prefixed
    from ..tokenizer import Tokenizer
    from ..train import TrainArgs, train
    from .generate import check_model_folder

    check_model_folder(args.model, "causal_lm", "a decoder-only")
    adapter = None  # built now, so that its settings are checked before any data or weight is read
    if args.modules_to_save and args.method not in ("lora", "ia3"):
        raise ValueError(f"--modules-to-save goes with --method lora or ia3, not {args.method}")
    if args.method == "lora":
        adapter = peft.LoraConfig(r=args.r, alpha=args.alpha, dropout=args.lora_dropout,
                                  target_modules=args.target_regex or args.target_modules or ["q_proj", "v_proj"],
                                  modules_to_save=args.modules_to_save)
    elif args.method in ("prompt", "prefix"):
        if args.num_virtual_tokens < 1:
            raise ValueError(f"--num-virtual-tokens {args.num_virtual_tokens} must be >= 1")
        if args.merge:
            raise ValueError(f"--merge: a {args.method} has no weight to merge into; drop --merge")
        adapter = args.method
    elif args.method == "ia3":
        adapter = peft.IA3Config(target_modules=args.target_regex or args.target_modules or ["k_proj", "v_proj",
                                                                                      "down_proj"],
                                 feedforward_modules=args.feedforward_modules, modules_to_save=args.modules_to_save)
    lr = args.lr if args.lr is not None else LR[args.method]
    targs = TrainArgs(out_dir=args.out, steps=args.steps, batch_size=args.batch_size, micro_batch=args.micro_batch,
                      lr=lr, min_lr=args.min_lr if args.min_lr is not None else lr / 10, warmup=args.warmup,
                      weight_decay=args.weight_decay, dtype=args.dtype, eval_every=args.eval_every,
                      save_every=args.save_every, seed=args.seed, progress=not args.quiet, name="finetune")
    tok = Tokenizer.from_pretrained(args.model)
    cfg = config_from_hf(read_json(Path(args.model) / "config.json"))
    examples = load_examples(args.data, tok, separator=SEPARATOR if args.separator is None else args.separator,
                             max_len=cfg.max_seq_len if cfg.pos == "learned" else None)
    if args.method == "prompt":  # every prompt starts with the virtual tokens (ids after the vocabulary)
        virtual = list(range(cfg.vocab_size, cfg.vocab_size + args.num_virtual_tokens))
        examples = [prefixed(ex, virtual) for ex in examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    data = InstructionData.split(examples, val_fraction=args.val_fraction, pad_id=pad, seed=args.seed,
                                 group_by_length=args.batch_size if args.group_by_length else 0)
    log(f"data: {len(data.train):,} training / {len(data.val):,} validation examples, longest "
        f"{data.block_size + 1} tokens")

    model = from_pretrained(args.model, dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())
    if args.method == "lora":
        peft.apply_lora(model, adapter)
    elif args.method == "ia3":
        peft.apply_ia3(model, adapter)
    elif args.method == "bitfit":
        peft.apply_bitfit(model)
    elif args.method == "prompt":
        init = tok.encode(args.prompt_init_text, add_special_tokens=False) if args.prompt_init_text else None
        peft.apply_prompt_tuning(model, args.num_virtual_tokens, init_ids=init)
    elif args.method == "prefix":
        peft.apply_prefix_tuning(model, args.num_virtual_tokens, projection=args.prefix_projection)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"method: {args.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(vars(args), indent=2, default=str))
    t0 = time.perf_counter()
    summary = train(model, data, targs, tokenizer=tok, resume=args.resume, log=log)
    summary.update(method=args.method, trainable=trainable, total=total, seconds=time.perf_counter() - t0,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if adapter is not None:
        peft.save_adapter(model, out / "adapter")
        tok.save_pretrained(out / "adapter")
        summary["adapter"] = str(out / "adapter")
        if args.method == "prompt":
            summary["virtual ids"] = f"{cfg.vocab_size}..{cfg.vocab_size + args.num_virtual_tokens - 1} (put them " \
                                     "before a prompt's ids)"
        if args.merge:
            peft.merge_and_unload(model).save_pretrained(out / "merged")
            tok.save_pretrained(out / "merged")
            summary["merged"] = str(out / "merged")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def main_finetune(args: argparse.Namespace) -> int:
    s = run(args)
    print("")
    print(f"method            {s['method']}: {s['trainable']:,} trainable of {s['total']:,} parameters "
          f"({100 * s['trainable'] / s['total']:.3f}%)")
    print(f"time, peak RSS    {s['seconds']:.0f} s, {s['peak_rss_mb']:,.0f} MB")
    print(f"validation loss   {s['val_loss_start']:.3f} at the start -> {s['val_loss']:.3f} at the end")
    print(f"checkpoint        {s['checkpoint']}")
    for key in ("adapter", "merged", "virtual ids"):
        if key in s:
            print(f"{key:<17} {s[key]}")
    return 0
