"""The fine-tuning pipeline behind `groundup finetune`: instruction data, a decoder-only base, one method
(full, LoRA, QLoRA, IA3, BitFit, prompt tuning, prefix tuning), training, and the adapter or model folders.

The data (data/instruct.py: prompt/completion, instruction/response or conversation records) is read and
checked in full before the model is loaded, and the method's settings before the data; the loss covers
answer tokens only. ``full`` trains every weight; ``lora`` low-rank updates of ``target_modules``; ``qlora``
the same over a base whose linear layers are 4-bit NF4 with double quantization (Dettmers et al. 2023), read
straight into 4 bits from a float folder (or used as they are from a quantized one); ``ia3``
rescaling vectors; ``bitfit`` the biases only; ``prompt`` a soft prompt; ``prefix`` per-layer key/value
prefixes. A run writes <out>/checkpoint (resumable: the model, or only the adapter for the adapter
methods), and at the end <out>/adapter (a peft folder) and, with merge (LoRA, IA3), <out>/merged.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import peft
from ..checkpoint.hf import check_model_folder, config_from_hf, from_pretrained
from ..checkpoint.io import read_json
from ..data.instruct import SEPARATOR, InstructionData, load_examples, prefixed
from ..nn.qlinear import QUANTIZED
from ..quant import load_quantized
from ..tokenizer import Tokenizer
from ..utils.files import atomic_write_text
from ..utils.settings import option, option_list
from .loop import TrainArgs, train

METHODS = ("full", "lora", "qlora", "ia3", "bitfit", "prompt", "prefix")
LR = {"full": 1e-4, "lora": 1e-3, "qlora": 1e-3, "ia3": 3e-3, "bitfit": 1e-3, "prompt": 3e-2,
      "prefix": 1e-2}  # default lr


@dataclass
class RunSettings:
    """The settings every training command on instruction or preference data shares (finetune, align)."""

    val_fraction: float = option(0.05, "share of examples held out")
    eval_every: int = option(50, "steps between validations")
    save_every: int = option(100, "steps between checkpoints")
    seed: int = option(0, "seed of the split, order and initialisation")
    dtype: str = option("float32", "training dtype", choices=("float32", "bfloat16"))
    resume: bool = option(False, "continue from <out>/checkpoint")
    quiet: bool = option(False, "no progress bars")


@dataclass
class FinetuneSettings(RunSettings):
    """Every setting of a fine-tuning run, with its default."""

    model: str = option("", "HF folder of a decoder-only model with tokenizer.json", positional=True)
    data: list = option_list("JSONL files of instruction records", required=True)
    method: str = option("lora", "what is trained", choices=METHODS)
    r: int = option(8, "LoRA rank")
    alpha: float = option(16.0, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = option(0.0, "LoRA dropout")
    base_dtype: str = option("float32", "dtype the base is held in (LoRA, IA3, BitFit, prompt, prefix: bfloat16 "
                             "halves the frozen weights; the adapters stay fp32)", choices=("float32", "bfloat16"))
    compute_dtype: str = option("bfloat16", "QLoRA: dtype of the 4-bit layers' products (float32 runs faster on "
                                "CPUs without bf16 arithmetic)", choices=("bfloat16", "float32"))
    target_modules: list | None = option_list("module-name suffixes to adapt (LoRA: q_proj v_proj; IA3: k_proj v_proj "
                                        "down_proj)")
    feedforward_modules: list = option_list("IA3: targets rescaled on their input (the FFN activation)", ["down_proj"])
    target_regex: str | None = option(None, "a regex matching whole module names, in place of target_modules "
                                    "(e.g. 'blocks\\.[0-3]\\.attn\\.(q|v)_proj')")
    modules_to_save: list | None = option_list("LoRA/IA3: whole modules trained too and saved in the adapter (peft's "
                                         "modules_to_save), e.g. embed lm_head")
    num_virtual_tokens: int = option(20, "prompt/prefix tuning: virtual tokens")
    prefix_projection: bool = option(False, "prefix tuning: train through an MLP (Li & Liang's reparameterisation)")
    prompt_init_text: str | None = option(None, "prompt tuning: initialise the soft prompt from this text's tokens")
    separator: str | None = option(None, "prompt/completion separator (default '\\n\\n###\\n\\n')")
    steps: int = option(200, "optimizer steps")
    batch_size: int = option(8, "examples per optimizer step")
    micro_batch: int | None = option(None, "examples per forward pass (gradient accumulation)")
    group_by_length: bool = option(True, "batch examples of similar length (within groups of 50 batches, in "
                                 "shuffled order) to pad less")
    lr: float | None = option(None, "peak learning rate (default by method: " + ", ".join(
        f"{k} {v:g}" for k, v in LR.items()) + ")")
    min_lr: float | None = option(None, "final learning rate (default lr / 10)")
    warmup: int = option(10, "linear warm-up steps")
    weight_decay: float = option(0.0, "AdamW weight decay")
    optimizer: str = option("adamw", "adamw, or adamw8bit: both moments in 8-bit blocks (2 bytes of state per "
                            "weight instead of 8; for full fine-tuning)", choices=("adamw", "adamw8bit"))
    out: str = option("out/finetune", "output folder")
    merge: bool = option(False, "LoRA/IA3: also write <out>/merged, a plain model folder")


def adapter_of(s: FinetuneSettings) -> Any:
    """The method's adapter settings (a LoraConfig, IA3Config, "prompt", "prefix" or None), checked now, so a
    bad setting fails before any data or weight is read."""

    if s.base_dtype != "float32" and s.method in ("full", "qlora"):
        raise ValueError(f"--base-dtype {s.base_dtype} goes with the adapter methods; {s.method} holds its base "
                         "in " + ("fp32 (it trains it)" if s.method == "full" else "NF4 and bf16"))
    if s.modules_to_save and s.method not in ("lora", "qlora", "ia3"):
        raise ValueError(f"--modules-to-save goes with --method lora, qlora or ia3, not {s.method}")
    if s.method in ("lora", "qlora"):
        return peft.LoraConfig(r=s.r, alpha=s.alpha, dropout=s.lora_dropout,
                               target_modules=s.target_regex or s.target_modules or ["q_proj", "v_proj"],
                               modules_to_save=s.modules_to_save)
    if s.method in ("prompt", "prefix"):
        if s.num_virtual_tokens < 1:
            raise ValueError(f"--num-virtual-tokens {s.num_virtual_tokens} must be >= 1")
        if s.merge:
            raise ValueError(f"--merge: a {s.method} has no weight to merge into; drop --merge")
        return s.method
    if s.method == "ia3":
        return peft.IA3Config(target_modules=s.target_regex or s.target_modules or ["k_proj", "v_proj", "down_proj"],
                              feedforward_modules=s.feedforward_modules, modules_to_save=s.modules_to_save)
    return None


def apply_method(model, s: FinetuneSettings, adapter: Any, tok) -> None:
    """Freeze the base and add the method's trainable parameters (in place; nothing to do for full)."""

    if s.method in ("lora", "qlora"):
        peft.apply_lora(model, adapter)
    elif s.method == "ia3":
        peft.apply_ia3(model, adapter)
    elif s.method == "bitfit":
        peft.apply_bitfit(model)
    elif s.method == "prompt":
        init = tok.encode(s.prompt_init_text, add_special_tokens=False) if s.prompt_init_text else None
        peft.apply_prompt_tuning(model, s.num_virtual_tokens, init_ids=init)
    elif s.method == "prefix":
        peft.apply_prefix_tuning(model, s.num_virtual_tokens, projection=s.prefix_projection)


