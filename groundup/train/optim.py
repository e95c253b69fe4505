"""AdamW (Loshchilov & Hutter, 2019) with the usual LLM recipe, its 8-bit-state variant, and the learning-rate
schedule.

Weight decay applies to matrices only: embeddings, norm gains and biases are left undecayed (decaying a
norm gain or an embedding row pulls it toward zero for no benefit; GPT-2/nanoGPT/Llama practice). The
schedule is a linear warm-up to `lr`, then a cosine decay to `min_lr` at `max_steps` (Loshchilov & Hutter,
2017, SGDR, without restarts).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn.nf4 import dequantize_8bit, dynamic_map, quantize_8bit


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, and everything else (embeddings, norms, biases)."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, keep, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights appear once
        (keep if p.dim() < 2 or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": keep, "weight_decay": 0.0, "name": "no_decay"}]


OPTIMIZERS = ("adamw", "adamw8bit")


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                   eps: float = 1e-8, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW over param_groups, its moments in fp32 ("adamw") or in 8 bits ("adamw8bit", AdamW8bit)."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer={kind!r} must be one of {', '.join(OPTIMIZERS)}")
    cls = torch.optim.AdamW if kind == "adamw" else AdamW8bit
    return cls(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def lr_at(step: int, *, lr: float, warmup: int, max_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine to min_lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= max_steps:
        return min_lr
    progress = (step - warmup) / max(1, max_steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class AdamW8bit(torch.optim.Optimizer):
    """AdamW whose two moments are stored in 8 bits (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
    Quantization"): 2 bytes of state per weight instead of 8.

    Each step dequantizes m and v to fp32, applies the AdamW update there (the fp32 arithmetic of
    bitsandbytes' AdamW8bit), and quantizes them again in blocks of 256 with one fp32 absmax each: m with the
    signed dynamic map, v (never negative) with the unsigned one (nn/nf4.dynamic_map), so each block keeps its
    own range and an outlier spoils only 255 neighbours. Tensors under ``min_8bit_size`` values keep fp32
    moments, where the absmax overhead outweighs the saving (bitsandbytes' rule, 4096).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, min_8bit_size: int = 4096, blocksize: int = 256) -> None:
        if lr < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW8bit: lr={lr}, eps={eps} must be >= 0 and betas={betas} in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.min_8bit_size, self.blocksize = min_8bit_size, blocksize
        if self.CHUNK % blocksize:
            raise ValueError(f"AdamW8bit: blocksize={blocksize} must divide {self.CHUNK}")
        self.maps = (dynamic_map(signed=True), dynamic_map(signed=False))

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, except that the state keeps its dtypes: torch casts every state tensor of a float parameter
        to the parameter's dtype, which would put a bf16 parameter's absmax values and codes in bf16."""
        given = {int(k): dict(v) for k, v in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]  # the numbering of state_dict()
        for idx, st in given.items():
            p = params[idx]
            self.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in st.items()}

    CHUNK = 2**20  # values updated at a time (a multiple of any block size): the fp32 copies stay small

    def _update(self, p: torch.Tensor, state: dict, lr: float, beta1: float, beta2: float, eps: float, wd: float,
                part: slice) -> None:
        """The AdamW step on the flattened values ``part`` of p (whole blocks): dequantize m and v there,
        update in fp32, quantize them again."""
        t = state["step"]
        flat_p, grad = p.view(-1), p.grad.reshape(-1)[part].float()
        moments = []
        for i in (1, 2):
            if f"absmax{i}" in state:
                blocks = slice(part.start // self.blocksize, -(-part.stop // self.blocksize))
                q = state[f"state{i}"].view(-1)[part]
                moments.append(dequantize_8bit(q, state[f"absmax{i}"][blocks], self.maps[i - 1].to(q.device),
                                               self.blocksize))
            else:
                moments.append(state[f"state{i}"].view(-1)[part])  # fp32, updated in place
        m, v = moments
        w = flat_p[part].float()
        m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(eps)
        if wd > 0:
            w.mul_(1.0 - lr * wd)  # decoupled weight decay (Loshchilov & Hutter)
        w.addcdiv_(m, denom, value=-lr / (1.0 - beta1**t))
        flat_p[part] = w
        for i, value in ((1, m), (2, v)):
            if f"absmax{i}" in state:
                q, absmax = quantize_8bit(value, self.maps[i - 1].to(value.device), self.blocksize)
                state[f"state{i}"].view(-1)[part] = q
                first = part.start // self.blocksize
                state[f"absmax{i}"][first: first + absmax.numel()] = absmax

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    for i in (1, 2):
                        if p.numel() >= self.min_8bit_size:
                            state[f"state{i}"] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
                            state[f"absmax{i}"] = torch.zeros(-(p.numel() // -self.blocksize), device=p.device)
                        else:
                            state[f"state{i}"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                state["step"] += 1
                step = self.CHUNK // self.blocksize * self.blocksize
                for start in range(0, p.numel(), step):  # blocks are independent: chunks give the whole result
                    self._update(p, state, lr, beta1, beta2, eps, wd, slice(start, min(start + step, p.numel())))
        return loss
