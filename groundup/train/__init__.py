"""Pretraining: optimizer recipe, the training loop, checkpoints that resume exactly."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import TrainArgs, TrainingError, evaluate, train
from .optim import lr_at, make_optimizer, param_groups

__all__ = ["TrainArgs", "TrainingError", "evaluate", "load_checkpoint", "lr_at", "make_optimizer", "param_groups",
           "save_checkpoint", "train"]
