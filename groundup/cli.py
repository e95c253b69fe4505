"""`groundup <command>`: a thin shell over the library. Parses arguments, calls groundup, prints."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import calc
from .cli_generate import add_attention_parser, add_chat_parser, add_sampling_arguments, check_model_folder
from .config import Config
from .presets import PRESETS


def _config_from(spec: str) -> Config:
    """A preset name, a Config JSON file, or an HF model folder (its config.json)."""
    from pathlib import Path

    path = Path(spec)
    if path.is_dir():
        from .checkpoint.hf import config_from_hf
        from .checkpoint.io import read_json

        return config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
    return Config.load(spec)


def cmd_calc(args: argparse.Namespace) -> int:
    cfg = _config_from(args.model)
    if args.kv_heads is not None:
        cfg = cfg.replace(n_kv_heads=args.kv_heads)
    print(calc.report(cfg, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    width = max(map(len, PRESETS))
    for name in PRESETS:
        cfg = Config.preset(name)
        b = calc.param_breakdown(cfg)
        active = f" ({calc.human(b['active'])} active)" if cfg.n_experts else ""
        print(f"{name:<{width}}  {cfg.family:<9} {calc.human(b['total']):>8}{active}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build a preset, print its parameter table, run one forward pass on random tokens."""
    from .models.causal_lm import CausalLM

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


def _load_model_and_tokenizer(folder: str, arch: str):
    """A model folder's groundup model (of the given arch) and its tokenizer.json."""
    from pathlib import Path

    from tokenizers import Tokenizer

    from .checkpoint.hf import from_pretrained

    kind = {"encoder": "an encoder (BERT-style)", "seq2seq": "an encoder-decoder (T5/Marian)"}[arch]
    check_model_folder(folder, arch, kind)
    path = Path(folder) / "tokenizer.json"
    return from_pretrained(folder), Tokenizer.from_file(str(path))


def _special_id(tok, names: tuple[str, ...], what: str) -> int:
    for name in names:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise ValueError(f"the tokenizer has no {what} token (looked for {', '.join(names)})")


def cmd_fill_mask(args: argparse.Namespace) -> int:
    """Top-k predictions for each [MASK] of each text."""
    model, tok = _load_model_and_tokenizer(args.model, "encoder")
    mask_id = _special_id(tok, ("[MASK]", "<mask>"), "mask")
    mask_text = tok.id_to_token(mask_id)
    for text in args.text:
        enc = tok.encode(text)
        ids = torch.tensor([enc.ids])
        types = torch.tensor([enc.type_ids]) if model.config.type_vocab_size else None
        (preds,) = model.fill_mask(ids, mask_token_id=mask_id, top_k=args.top_k, token_type_ids=types)
        print(text)
        for pos, cands in preds:
            print(f"  {mask_text} at token {pos}:")
            for token_id, p in cands:
                print(f"    {p:7.4f}  {tok.id_to_token(token_id)}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Sentence vectors from an encoder and their cosine similarities."""
    model, tok = _load_model_and_tokenizer(args.model, "encoder")
    encs = [tok.encode(t) for t in args.text]
    width = max(len(e.ids) for e in encs)
    pad = tok.token_to_id("[PAD]") or 0
    ids = torch.tensor([e.ids + [pad] * (width - len(e.ids)) for e in encs])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encs])
    with torch.no_grad():
        vecs = model.features(ids, attention_mask=mask, pooling=args.pooling)
    sims = torch.nn.functional.normalize(vecs, dim=-1) @ torch.nn.functional.normalize(vecs, dim=-1).T
    print(f"{len(args.text)} sentence(s) -> vectors of {vecs.shape[1]} ({args.pooling} pooling); cosine similarity:")
    for i, text in enumerate(args.text):
        print("  " + " ".join(f"{v:6.3f}" for v in sims[i].tolist()) + f"  {text}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Decoder-only continuation (streamed) or encoder-decoder generation (greedy or beam search)."""
    from pathlib import Path

    from .checkpoint.hf import config_from_hf
    from .checkpoint.io import read_json

    config = Path(args.model) / "config.json"
    if config.is_file() and config_from_hf(read_json(config), str(config)).arch == "causal_lm":
        from .cli_generate import cmd_generate_causal

        return cmd_generate_causal(args)
    model, tok = _load_model_and_tokenizer(args.model, "seq2seq")
    for text in args.text:
        ids = torch.tensor([tok.encode(text).ids])
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                             length_penalty=args.length_penalty, early_stopping=args.early_stopping)
        print(tok.decode(out[0, 1:].tolist(), skip_special_tokens=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="groundup", description="Large language models from the ground up.")
    sub = p.add_subparsers(dest="command", required=True)

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

    f = sub.add_parser("fill-mask", help="top-k predictions for each [MASK] (encoder folder with tokenizer.json)")
    f.add_argument("model", help="HF folder of a BERT-style model with an MLM head")
    f.add_argument("text", nargs="+", help="text(s) containing [MASK]")
    f.add_argument("--top-k", type=int, default=5)
    f.set_defaults(func=cmd_fill_mask)

    e = sub.add_parser("embed", help="sentence vectors from an encoder and their cosine similarities")
    e.add_argument("model", help="HF folder of a BERT-style model")
    e.add_argument("text", nargs="+")
    e.add_argument("--pooling", choices=("mean", "cls", "pooler"), default="mean")
    e.set_defaults(func=cmd_embed)

    g = sub.add_parser("generate", help="continue a prompt (decoder-only, streamed) or generate from a source "
                       "text (encoder-decoder: greedy or beam search)")
    g.add_argument("model", help="HF model folder with tokenizer.json")
    g.add_argument("text", nargs="+", help="prompt(s), or source text(s) for an encoder-decoder")
    add_sampling_arguments(g)
    g.add_argument("--stop", nargs="+", default=None, help="decoder-only: stop strings")
    g.add_argument("--num-beams", type=int, default=1, help="encoder-decoder: 1 = greedy")
    g.add_argument("--length-penalty", type=float, default=1.0, help="encoder-decoder beam search")
    g.add_argument("--early-stopping", action="store_true", help="encoder-decoder beam search")
    g.set_defaults(func=cmd_generate)
    add_chat_parser(sub)
    add_attention_parser(sub)

    from .cli_tokenizer import add_parser

    add_parser(sub)

    from .cli_pretrain import add_arguments, main_pretrain

    pt = sub.add_parser("pretrain", help="train a tokenizer and a causal LM on text (default: the Python stdlib)")
    add_arguments(pt)
    pt.set_defaults(func=main_pretrain)
    from .cli_arithmetic import add_arithmetic_parser
    from .cli_finetune import add_finetune_parser
    from .cli_prep import add_prep_parser

    add_finetune_parser(sub)
    add_prep_parser(sub)
    add_arithmetic_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input: one clear line, no stack trace
        print(f"groundup {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
