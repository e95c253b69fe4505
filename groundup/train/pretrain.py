"""The pretraining pipeline behind `groundup pretrain` and `torchrun ... -m groundup.train`: tokenizer, data,
model, training, a sample.

The objective follows the model: next-token prediction for decoders (model llama-125m ...), masked LM for
encoders (tiny-bert ...), span corruption for encoder-decoders (tiny-t5 ...). Settings are one dataclass
(PretrainSettings) whose fields hold the defaults; a YAML file and command-line flags override them
(utils/settings.py). Everything that can be checked is checked before training starts: sources exist
and hold text, the block fits the model's context, the batch splits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import Config, Tokenizer
from ..checkpoint.hf import config_to_hf, from_pretrained
from ..data import Mixture, Source
from ..generate import generate
from ..models import build_model
from ..train import TrainArgs, train
from ..utils.files import atomic_write_text
from ..utils.settings import merge, option, option_list

SETTINGS = "settings.json"  # the run's resolved settings, written into `out`; resume starts from them
SIZE_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")


@dataclass
class PretrainSettings:
    """Every setting of a pretraining run, with its default."""

    model: str = option("tiny-llama", "preset name or Config JSON")
    d_model: int | None = option(None, "override the model's width")
    n_layers: int | None = option(None, "override the number of layers")
    n_heads: int | None = option(None, "override the number of heads")
    n_kv_heads: int | None = option(None, "override the number of kv heads")
    d_ff: int | None = option(None, "override the FFN width")
    data: list = option_list("sources: python-stdlib, a file or a glob, each optionally SPEC=WEIGHT",
                             ["python-stdlib"])
    text_field: str = option("text", "JSONL/parquet text field")
    max_bytes: int | None = option(None, "read at most this much text per source")
    tokenizer: str | None = option(None, "tokenizer folder; default: train a byte-level BPE on the data")
    vocab_size: int = option(4096, "for a trained tokenizer")
    tokenizer_pattern: str = option("gpt2", "for a trained tokenizer: gpt2, gpt4, digits (one token per digit, "
                                  "as Llama) or a regular expression")
    block_size: int = option(128, "tokens per training row")
    batch_size: int = option(16, "rows per optimizer step (the global batch)")
    micro_batch: int | None = option(None, "rows per forward pass (gradient accumulation)")
    steps: int = option(200, "optimizer steps")
    lr: float = option(3e-3, "peak learning rate")
    min_lr: float = option(3e-4, "learning rate at the end of the cosine")
    warmup: int = option(20, "linear warm-up steps")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    optimizer: str = option("adamw", "adamw, or adamw8bit: both moments in 8-bit blocks (2 bytes of state per "
                            "weight instead of 8)", choices=("adamw", "adamw8bit"))
    grad_clip: float = option(1.0, "gradient norm clip")
    dtype: str = option("float32", "training dtype", choices=("float32", "bfloat16"))
    eval_every: int = option(50, "steps between validation losses")
    eval_batches: int = option(8, "validation batches per evaluation")
    save_every: int = option(100, "steps between checkpoints")
    seed: int = option(0, "seed of data order, initialisation and sampling")
    val_fraction: float = option(0.01, "share of documents held out for validation")
    out: str = option("out", "output folder")
    resume: bool = option(False, "continue from <out>/checkpoint")
    prompt: str = option("def ", "text to continue at the end")
    sample_tokens: int = option(48, "tokens of the sample at the end (0: none)")
    quiet: bool = option(False, "no progress bars")
    activation_checkpointing: bool = option(False, "recompute activations in backward (less memory, more compute)")
    compile: bool = option(False, "torch.compile the model")
    fsdp: bool = option(False, "under torchrun: shard parameters, gradients and optimizer state over the "
                      "processes (for models that do not fit one device) instead of replicating them (DDP)")

    @classmethod
    def resolve(cls, *, config: str | Path | None = None, given: dict[str, Any] | None = None) -> PretrainSettings:
        """Defaults, then the YAML ``config``, then ``given``; with resume, the run's saved settings take the
        place of the defaults and the file (flags given now still win)."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        s = merge(cls, config=config, given=given)
        saved = Path(s.out) / SETTINGS
        if s.resume and saved.is_file():
            return merge(cls, given={**json.loads(saved.read_text()), **given, "resume": True})
        return s


def sources(s: PretrainSettings) -> list:
    """The data sources of the settings, each checked to exist (before a tokenizer is trained)."""

    out = []
    for item in s.data:
        if isinstance(item, dict):
            item = dict(item)
            spec = item.pop("spec", None)
            if spec is None:
                raise ValueError(f"data entry {item} needs a 'spec' (a file, glob or python-stdlib)")
            item.setdefault("text_field", s.text_field)
            item.setdefault("max_bytes", s.max_bytes)
            out.append(Source(spec, **item))
            continue
        spec, weight = str(item), 1.0
        if "=" in spec:
            spec, w = spec.rsplit("=", 1)
            try:
                weight = float(w)
            except ValueError:
                raise ValueError(f"--data {item!r}: the weight after '=' must be a number") from None
        out.append(Source(spec, weight=weight, text_field=s.text_field, max_bytes=s.max_bytes))
    for src in out:
        src.files()  # a glob that matches nothing fails now, not after the tokenizer is trained
    return out


