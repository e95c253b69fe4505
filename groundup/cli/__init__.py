"""`groundup <command>`: a thin shell over the library. Each module of this package is one command group;
it parses arguments, calls groundup and prints. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from .align import add_align_parser
from .arithmetic import add_arithmetic_parser
from .audio import add_audio_parser
from .calc import add_calc_parsers
from .encoders import add_encoder_parsers
from .eval import add_eval_parsers, run_lm_eval
from .finetune import add_finetune_parser
from .generate import add_attention_parser, add_chat_parser
from .moe import add_moe_parser
from .prep import add_prep_parser
from .pretrain import add_arguments, main_pretrain
from .quantize import add_quantize_parser
from .serve import add_serve_parser
from .tokenizer import add_parser as add_tokenizer_parser
from .vision import add_vision_parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="groundup", description="Large language models from the ground up.")
    sub = p.add_subparsers(dest="command", required=True)
    add_calc_parsers(sub)
    add_encoder_parsers(sub)
    add_chat_parser(sub)
    add_attention_parser(sub)
    add_tokenizer_parser(sub)

    pt = sub.add_parser("pretrain", help="train a tokenizer and a causal LM on text (default: the Python stdlib)")
    add_arguments(pt)
    pt.set_defaults(func=main_pretrain)
    add_finetune_parser(sub)
    add_align_parser(sub)
    add_prep_parser(sub)
    add_arithmetic_parser(sub)
    add_quantize_parser(sub)
    add_moe_parser(sub)
    add_eval_parsers(sub)
    add_serve_parser(sub)
    add_vision_parser(sub)
    add_audio_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # every later argument is lm_eval's own, options included
        try:
            return run_lm_eval(argv[1:])
        except ValueError as err:
            print(f"groundup lm-eval: error: {err}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input: one clear line, no stack trace
        print(f"groundup {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
