"""`python -m groundup.train [pretrain flags]`, also under torchrun for data-parallel training:

    torchrun --nproc_per_node=2 -m groundup.train --data 'corpus/*.txt' --tokenizer tok/ --steps 100

Each process joins the process group (gloo on CPU, nccl on CUDA), draws the same global batches and trains
on its own rows; gradients are averaged by DistributedDataParallel; only rank 0 writes.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..utils.settings import add_flags
from .pretrain import PretrainSettings, report, run


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m groundup.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file with any of the settings below")
    add_flags(parser, PretrainSettings)
    args = parser.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    log = print if rank == 0 else (lambda *_: None)
    try:
        s = PretrainSettings.resolve(config=args.config, given=vars(args))
        if rank != 0:
            s.quiet = True
        summary = run(s, log=log)
        if rank == 0:
            report(summary)
        if world > 1:  # no rank tears the group down while another still has collective work in flight
            torch.distributed.barrier()
    except (ValueError, OSError) as err:
        print(f"groundup.train (rank {rank}): error: {err}", file=sys.stderr)
        return 2
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
