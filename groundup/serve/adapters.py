"""The adapters a server runs on one frozen base model, mixed freely in one batch.

LoRA folders are stacked in a peft.LoraBank (each batch row picks its own adapter in the same forward);
prompt-tuning folders become tasks of one SoftPromptEmbedding (a row's soft prompt is its virtual ids put
before its prompt, so rows with different soft prompts batch like any other tokens). Registering an adapter
at runtime rebuilds the bank between engine steps; the base weights are never copied.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint.io import read_json
from ..nn.qlinear import replace_module
from ..peft import AdapterError, LoraBank, MultiLoraLinear, SoftPromptEmbedding, soft_prompt
from ..peft.io import CONFIG, WEIGHTS, read_adapter
from ..peft.multi import combine
from ..utils.files import read_safetensors


@dataclass
class Adapter:
    """One registered adapter: its kind and where the batch finds it."""

    name: str
    folder: Path
    kind: str  # "LORA" | "PROMPT_TUNING"
    index: int  # the LoraBank row, or the soft prompt task
    prompt: torch.Tensor | None = None  # a soft prompt's embeddings [n, C]
    mix: list[tuple[Path, float]] | None = None  # a weighted sum of LoRA adapters: (folder, weight) each

    @property
    def virtual(self) -> int:
        return 0 if self.prompt is None else self.prompt.shape[0]


class Adapters:
    """Named peft adapters served together on ``model`` (changed in place: LoRA layers wrapped, the
    embedding given a soft prompt per prompt-tuning adapter)."""

    def __init__(self, model: nn.Module) -> None:
        if soft_prompt(model) is not None or any(isinstance(m, MultiLoraLinear) for m in model.modules()):
            raise ValueError("the base model already carries adapters; load a plain base and register them here")
        self.model, self.by_name, self.bank = model, {}, None
        self.base_embed = model.embed

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def register(self, name: str, folder: str | Path) -> Adapter:
        """Add the peft folder ``folder`` as ``name`` (checked against the model before anything changes)."""
        folder = Path(folder)
        if not name or ":" in name or "/" in name:
            raise ValueError(f"adapter name {name!r}: give a non-empty name without ':' or '/'")
        if name in self.by_name:
            raise ValueError(f"an adapter named {name!r} is already registered")
        if not (folder / CONFIG).is_file():
            raise AdapterError(f"{folder}: not a peft adapter folder (no {CONFIG})")
        kind = read_json(folder / CONFIG).get("peft_type")
        if kind == "LORA":
            lora = [a for a in self.by_name.values() if a.kind == "LORA"]
            adapter = Adapter(name, folder, kind, len(lora))
            self._rebuild_bank([*lora, adapter])
        elif kind == "PROMPT_TUNING":
            adapter = self._prompt(name, folder)
        else:
            raise AdapterError(f"{folder}: a {kind} adapter; the server serves LORA and PROMPT_TUNING adapters")
        self.by_name[name] = adapter
        if kind == "PROMPT_TUNING":
            self._rebuild_prompts()
        return adapter

    def _prompt(self, name: str, folder: Path) -> Adapter:
        meta = read_json(folder / CONFIG)
        t = read_safetensors(folder / WEIGHTS, error=AdapterError).get("prompt_embeddings")
        n, C = int(meta.get("num_virtual_tokens", 0)), self.model.config.d_model
        if t is None or tuple(t.shape) != (n, C):
            raise AdapterError(f"{folder / WEIGHTS}: prompt_embeddings must be [{n}, {C}] (virtual tokens, "
                               f"d_model), found {None if t is None else tuple(t.shape)}")
        tasks = sum(1 for a in self.by_name.values() if a.kind == "PROMPT_TUNING")
        return Adapter(name, folder, "PROMPT_TUNING", tasks, prompt=t)

    def mix(self, spec: str) -> str:
        """The adapter ``spec`` = "a@0.7+b@0.3" (weights default to 1): the weighted sum of registered LoRA
        adapters as one more row of the bank (peft.multi.combine), made on first use; returns its name."""
        if spec in self.by_name:
            return spec
        terms = []
        for term in spec.split("+"):
            name, _, w = term.partition("@")
            a = self.get(name)
            if a.kind != "LORA" or a.mix is not None:
                raise ValueError(f"adapter {name!r} in {spec!r}: only registered LoRA folders can be mixed")
            try:
                weight = float(w) if w else 1.0
            except ValueError:
                raise ValueError(f"adapter mix {spec!r}: {w!r} is not a weight (write name@0.5)") from None
            terms.append((a.folder, weight))
        if len(terms) < 2:
            raise ValueError(f"adapter mix {spec!r}: name two or more adapters, a@w+b@w")
        lora = [a for a in self.by_name.values() if a.kind == "LORA"]
        adapter = Adapter(spec, Path(spec), "LORA", len(lora), mix=terms)
        self._rebuild_bank([*lora, adapter])
        self.by_name[spec] = adapter
        return spec

    def _unwrap(self) -> list[tuple[str, MultiLoraLinear]]:
        wrapped = [(n, m) for n, m in self.model.named_modules() if isinstance(m, MultiLoraLinear)]
        for name, module in wrapped:
            replace_module(self.model, name, module.base_layer)
        return wrapped

    def _rebuild_bank(self, adapters: list[Adapter]) -> None:
        """A new LoraBank over ``adapters`` (each folder read and checked once, against the unwrapped
        layers; a mix combined from its folders). On any error the old bank is put back."""
        wrapped = self._unwrap()
        try:
            files = [read_adapter(self.model, a.folder) if a.mix is None else
                     combine([read_adapter(self.model, f) for f, _ in a.mix], [w for _, w in a.mix], a.name)
                     for a in adapters]
            bank = LoraBank(self.model, files)
        except Exception:
            self._unwrap()
            for name, module in wrapped:
                replace_module(self.model, name, module)
            raise
        self.bank = bank

    def _rebuild_prompts(self) -> None:
        """One SoftPromptEmbedding over every soft prompt: task t's ids start at vocab + t * n_max; a shorter
        prompt uses the first ids of its range."""
        prompts = [a for a in self.by_name.values() if a.kind == "PROMPT_TUNING"]
        n = max(a.virtual for a in prompts)
        soft = SoftPromptEmbedding(self.base_embed, n, len(prompts))
        with torch.no_grad():
            soft.prompt_embeddings.zero_()
            for a in prompts:
                soft.prompt_embeddings[a.index * n: a.index * n + a.virtual] = a.prompt.to(soft.prompt_embeddings)
        soft.requires_grad_(False)
        self.model.embed = soft

    def rows(self, loras: list[int]) -> contextlib.AbstractContextManager:
        """LoraBank.rows for a batch (one bank row per batch row, -1: the base), or nothing without LoRA."""
        return self.bank.rows(loras) if self.bank is not None else contextlib.nullcontext()

    def prefix(self, name: str | None) -> list[int]:
        """The ids to put before a prompt for adapter ``name`` (a soft prompt's virtual ids; else none)."""
        a = self.get(name)
        if a is None or a.kind != "PROMPT_TUNING":
            return []
        return soft_prompt(self.model).prompt_ids(a.index)[: a.virtual]

    def lora_index(self, name: str | None) -> int:
        """The LoraBank row of adapter ``name`` (-1: the base alone)."""
        a = self.get(name)
        return a.index if a is not None and a.kind == "LORA" else -1

    def get(self, name: str | None) -> Adapter | None:
        if name is None:
            return None
        if name not in self.by_name:
            known = ", ".join(self.by_name) or "none registered"
            raise KeyError(f"unknown adapter {name!r} (known: {known})")
        return self.by_name[name]
