"""`groundup pretrain` (and `torchrun ... -m groundup.train`): tokenizer, data, model, training, a sample.

The objective follows the model: next-token prediction for decoders (--model llama-125m ...), masked LM
for encoders (--model tiny-bert ...), span corruption for encoder-decoders (--model tiny-t5 ...).

Settings come from defaults, then an optional YAML file (--config, keys = the flag names with
underscores), then the flags given on the command line. Everything that can be checked is checked before
training starts: sources exist and hold text, the block fits the model's context, the batch splits.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

SETTINGS = "settings.json"  # the run's resolved settings, written into --out; --resume starts from them
DEFAULTS: dict[str, Any] = {
    "model": "tiny-llama", "d_model": None, "n_layers": None, "n_heads": None, "n_kv_heads": None, "d_ff": None,
    "data": ["python-stdlib"], "text_field": "text", "max_bytes": None, "tokenizer": None, "vocab_size": 4096,
    "tokenizer_pattern": "gpt2",
    "block_size": 128, "batch_size": 16, "micro_batch": None, "steps": 200, "lr": 3e-3, "min_lr": 3e-4,
    "warmup": 20, "weight_decay": 0.1, "grad_clip": 1.0, "dtype": "float32", "eval_every": 50, "eval_batches": 8,
    "save_every": 100, "seed": 0, "val_fraction": 0.01, "out": "out", "resume": False, "prompt": "def ",
    "sample_tokens": 48, "quiet": False, "activation_checkpointing": False, "compile": False,
    "fsdp": False,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file with any of the settings below")
    p.add_argument("--model", help="preset name or Config JSON (default tiny-llama)")
    for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, help="override the model's size")
    p.add_argument("--data", nargs="+", help="sources: python-stdlib, a file or a glob, each optionally "
                   "SPEC=WEIGHT (default python-stdlib)")
    p.add_argument("--text-field", dest="text_field", help="JSONL/parquet text field (default text)")
    p.add_argument("--max-bytes", dest="max_bytes", type=int, help="read at most this much text per source")
    p.add_argument("--tokenizer", help="tokenizer folder; default: train a byte-level BPE on the data")
    p.add_argument("--vocab-size", dest="vocab_size", type=int, help="for a trained tokenizer (default 4096)")
    p.add_argument("--tokenizer-pattern", dest="tokenizer_pattern",
                   help="for a trained tokenizer: gpt2 (default), gpt4, digits (one token per digit, as Llama) "
                   "or a regular expression")
    for name, kind in (("block_size", int), ("batch_size", int), ("micro_batch", int), ("steps", int),
                       ("lr", float), ("min_lr", float), ("warmup", int), ("weight_decay", float),
                       ("grad_clip", float), ("eval_every", int), ("eval_batches", int), ("save_every", int),
                       ("seed", int), ("val_fraction", float), ("sample_tokens", int)):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    p.add_argument("--dtype", choices=("float32", "bfloat16"))
    p.add_argument("--out", help="output folder (default out)")
    p.add_argument("--resume", action="store_const", const=True, help="continue from <out>/checkpoint")
    p.add_argument("--prompt", help="text to continue at the end (default 'def ')")
    p.add_argument("--quiet", action="store_const", const=True, help="no progress bars")
    p.add_argument("--activation-checkpointing", dest="activation_checkpointing", action="store_const", const=True,
                   help="recompute activations in backward (less memory, more compute)")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--fsdp", action="store_const", const=True,
                   help="under torchrun: shard parameters, gradients and optimizer state over the processes "
                   "(for models that do not fit one device) instead of replicating them (DDP)")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    s = dict(DEFAULTS)
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown} (known: {sorted(DEFAULTS)})")
        s.update(loaded)
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    s.update(given)
    saved = Path(s["out"]) / SETTINGS
    if s["resume"] and saved.is_file():
        # --resume continues the run as it was set up (data, model, schedule); flags given now still win.
        s = {**DEFAULTS, **json.loads(saved.read_text()), **given, "resume": True}
    return s


def sources(s: dict[str, Any]):
    from ..data import Source

    out = []
    for item in s["data"]:
        if isinstance(item, dict):
            item = dict(item)
            spec = item.pop("spec", None)
            if spec is None:
                raise ValueError(f"data entry {item} needs a 'spec' (a file, glob or python-stdlib)")
            item.setdefault("text_field", s["text_field"])
            item.setdefault("max_bytes", s["max_bytes"])
            out.append(Source(spec, **item))
            continue
        spec, weight = str(item), 1.0
        if "=" in spec:
            spec, w = spec.rsplit("=", 1)
            try:
                weight = float(w)
            except ValueError:
                raise ValueError(f"--data {item!r}: the weight after '=' must be a number") from None
        out.append(Source(spec, weight=weight, text_field=s["text_field"], max_bytes=s["max_bytes"]))
    for src in out:
        src.files()  # a glob that matches nothing fails now, not after the tokenizer is trained
    return out


def run(s: dict[str, Any], log=print) -> dict:
    import torch

    from .. import Config, Tokenizer
    from ..data import Mixture
    from ..generate import generate
    from ..models import build_model
    from ..train import TrainArgs, train

    rank = int(os.environ.get("RANK", "0"))
    out = Path(s["out"])
    srcs = sources(s)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / SETTINGS).write_text(json.dumps({k: v for k, v in s.items() if k != "resume"}, indent=2))
    targs = TrainArgs(out_dir=str(out), steps=s["steps"], batch_size=s["batch_size"], micro_batch=s["micro_batch"],
                      lr=s["lr"], min_lr=s["min_lr"], warmup=s["warmup"], weight_decay=s["weight_decay"],
                      grad_clip=s["grad_clip"], dtype=s["dtype"], eval_every=s["eval_every"],
                      eval_batches=s["eval_batches"], save_every=s["save_every"], seed=s["seed"],
                      activation_checkpointing=bool(s["activation_checkpointing"]), compile=bool(s["compile"]),
                      fsdp=bool(s["fsdp"]), progress=not s["quiet"])
    cfg = Config.load(s["model"])
    overrides = {k: s[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff") if s[k] is not None}
    if "n_heads" in overrides and "n_kv_heads" not in overrides and (cfg.n_kv_heads or 0) > overrides["n_heads"]:
        overrides["n_kv_heads"] = overrides["n_heads"]
    cfg = cfg.replace(**overrides)
    if s["block_size"] > cfg.max_seq_len:
        raise ValueError(f"--block-size {s['block_size']} is above the model's max_seq_len {cfg.max_seq_len}: "
                         "lower the block size or choose a model with a longer context")

    tok_dir = out / "tokenizer"
    if s["tokenizer"]:
        tok = Tokenizer.from_pretrained(s["tokenizer"])
    elif (tok_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_pretrained(tok_dir)
        log(f"tokenizer: reusing {tok_dir} ({tok.vocab_size} tokens)")
    else:
        if rank != 0:
            raise ValueError("with several processes, train the tokenizer first (one process) or pass --tokenizer")
        log(f"tokenizer: training a byte-level BPE with {s['vocab_size']} tokens on {[x.name for x in srcs]}")
        docs = (d for src in srcs for d in src.documents())
        specials = ["<|endoftext|>"]  # + what the architecture's objective needs: [MASK], T5 sentinels
        if cfg.arch == "encoder":
            specials.append("[MASK]")
        elif cfg.arch == "seq2seq":
            specials += [f"<extra_id_{i}>" for i in range(100)]
        tok = Tokenizer.train(docs, s["vocab_size"], special_tokens=specials, eos_token="<|endoftext|>",
                              pattern=s["tokenizer_pattern"], show_progress=not s["quiet"])
        tok.save_pretrained(tok_dir)
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token (tokenizer_config.json) to separate documents")

    cache = out / "token_cache"
    mix = Mixture(srcs, tok, s["block_size"], cache_dir=cache, val_fraction=s["val_fraction"], seed=s["seed"],
                  show_progress=not s["quiet"] and rank == 0)
    for row in mix.table():
        log(f"data: {row['source']}: {row['documents']:,} documents, {row['train_tokens']:,} train / "
            f"{row['val_tokens']:,} validation tokens, weight {row['weight']:.2f}")
    torch.manual_seed(s["seed"])
    model = build_model(cfg.replace(vocab_size=tok.vocab_size))
    log(f"model: {s['model']} {overrides or ''} -> {model.num_params():,} parameters")
    summary = train(model, mix, targs, tokenizer=tok, resume=bool(s["resume"]), log=log)
    if rank == 0 and s["sample_tokens"] > 0 and cfg.arch == "causal_lm":
        if s["fsdp"] and torch.distributed.is_initialized():  # rank 0 holds a shard: sample the saved model
            from ..checkpoint.hf import from_pretrained

            model = from_pretrained(summary["checkpoint"])
        prompt = tok.encode(s["prompt"], add_special_tokens=False) or [tok.eos_token_id]
        ids = generate(model, torch.tensor([prompt]), s["sample_tokens"], temperature=0.8, top_k=40,
                       generator=torch.Generator().manual_seed(s["seed"]))
        summary["sample"] = tok.decode(ids[0].tolist(), skip_special_tokens=True)
    summary["epochs"] = mix.epochs(summary["tokens"])
    return summary


def report(summary: dict, log=print) -> None:
    log("")
    log(f"parameters        {summary['parameters']:,}")
    log(f"tokens seen       {summary['tokens']:,} in {summary['steps']} steps, {summary['seconds']:.0f} s "
        f"({summary['tokens'] / max(summary['seconds'], 1e-9):,.0f} tokens/s)")
    log("epochs            " + ", ".join(f"{k} {v:.2f}" for k, v in summary["epochs"].items()))
    log(f"validation ppl    {summary['val_ppl_start']:,.1f} at the start -> {summary['val_ppl']:,.2f} at the end")
    log(f"checkpoint        {summary['checkpoint']}  (groundup.from_pretrained / transformers)")
    log(f"metrics, plot     {summary['metrics']}, {summary['plot']}")
    if "sample" in summary:
        log(f"sample            {summary['sample']!r}")


def main_pretrain(args: argparse.Namespace) -> int:
    summary = run(settings(args))
    report(summary)
    return 0