def run(s: PretrainSettings, log=print) -> dict:
    """Tokenizer (given, reused or trained), data mixture, model, training, a sample; the run's summary."""
    import torch

    rank = int(os.environ.get("RANK", "0"))
    out = Path(s.out)
    srcs = sources(s)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        saved = {k: v for k, v in dataclasses.asdict(s).items() if k != "resume"}
        atomic_write_text(out / SETTINGS, json.dumps(saved, indent=2))
    targs = TrainArgs(out_dir=str(out), steps=s.steps, batch_size=s.batch_size, micro_batch=s.micro_batch,
                      lr=s.lr, min_lr=s.min_lr, warmup=s.warmup, weight_decay=s.weight_decay, optimizer=s.optimizer,
                      grad_clip=s.grad_clip, dtype=s.dtype, eval_every=s.eval_every,
                      eval_batches=s.eval_batches, save_every=s.save_every, seed=s.seed,
                      activation_checkpointing=bool(s.activation_checkpointing), compile=bool(s.compile),
                      fsdp=bool(s.fsdp), progress=not s.quiet)
    cfg = Config.load(s.model)
    overrides = {k: getattr(s, k) for k in SIZE_FIELDS if getattr(s, k) is not None}
    if "n_heads" in overrides and "n_kv_heads" not in overrides and (cfg.n_kv_heads or 0) > overrides["n_heads"]:
        overrides["n_kv_heads"] = overrides["n_heads"]
    cfg = cfg.replace(**overrides)
    config_to_hf(cfg)  # a config its family's layout cannot hold fails now, not at the first checkpoint
    if s.block_size > cfg.max_seq_len:
        raise ValueError(f"--block-size {s.block_size} is above the model's max_seq_len {cfg.max_seq_len}: "
                         "lower the block size or choose a model with a longer context")

    tok_dir = out / "tokenizer"
    if s.tokenizer:
        tok = Tokenizer.from_pretrained(s.tokenizer)
    elif (tok_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_pretrained(tok_dir)
        log(f"tokenizer: reusing {tok_dir} ({tok.vocab_size} tokens)")
    else:
        if rank != 0:
            raise ValueError("with several processes, train the tokenizer first (one process) or pass --tokenizer")
        log(f"tokenizer: training a byte-level BPE with {s.vocab_size} tokens on {[x.name for x in srcs]}")
        docs = (d for src in srcs for d in src.documents())
        specials = ["<|endoftext|>"]  # + what the architecture's objective needs: [MASK], T5 sentinels
        if cfg.arch == "encoder":
            specials.append("[MASK]")
        elif cfg.arch == "seq2seq":
            specials += [f"<extra_id_{i}>" for i in range(100)]
        tok = Tokenizer.train(docs, s.vocab_size, special_tokens=specials, eos_token="<|endoftext|>",
                              pattern=s.tokenizer_pattern, show_progress=not s.quiet)
        tok.save_pretrained(tok_dir)
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token (tokenizer_config.json) to separate documents")

    cache = out / "token_cache"
    mix = Mixture(srcs, tok, s.block_size, cache_dir=cache, val_fraction=s.val_fraction, seed=s.seed,
                  show_progress=not s.quiet and rank == 0)
    for row in mix.table():
        log(f"data: {row['source']}: {row['documents']:,} documents, {row['train_tokens']:,} train / "
            f"{row['val_tokens']:,} validation tokens, weight {row['weight']:.2f}")
    torch.manual_seed(s.seed)
    model = build_model(cfg.replace(vocab_size=tok.vocab_size))
    log(f"model: {s.model} {overrides or ''} -> {model.num_params():,} parameters")
    summary = train(model, mix, targs, tokenizer=tok, resume=bool(s.resume), log=log)
    if rank == 0 and s.sample_tokens > 0 and cfg.arch == "causal_lm":
        if s.fsdp and torch.distributed.is_initialized():  # rank 0 holds a shard: sample the saved model

            model = from_pretrained(summary["checkpoint"])
        prompt = tok.encode(s.prompt, add_special_tokens=False) or [tok.eos_token_id]
        ids = generate(model, torch.tensor([prompt]), s.sample_tokens, temperature=0.8, top_k=40,
                       generator=torch.Generator().manual_seed(s.seed))
        summary["sample"] = tok.decode(ids[0].tolist(), skip_special_tokens=True)
    summary["epochs"] = mix.epochs(summary["tokens"])
    return summary


def report(summary: dict, log=print) -> None:
    """The summary of a run, one figure a line."""
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
