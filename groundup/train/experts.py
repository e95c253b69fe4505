"""Expert utilisation while training an MoE: each step's share of routing choices per expert and layer, the
fraction of tokens dropped by the capacity, and a plot of both (experts.png in the run folder).

The MoE layers count what they route (nn/moe.MoE.usage, .dropped ...); the loop clears the counts before a
step and reads them after it, so a row describes exactly that step's micro-batches (on rank 0, for its own
share of the batch under DDP).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..nn.moe import moe_layers
from ..utils.files import atomic_file


class ExpertLog:
    """Reads a model's MoE counters each step; keeps the run's totals per layer for the heatmap."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = moe_layers(model)
        self.totals: dict[str, torch.Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.layers)

    def reset(self) -> None:
        for _, m in self.layers:
            m.reset_usage()

    def read(self) -> dict[str, float | list]:
        """This step's figures: per layer the experts' shares of the routing choices (what the router asked for,
        before the capacity cut) and the dropped fraction; over layers the mean dropped fraction and the largest
        load relative to an even share (1.0 = balanced)."""
        E = self.layers[0][1].n_experts
        counts = torch.stack([m.counters.to(torch.float64) for _, m in self.layers]).cpu()  # [L, 2E + 3], one sync
        wanted, dropped, seen = counts[:, E:2 * E], counts[:, 2 * E + 1], counts[:, 2 * E + 2]
        for (name, _), usage in zip(self.layers, wanted, strict=True):
            self.totals[name] = self.totals.get(name, torch.zeros_like(usage)) + usage
        share = wanted / wanted.sum(1, keepdim=True).clamp(min=1)  # [L, E]
        dropped = (dropped / seen.clamp(min=1)).tolist()
        imbalance = (share.max(1).values * E).tolist()
        shares = [[round(x, 4) for x in row] for row in share.tolist()]
        n = len(self.layers)
        return {"moe_dropped": sum(dropped) / n, "moe_max_load": max(imbalance), "moe_share": shares,
                "moe_dropped_per_layer": [round(d, 4) for d in dropped]}


def plot_experts(metrics: Path, log: ExpertLog, png: Path) -> None:
    """Left: each layer's share of routing choices per expert over the run (a heatmap; an even load is 1/E
    everywhere). Right: the dropped-token fraction and the largest expert load (x an even share) per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "moe_dropped" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.3]})
    names = list(log.totals)
    if names:
        share = torch.stack([t / t.sum().clamp(min=1) for t in log.totals.values()]).numpy()
        im = left.imshow(share, aspect="auto", cmap="viridis", vmin=0)
        left.set_yticks(range(len(names)), [n.replace(".mlp", "") for n in names], fontsize=7)
        left.set_xlabel("expert")
        left.set_title(f"share of routing choices (even = 1/{share.shape[1]})", fontsize=9)
        fig.colorbar(im, ax=left, fraction=0.046)
    if rows:
        steps = [r["step"] for r in rows]
        right.plot(steps, [r["moe_dropped"] for r in rows], label="dropped tokens (fraction)", lw=1)
        right.set_xlabel("optimizer step")
        right.set_ylabel("dropped fraction")
        twin = right.twinx()
        twin.plot(steps, [r["moe_max_load"] for r in rows], color="tab:orange", lw=1, label="max load / even")
        twin.set_ylabel("largest expert load / even share")
        right.legend(loc="upper left", fontsize=8)
        twin.legend(loc="upper right", fontsize=8)
        right.grid(alpha=0.3)
    fig.tight_layout()
    atomic_file(png, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