def load_base(s: FinetuneSettings):
    """The base model: in ``base_dtype`` (fp32 unless asked) for training it or adapters beside it; for QLoRA
    its linear layers in NF4 (read into 4 bits as loaded, the float parts in bf16), or a quantized folder as
    it is."""
    import torch

    if s.method != "qlora":
        return from_pretrained(s.model, dtype=getattr(torch, s.base_dtype), dequantize=True)  # trained: float
    if read_json(Path(s.model) / "config.json").get("quantization_config"):
        return from_pretrained(s.model)  # 4 bits already (NF4, or int4 / GPTQ): trained over as it is

    return load_quantized(s.model, "nf4", double_quant=True, compute_dtype=getattr(torch, s.compute_dtype))


def run(s: FinetuneSettings, log=print) -> dict[str, Any]:
    """Check, load the data, load the base, apply the method, train, write the folders; the run's summary."""

    check_model_folder(s.model, "causal_lm", "a decoder-only")
    adapter = adapter_of(s)
    lr = s.lr if s.lr is not None else LR[s.method]
    targs = TrainArgs(out_dir=s.out, steps=s.steps, batch_size=s.batch_size, micro_batch=s.micro_batch, lr=lr,
                      min_lr=s.min_lr if s.min_lr is not None else lr / 10, warmup=s.warmup,
                      weight_decay=s.weight_decay, optimizer=s.optimizer, dtype=s.dtype, eval_every=s.eval_every,
                      save_every=s.save_every,
                      seed=s.seed, progress=not s.quiet, name="finetune")
    tok = Tokenizer.from_pretrained(s.model)
    cfg = config_from_hf(read_json(Path(s.model) / "config.json"))
    examples = load_examples(s.data, tok, separator=SEPARATOR if s.separator is None else s.separator,
                             max_len=cfg.max_seq_len if cfg.pos == "learned" else None)
    if s.method == "prompt":  # every prompt starts with the virtual tokens (ids after the vocabulary)
        virtual = list(range(cfg.vocab_size, cfg.vocab_size + s.num_virtual_tokens))
        examples = [prefixed(ex, virtual) for ex in examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    data = InstructionData.split(examples, val_fraction=s.val_fraction, pad_id=pad, seed=s.seed,
                                 group_by_length=s.batch_size if s.group_by_length else 0)
    log(f"data: {len(data.train):,} training / {len(data.val):,} validation examples, longest "
        f"{data.block_size + 1} tokens")

    model = load_base(s)
    # a quantized layer's weights are buffers of codes: counted as the in x out weights they stand for
    total = sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, QUANTIZED))
    apply_method(model, s, adapter, tok)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = sum({t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}.values())
    log(f"method: {s.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%); "
        f"weights {weights / 2**20:,.1f} MiB")
    out = Path(s.out)
    atomic_write_text(out / "settings.json", json.dumps(dataclasses.asdict(s), indent=2, default=str))
    t0 = time.perf_counter()
    summary = train(model, data, targs, tokenizer=tok, resume=s.resume, log=log)
    summary.update(method=s.method, trainable=trainable, total=total, weights_mib=weights / 2**20,
                   seconds=time.perf_counter() - t0,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if adapter is not None:
        peft.save_adapter(model, out / "adapter")
        tok.save_pretrained(out / "adapter")
        summary["adapter"] = str(out / "adapter")
        if s.method == "prompt":
            summary["virtual ids"] = f"{cfg.vocab_size}..{cfg.vocab_size + s.num_virtual_tokens - 1} (put them " \
                                     "before a prompt's ids)"
        if s.merge:
            if s.method == "qlora":  # a float (bf16) merged folder; what requantizing it to NF4 would cost
                errors = [e["requantize_error"] for e in peft.merge_quantized(model).values()]
                if errors and None not in errors:
                    summary["requantize error"] = f"{max(errors):.2%} (largest layer, relative Frobenius; the " \
                                                  "float folder has none)"
            peft.merge_and_unload(model).save_pretrained(out / "merged")
            tok.save_pretrained(out / "merged")
            summary["merged"] = str(out / "merged")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def report(s: dict[str, Any], log=print) -> None:
    """The summary of a run, one figure a line."""
    log("")
    log(f"method            {s['method']}: {s['trainable']:,} trainable of {s['total']:,} parameters "
        f"({100 * s['trainable'] / s['total']:.3f}%)")
    log(f"time, peak RSS    {s['seconds']:.0f} s, {s['peak_rss_mb']:,.0f} MB")
    log(f"validation loss   {s['val_loss_start']:.3f} at the start -> {s['val_loss']:.3f} at the end")
    log(f"checkpoint        {s['checkpoint']}")
    for key in ("adapter", "merged", "requantize error", "virtual ids"):
        if key in s:
            log(f"{key:<17} {s[key]}")
