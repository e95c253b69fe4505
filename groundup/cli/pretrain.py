"""`groundup pretrain`: parse the settings (defaults, --config YAML, flags) and run the library's
pretraining pipeline (groundup/train/pretrain.py)."""

from __future__ import annotations

import argparse

from ..train.pretrain import PretrainSettings, report, run
from ..utils.settings import add_flags


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file with any of the settings below (underscored names)")
    add_flags(p, PretrainSettings)


def settings(args: argparse.Namespace) -> PretrainSettings:
    return PretrainSettings.resolve(config=args.config, given=vars(args))


def main_pretrain(args: argparse.Namespace) -> int:
    report(run(settings(args)))
    return 0
