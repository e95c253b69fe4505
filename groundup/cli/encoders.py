"""`groundup fill-mask | embed` for encoders and `groundup generate` for every model folder (decoder-only
continuations are streamed by generate.py; encoder-decoders decode greedily or with beams here)."""

from __future__ import annotations

import argparse

import torch

from ..checkpoint.hf import check_model_folder, config_from_hf, from_pretrained
from ..checkpoint.io import read_json
from ..serve.embeddings import encoder_batch
from ..tokenizer import Tokenizer
from .generate import add_sampling_arguments, cmd_generate_causal
from .vision import cmd_generate_image


def _load_model_and_tokenizer(folder: str, arch: str):
    """A model folder's groundup model (of the given arch) and its groundup Tokenizer."""

    kind = {"encoder": "an encoder (BERT-style)", "seq2seq": "an encoder-decoder (T5/Marian)"}[arch]
    check_model_folder(folder, arch, kind)
    return from_pretrained(folder), Tokenizer.from_pretrained(folder)


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
        ids, types, mask = encoder_batch(tok, [text])  # [MASK] in the text is the mask token
        types = types if model.config.heads.type_vocab_size else None
        (preds,) = model.fill_mask(ids, mask_token_id=mask_id, top_k=args.top_k, token_type_ids=types,
                                   attention_mask=mask)
        print(text)
        for pos, cands in preds:
            print(f"  {mask_text} at token {pos}:")
            for token_id, p in cands:
                print(f"    {p:7.4f}  {tok.id_to_token(token_id)}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Sentence vectors from an encoder and their cosine similarities."""
    model, tok = _load_model_and_tokenizer(args.model, "encoder")
    ids, types, mask = encoder_batch(tok, args.text, allowed_special=())
    types = types if model.config.heads.type_vocab_size else None
    with torch.no_grad():
        vecs = model.features(ids, attention_mask=mask, token_type_ids=types, pooling=args.pooling)
    sims = torch.nn.functional.normalize(vecs, dim=-1) @ torch.nn.functional.normalize(vecs, dim=-1).T
    print(f"{len(args.text)} sentence(s) -> vectors of {vecs.shape[1]} ({args.pooling} pooling); cosine similarity:")
    for i, text in enumerate(args.text):
        print("  " + " ".join(f"{v:6.3f}" for v in sims[i].tolist()) + f"  {text}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Decoder-only continuation (streamed) or encoder-decoder generation (greedy or beam search)."""
    from pathlib import Path

    config = Path(args.model) / "config.json"
    gguf = Path(args.model).suffix == ".gguf"  # llama.cpp's files hold decoders only
    if getattr(args, "image", None) or (config.is_file() and read_json(config).get("model_type") == "llava"):

        return cmd_generate_image(args)
    if gguf or (config.is_file() and config_from_hf(read_json(config), str(config)).arch == "causal_lm"):

        return cmd_generate_causal(args)
    if getattr(args, "compile", False):
        raise ValueError("--compile is for decoder-only models; this is an encoder-decoder folder")
    model, tok = _load_model_and_tokenizer(args.model, "seq2seq")
    for text in args.text:
        ids = torch.tensor([tok.encode(text)])
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                             length_penalty=args.length_penalty, early_stopping=args.early_stopping)
        print(tok.decode(out[0, 1:].tolist(), skip_special_tokens=True))
    return 0


def add_encoder_parsers(sub) -> None:
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
    g.add_argument("--image", action="append", default=None, metavar="FILE", help="vision-language (LLaVA) folders: "
                   "an image of the prompt (repeat for several, one per <image> in it; a prompt without <image> gets "
                   "LLaVA-1.5's format)")
    g.set_defaults(func=cmd_generate)
