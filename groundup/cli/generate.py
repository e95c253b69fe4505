"""`groundup generate` for decoder-only folders (streamed to the terminal), `groundup chat`, and
`groundup attention` (a heatmap of one head's attention weights)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from ..checkpoint.hf import check_model_folder, from_pretrained
from ..generate import stream
from ..generate.compiled import compile_seconds
from ..generate.config import end_ids
from ..peft import has_adapter, load_adapter, soft_prompt
from ..tokenizer import Tokenizer
from ..utils.files import atomic_file


def load_causal(folder: str, adapter: str | None = None):
    """A decoder-only model folder's model, (groundup) tokenizer and the ids every prompt starts with: with a
    peft `adapter` folder (LoRA, IA3, prefix or prompt tuning) the model carries it, and a soft prompt's
    virtual ids are those ids; otherwise there are none."""

    check_model_folder(folder, "causal_lm", "a decoder-only")
    if adapter is not None and not has_adapter(adapter):
        raise ValueError(f"--adapter {adapter}: no adapter_config.json there (a peft adapter folder)")
    model = from_pretrained(folder)
    if adapter is not None:
        model = load_adapter(model, adapter)
    prompt = soft_prompt(model)
    return model, Tokenizer.from_pretrained(folder), (prompt.prompt_ids() if prompt is not None else [])


def decoding_options(args: argparse.Namespace) -> dict:
    """generate()'s keyword arguments from the command line; loads the --draft model (checked first)."""
    opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed, compile=args.compile)
    if args.rope_scaling:
        kind, _, factor = args.rope_scaling.partition(":")
        try:
            opts["rope_scaling"] = (kind, float(factor))
        except ValueError:
            raise ValueError(f"--rope-scaling {args.rope_scaling!r}: write KIND:FACTOR, e.g. linear:2 or ntk:2"
                             ) from None
    if args.draft:

        check_model_folder(args.draft, "causal_lm", "a decoder-only (draft)")
        opts.update(draft_model=from_pretrained(args.draft), num_draft_tokens=args.num_draft_tokens)
    return opts


def stream_text(model, tok, ids: list[int], args: argparse.Namespace, out: TextIO, stop: list[int],
                opts: dict, stop_strings: list[str] | None = None) -> str:
    """Stream one continuation of `ids` to `out` as it is generated; return the text."""

    text = []
    for pieces in stream(model, [ids], args.max_new_tokens, tokenizer=tok, eos_token_id=stop or None,
                         stop_strings=stop_strings, truncate=True, **opts):
        out.write(pieces[0])
        out.flush()
        text.append(pieces[0])
    return "".join(text)


def cmd_generate_causal(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    model, tok, virtual = load_causal(args.model, args.adapter)
    stop, opts = end_ids(model.config, tok), decoding_options(args)
    for text in args.text:
        ids = tok.encode(text) or ([tok.bos_token_id] if tok.bos_token_id is not None else stop[:1])
        if not ids:
            raise ValueError("the prompt is empty and the tokenizer has no bos/eos token to start from")
        out.write(text)
        stream_text(model, tok, virtual + ids, args, out, stop, opts, args.stop)
        out.write("\n")
    report_compile(model, args)
    return 0


def report_compile(model, args: argparse.Namespace) -> None:
    """With --compile, the seconds torch.compile took (on stderr: stdout is the text)."""
    if args.compile:

        print(f"[compiled the decode step in {compile_seconds(model):.1f} s]", file=sys.stderr)


def cmd_chat(args: argparse.Namespace, inp: TextIO | None = None, out: TextIO | None = None) -> int:
    """Read user turns line by line (empty line or EOF ends), answer each with the chat template."""
    inp, out = inp or sys.stdin, out or sys.stdout
    model, tok, virtual = load_causal(args.model, args.adapter)
    stop, opts = end_ids(model.config, tok), decoding_options(args)
    for name in ("<|im_end|>", "<|eot_id|>", "</s>", "<|end|>"):
        tid = tok.token_to_id(name)
        if tid is not None and tid not in stop:
            stop.append(tid)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        out.write("> ")
        out.flush()
        line = inp.readline()
        if not line or not line.strip():
            out.write("\n")
            report_compile(model, args)
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids = virtual + tok.apply_chat_template(messages, add_generation_prompt=True)
        reply = stream_text(model, tok, ids, args, out, stop, opts)
        out.write("\n")
        messages.append({"role": "assistant", "content": reply})


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--draft", default=None, metavar="DIR", help="decoder-only: a smaller model folder with the "
                   "same tokenizer, for speculative decoding (same greedy output, faster)")
    p.add_argument("--num-draft-tokens", type=int, default=4, help="guesses per round with --draft")
    p.add_argument("--adapter", default=None, metavar="DIR", help="decoder-only: a peft adapter folder "
                   "(LoRA, IA3, prompt or prefix tuning, e.g. from `groundup finetune`) to apply to the model")
    p.add_argument("--compile", action="store_true", help="decoder-only: torch.compile the one-token decode "
                   "step (the first call compiles, reported on stderr; faster steps after)")
    p.add_argument("--rope-scaling", default=None, metavar="KIND:FACTOR",
                   help="decoder-only RoPE models: longer context, linear:F (interpolation) or ntk:F")


def add_chat_parser(sub) -> None:
    c = sub.add_parser("chat", help="interactive chat with a decoder-only folder, through its chat template")
    c.add_argument("model", help="HF folder of a decoder-only model with tokenizer.json")
    c.add_argument("--system", default=None, help="system message")
    add_sampling_arguments(c)
    c.set_defaults(func=cmd_chat)


def cmd_attention(args: argparse.Namespace) -> int:
    """Write a PNG heatmap of layer `layer`, head `head` attention probabilities over the text's tokens."""
    import torch

    model, tok, _ = load_causal(args.model)
    cfg = model.config
    if not 0 <= args.head < cfg.n_heads:
        raise ValueError(f"--head {args.head} is out of range: the model has {cfg.n_heads} heads")
    ids = tok.encode(args.text)
    if not ids:
        raise ValueError("--text encodes to no tokens")
    if len(ids) > cfg.max_seq_len:
        raise ValueError(f"--text has {len(ids)} tokens, more than the model's context of {cfg.max_seq_len}")
    weights = model.attention_weights(torch.tensor([ids]), args.layer)[0, args.head]  # [T, T]
    labels = [tok.decode([i]) for i in ids]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.35 * len(ids) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(weights.float().numpy(), cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(ids)), [repr(t)[1:-1] for t in labels], rotation=90, fontsize=8)
    ax.set_yticks(range(len(ids)), [repr(t)[1:-1] for t in labels], fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(f"layer {args.layer}, head {args.head}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_file(Path(args.out), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    print(f"wrote {args.out}: {len(ids)} x {len(ids)} attention weights of layer {args.layer}, head {args.head}")
    return 0


def add_attention_parser(sub) -> None:
    a = sub.add_parser("attention", help="heatmap PNG of one attention head over a text (eager kernel)")
    a.add_argument("model", help="HF folder of a decoder-only model with tokenizer.json")
    a.add_argument("--text", required=True)
    a.add_argument("--layer", type=int, default=0)
    a.add_argument("--head", type=int, default=0)
    a.add_argument("--out", default="attention.png")
    a.set_defaults(func=cmd_attention)
