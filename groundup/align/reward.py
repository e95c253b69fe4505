"""Reward models: a causal LM's trunk with a scalar head read at the last real token (Ouyang et al. 2022,
section 3.5; Stiennon et al. 2020), in transformers' ``...ForSequenceClassification`` folder format with
num_labels=1, so transformers, trl and groundup all load the same folder.

The score is read where transformers reads it: the row's last token that is not the pad token (so when
pad and end-of-text are one id, the token before the end-of-text, in both libraries). The head has no bias,
as transformers' ``score`` layer. LoRA over the trunk trains with the head in full; a saved reward model is
always a whole folder (the update merged).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..checkpoint.hf import config_from_hf, config_to_hf, load_into, state_dict_from_hf, state_dict_to_hf
from ..checkpoint.io import CheckpointError, load_tensors, read_json, write_tensors
from ..data.preference import last_index
from ..models import meta_model
from ..peft import adapter_layers, load_adapter, merge_and_unload, write_adapter
from ..train.checkpoint import Checkpointable
from ..utils.files import atomic_folder, read_safetensors

SCORE = "score.weight"


class RewardModel(nn.Module, Checkpointable):
    """forward(ids [R, T], real [R, T]) -> rewards [R] (fp32): the score head on the hidden state of each
    row's last real token that is not padding. ``real`` marks the row's tokens (prompt and answer)."""

    def __init__(self, backbone: nn.Module, score: nn.Linear | None = None) -> None:
        super().__init__()
        self.backbone, self.config = backbone, backbone.config
        w = backbone.embed.weight
        self.score = score or nn.Linear(self.config.d_model, 1, bias=False, device=w.device, dtype=w.dtype)
        if score is None:
            nn.init.normal_(self.score.weight, std=1 / (self.config.d_model + 1) ** 0.5)

    def pool_index(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """[R] where each row is read: its last real token that is not the pad id (transformers' rule)."""
        pad = self.config.pad_token_id
        keep = real.bool() if pad is None else real.bool() & (ids != pad)
        idx = last_index(keep)
        return torch.where(idx < 0, last_index(real.bool()), idx)

    def forward(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.backbone.hidden(ids)  # [R, T, C]
        h = hidden[torch.arange(ids.shape[0], device=ids.device), self.pool_index(ids, real)]  # [R, C]
        return self.score(h.to(self.score.weight.dtype)).squeeze(-1).float()

    # -- folders ------------------------------------------------------------------------------------------------
    def write_folder(self, folder: Path) -> None:
        """config.json + model.safetensors of transformers' sequence-classification class (num_labels=1)
        into an existing folder; a LoRA-wrapped trunk is written merged (the model itself is unchanged)."""
        backbone = self.backbone
        if adapter_layers(backbone):
            import copy

            backbone = merge_and_unload(copy.deepcopy(backbone))
        cfg = self.config
        body = config_to_hf(cfg, backbone.embed.weight.dtype)
        body["architectures"] = [a.replace("ForCausalLM", "ForSequenceClassification")
                                 for a in body.get("architectures", [])]
        body.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, num_labels=1)
        if body.get("pad_token_id") is None:
            body["pad_token_id"] = cfg.eos_token_id  # transformers reads batches > 1 only with a pad id
        state = {k: v for k, v in backbone.state_dict().items() if k not in backbone.tied_keys()}
        tensors = {k: v for k, v in state_dict_to_hf(state, cfg).items() if k != "lm_head.weight"}
        tensors[SCORE] = self.score.weight.detach()
        (folder / "config.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        write_tensors(folder, tensors)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the sequence-classification folder atomically."""
        return atomic_folder(folder, self.write_folder)

    def write_checkpoint(self, folder: Path) -> None:
        if adapter_layers(self.backbone):  # resumable as it trains: the adapter and the head
            write_adapter(self.backbone, folder)
            from safetensors.torch import save_file

            save_file({SCORE: self.score.weight.detach().cpu().contiguous()}, str(folder / "score.safetensors"))
        else:
            self.write_folder(folder)

    def read_checkpoint(self, folder: Path) -> None:
        if adapter_layers(self.backbone):
            load_adapter(self.backbone, folder, into_existing=True)
            score = read_safetensors(folder / "score.safetensors")[SCORE]
        else:
            loaded = load_reward_model(folder)
            self.backbone.load_state_dict(loaded.backbone.state_dict())
            score = loaded.score.weight
        with torch.no_grad():
            self.score.weight.copy_(score)


def is_reward_folder(folder: str | Path) -> bool:
    """Whether a folder holds a sequence-classification model (a reward model)."""
    path = Path(folder) / "config.json"
    return path.is_file() and any("ForSequenceClassification" in a
                                  for a in read_json(path).get("architectures", []) or [])


def load_reward_model(folder: str | Path, *, dtype: torch.dtype | None = None) -> RewardModel:
    """A reward model from a transformers sequence-classification folder with one label (groundup's or
    transformers' own)."""
    folder = Path(folder)
    where = str(folder / "config.json")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json; a reward model is a folder written by `groundup align "
                              "--method rm` or transformers' save_pretrained")
    hf = read_json(folder / "config.json")
    if not is_reward_folder(folder):
        raise CheckpointError(f"{where}: architectures {hf.get('architectures')} is not a ...ForSequenceClassification "
                              "model; give the folder of a reward model")
    labels = len(hf.get("id2label") or {}) or hf.get("num_labels", 1)
    if labels != 1:
        raise CheckpointError(f"{where}: {labels} labels; a reward model has one (num_labels=1)")
    hf = {**hf, "architectures": [a.replace("ForSequenceClassification", "ForCausalLM") for a in hf["architectures"]]}
    cfg = config_from_hf(hf, where)
    tensors = load_tensors(folder)
    if SCORE not in tensors:
        raise CheckpointError(f"{folder}: no tensor {SCORE!r}, the reward head")
    score = tensors.pop(SCORE)
    cfg = cfg.replace(tie_embeddings=True)  # no LM head in the file: the trunk's is tied and unused
    state = state_dict_from_hf(tensors, cfg)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        score = score.to(dtype)
    backbone = load_into(meta_model(cfg), state, str(folder))
    head = nn.Linear(cfg.d_model, 1, bias=False, dtype=score.dtype)
    with torch.no_grad():
        head.weight.copy_(score.reshape(1, -1))
    return RewardModel(backbone, head).eval()
