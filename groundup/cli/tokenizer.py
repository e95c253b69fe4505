"""`groundup tokenizer train | encode | decode | stats`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..tokenizer import Tokenizer


def _load(spec: str) -> Tokenizer:
    return Tokenizer.from_file(spec)


def _text_arg(args: argparse.Namespace) -> str:
    if args.file is not None:
        return Path(args.file).read_bytes().decode("utf-8", "surrogateescape")
    if args.text is None:
        return sys.stdin.read()
    return args.text


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    t0 = time.perf_counter()
    tok = Tokenizer.train(args.input, args.vocab_size, special_tokens=args.special_tokens,
                          min_frequency=args.min_frequency, pattern=args.pattern, bos_token=args.bos_token,
                          eos_token=args.eos_token, pad_token=args.pad_token, show_progress=not args.quiet)
    tok.save_pretrained(out)
    print(f"trained {tok.vocab_size} tokens ({len(tok.model.merges)} merges) in {time.perf_counter() - t0:.1f}s "
          f"-> {out / 'tokenizer.json'}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    allowed = "all" if args.allow_special else ()
    try:
        ids = tok.encode(_text_arg(args), allowed_special=allowed, disallowed_special="all" if not args.plain else (),
                         add_special_tokens=not args.no_special)
    except ValueError as e:
        if "special token" not in str(e):
            raise
        raise ValueError(f"{e} (on the command line: --allow-special or --plain)") from None
    if args.tokens:
        print(json.dumps([tok.id_to_token(i) for i in ids], ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    raw = args.ids if args.ids else sys.stdin.read().split()
    try:
        ids = [int(x) for x in raw]
    except ValueError:
        bad = next(x for x in raw if not x.lstrip("-").isdigit())
        raise ValueError(f"{bad!r} is not an integer token id") from None
    print(tok.decode(ids, skip_special_tokens=args.skip_special))
    return 0


def stats(tok: Tokenizer, text: str) -> dict[str, float]:
    """Compression and coverage of `tok` on `text` (special-token text counts as plain text)."""
    t0 = time.perf_counter()
    ids = tok.encode(text, disallowed_special=(), add_special_tokens=False)
    seconds = time.perf_counter() - t0
    n = max(len(ids), 1)
    n_bytes = len(text.encode("utf-8", "surrogateescape"))
    fallback = {tok.model.vocab[u] for u in [tok.model.unk_token] if u is not None}
    if tok.model.byte_fallback:
        fallback |= {i for t, i in tok.model.vocab.items() if len(t) == 6 and t.startswith("<0x")}
    return {
        "bytes": n_bytes,
        "tokens": len(ids),
        "words": len(text.split()),
        "bytes_per_token": n_bytes / n,
        "chars_per_token": len(text) / n,
        "tokens_per_word": len(ids) / max(len(text.split()), 1),
        "vocab_used": len(set(ids)),
        "vocab_coverage": len(set(ids)) / tok.vocab_size,
        "unk_or_byte_fallback": sum(i in fallback for i in ids) / n if fallback else 0.0,
        "seconds": seconds,
    }


def cmd_stats(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    s = stats(tok, Path(args.file).read_bytes().decode("utf-8", "surrogateescape"))
    print(f"{args.file}: {s['bytes']:,} bytes, {s['words']:,} words -> {s['tokens']:,} tokens "
          f"({s['bytes'] / 1e6 / max(s['seconds'], 1e-9):.1f} MB/s)")
    print(f"  bytes/token      {s['bytes_per_token']:.2f}")
    print(f"  chars/token      {s['chars_per_token']:.2f}")
    print(f"  tokens/word      {s['tokens_per_word']:.2f}")
    print(f"  vocabulary used  {s['vocab_used']:,} of {tok.vocab_size:,} ({100 * s['vocab_coverage']:.1f}%)")
    if tok.model.unk_token or tok.model.byte_fallback:
        print(f"  unk/byte tokens  {100 * s['unk_or_byte_fallback']:.2f}%")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer; encode, decode, measure")
    tsub = t.add_subparsers(dest="action", required=True)

    tr = tsub.add_parser("train", help="learn a byte-level BPE from text files")
    tr.add_argument("--input", required=True, help="file or glob pattern (quote it: 'data/**/*.txt')")
    tr.add_argument("--vocab-size", type=int, required=True)
    tr.add_argument("--out", required=True, help="folder for tokenizer.json and tokenizer_config.json")
    tr.add_argument("--special-tokens", nargs="*", default=["<|endoftext|>"])
    tr.add_argument("--min-frequency", type=int, default=0)
    tr.add_argument("--pattern", default="gpt2", help="gpt2, gpt4, digits (one token per digit, as Llama) "
                    "or a regular expression")
    tr.add_argument("--bos-token", default=None)
    tr.add_argument("--eos-token", default=None)
    tr.add_argument("--pad-token", default=None)
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    for name, helptext in (("encode", "text -> ids"), ("stats", "bytes/token, tokens/word, coverage on a file")):
        p = tsub.add_parser(name, help=helptext)
        p.add_argument("tokenizer", help="tokenizer.json or a folder holding it")
        if name == "encode":
            p.add_argument("text", nargs="?", default=None, help="text (default: --file or stdin)")
            p.add_argument("--file", default=None)
            p.add_argument("--tokens", action="store_true", help="print token strings instead of ids")
            p.add_argument("--allow-special", action="store_true", help="special-token text becomes control tokens")
            p.add_argument("--plain", action="store_true", help="special-token text is encoded as plain text")
            p.add_argument("--no-special", action="store_true", help="do not add BOS/EOS from the post-processor")
            p.set_defaults(func=cmd_encode)
        else:
            p.add_argument("--file", required=True)
            p.set_defaults(func=cmd_stats)

    d = tsub.add_parser("decode", help="ids -> text")
    d.add_argument("tokenizer", help="tokenizer.json or a folder holding it")
    d.add_argument("ids", nargs="*", help="token ids (default: read from stdin)")
    d.add_argument("--skip-special", action="store_true")
    d.set_defaults(func=cmd_decode)
