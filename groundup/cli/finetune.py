"""`groundup finetune`: parsing only; the pipeline is groundup/train/finetune.py. Instruction fine-tuning of a
decoder-only model folder: full, LoRA, IA3, BitFit, prompt tuning or prefix tuning.

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

from ..train.finetune import FinetuneSettings, report, run
from ..utils.settings import add_flags, merge


def add_finetune_parser(sub) -> None:
    p = sub.add_parser("finetune", help="instruction fine-tuning of a decoder-only model folder (full, LoRA, IA3, "
                       "BitFit, prompt or prefix tuning)")
    add_flags(p, FinetuneSettings)
    p.set_defaults(func=main_finetune)


def settings(args: argparse.Namespace) -> FinetuneSettings:
    return merge(FinetuneSettings, given=vars(args))


def main_finetune(args: argparse.Namespace) -> int:
    report(run(settings(args)))
    return 0
