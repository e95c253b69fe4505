"""LLM cascades and routing: send each prompt to the cheapest model that will answer it well.

A cascade (FrugalGPT; Chen, Zaharia and Zou, 2023, "FrugalGPT: How to Use Large Language Models While
Reducing Cost and Improving Performance") asks its models in order, cheapest first; a scorer judges each
answer and the first one scoring at least its stage's threshold is returned (the last stage always
answers). The scorer here is the answer's mean token log-probability under the model that wrote it, or a
small classifier trained on (prompt, answer, log-probabilities) to predict that the answer is right. The
thresholds are fitted on a validation set with ground truth: every stage answers every validation prompt
once, and then each candidate threshold vector is only arithmetic, so the search is exhaustive over a grid
of each stage's score quantiles, maximising accuracy under a cost budget.

A router (a "pseudo mixture of experts") instead picks one specialist per prompt up front, with a
classifier on the prompt alone trained to predict the cheapest specialist that answers it right.

Costs are whatever the caller counts per call (here: parameters x tokens processed, a FLOP proxy).
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .params import SamplingParams


@dataclass
class Answer:
    """One model's answer to one prompt: its text, the scorer's value, what the call cost."""

    text: str
    score: float
    cost: float
    logprobs: list[float] | None = None
    tokens: list[int] | None = None


def mean_logprob(logprobs: Sequence[float]) -> float:
    """The cascade's default score of an answer: its mean token log-probability (-inf for no token)."""
    return sum(logprobs) / len(logprobs) if logprobs else -math.inf


class EngineStage:
    """A model behind an Engine as a cascade stage: greedy answers, scored by their mean token log-probability.

    ``template`` turns a prompt into the model's input (few-shot examples, a separator); ``cost_per_token``
    prices every token the call processes, prompt and answer (default: the model's parameter count).
    """

    def __init__(self, name: str, engine, tokenizer, *, template: str = "{prompt}", adapter: str | None = None,
                 max_tokens: int = 32, stop: Sequence[str] = (), cost_per_token: float | None = None) -> None:
        self.name, self.engine, self.tok, self.template = name, engine, tokenizer, template
        self.adapter, self.max_tokens, self.stop = adapter, max_tokens, list(stop)
        self.cost_per_token = cost_per_token if cost_per_token is not None else float(
            sum(p.numel() for p in engine.model.parameters()))

    def __call__(self, prompts: Sequence[str]) -> list[Answer]:
        ids = [self.tok.encode(self.template.format(prompt=p), allowed_special="all") for p in prompts]
        params = SamplingParams(max_tokens=self.max_tokens, stop=self.stop, logprobs=0)
        seqs = self.engine.run([(i, params) for i in ids], adapters=[self.adapter] * len(ids))
        out = []
        for prompt_ids, (s,) in zip(ids, seqs, strict=True):
            lps = [lp for lp, _ in s.logprobs]
            out.append(Answer(s.text, mean_logprob(lps),
                              self.cost_per_token * (len(prompt_ids) + len(s.output)), lps, list(s.output)))
        return out


def answer_all(stages: Sequence[Callable], prompts: Sequence[str]) -> list[list[Answer]]:
    """Every stage's answer to every prompt: [N][S] (what fitting needs)."""
    by_stage = [stage(prompts) for stage in stages]
    return [[by_stage[s][i] for s in range(len(stages))] for i in range(len(prompts))]


@dataclass
class Fit:
    """A threshold per stage but the last, and what the cascade scores with them on the fitted set."""

    thresholds: list[float]
    accuracy: float
    cost: float
    share: list[float]  # the fraction of prompts each stage answered


def simulate(scores: torch.Tensor, correct: torch.Tensor, costs: torch.Tensor, thresholds: Sequence[float]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores, correct, costs [N, S] -> (the answering stage [N], right [N], cost paid [N]): each prompt goes
    through the stages until one scores >= its threshold (the last always answers), paying every stage it
    asked."""
    N, S = scores.shape
    accept = torch.ones(N, S, dtype=torch.bool)
    for s, t in enumerate(thresholds):
        accept[:, s] = scores[:, s] >= t
    stage = accept.float().argmax(1)  # the first stage that accepts
    paid = torch.cumsum(costs, 1).gather(1, stage[:, None])[:, 0]
    return stage, correct.gather(1, stage[:, None])[:, 0].bool(), paid


def candidates(scores: torch.Tensor, grid: int) -> list[list[float]]:
    """Per stage but the last: +inf (never accept), -inf (always) and ``grid`` quantiles of its scores."""
    out = []
    for s in range(scores.shape[1] - 1):
        col = scores[:, s][torch.isfinite(scores[:, s])]
        qs = torch.quantile(col, torch.linspace(0, 1, grid)).tolist() if len(col) else []
        out.append(sorted({math.inf, -math.inf, *qs}))
    return out


def frontier(scores: torch.Tensor, correct: torch.Tensor, costs: torch.Tensor, *, grid: int = 24) -> list[Fit]:
    """Every threshold vector of the grid, reduced to the accuracy-cost frontier (cheapest first, each point
    more accurate than the one before)."""
    fits = []
    for ts in itertools.product(*candidates(scores, grid)):
        stage, right, paid = simulate(scores, correct, costs, ts)
        share = torch.bincount(stage, minlength=scores.shape[1]).float() / len(stage)
        fits.append(Fit(list(ts), float(right.float().mean()), float(paid.mean()), share.tolist()))
    fits.sort(key=lambda f: (f.cost, -f.accuracy))
    best, out = -1.0, []
    for f in fits:
        if f.accuracy > best:
            out.append(f)
            best = f.accuracy
    return out


def fit(scores: torch.Tensor, correct: torch.Tensor, costs: torch.Tensor, *, budget: float | None = None,
        grid: int = 24) -> Fit:
    """The most accurate thresholds whose mean cost stays within ``budget`` (default: the cost of always
    asking the last stage alone), the cheaper of equals."""
    if budget is None:
        budget = float(costs[:, -1].mean())
    within = [f for f in frontier(scores, correct, costs, grid=grid) if f.cost <= budget + 1e-9]
    if not within:
        raise ValueError(f"no thresholds keep the mean cost within budget={budget:g}: even the first stage "
                         f"alone costs {float(costs[:, 0].mean()):g}")
    return max(within, key=lambda f: (f.accuracy, -f.cost))


class Cascade:
    """Stages asked in order; a prompt stops at the first answer whose score reaches its stage's threshold.
    ``scorers`` (optional, one per stage) re-score an answer from (prompt, answer), e.g. an AnswerClassifier."""

    def __init__(self, stages: Sequence[Callable], thresholds: Sequence[float],
                 scorers: Sequence[Callable | None] | None = None, names: Sequence[str] | None = None) -> None:
        if len(thresholds) != len(stages) - 1:
            raise ValueError(f"{len(stages)} stages need {len(stages) - 1} thresholds, got {len(thresholds)}")
        self.stages, self.thresholds = list(stages), list(thresholds)
        self.scorers = list(scorers) if scorers is not None else [None] * len(stages)
        self.names = list(names) if names is not None else [getattr(s, "name", f"stage{i}")
                                                             for i, s in enumerate(stages)]

    def __call__(self, prompts: Sequence[str]) -> list[tuple[Answer, int, float]]:
        """(the accepted answer, the stage that gave it, the cost of every call made) per prompt."""
        result: list[tuple[Answer, int, float] | None] = [None] * len(prompts)
        paid = [0.0] * len(prompts)
        todo = list(range(len(prompts)))
        for s, stage in enumerate(self.stages):
            answers = stage([prompts[i] for i in todo])
            rest = []
            for i, a in zip(todo, answers, strict=True):
                paid[i] += a.cost
                if self.scorers[s] is not None:
                    a.score = float(self.scorers[s]([prompts[i]], [a])[0])
                if s == len(self.stages) - 1 or a.score >= self.thresholds[s]:
                    result[i] = (a, s, paid[i])
                else:
                    rest.append(i)
            todo = rest
            if not todo:
                break
        return result  # type: ignore[return-value]


# -- small classifiers ------------------------------------------------------------------------------------------
def ngram_features(texts: Sequence[str], dim: int = 2048, n: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
    """Hashed character n-gram counts [N, dim], each row scaled to unit length (the hashing trick)."""
    x = torch.zeros(len(texts), dim)
    for r, t in enumerate(texts):
        for k in n:
            for i in range(max(0, len(t) - k + 1)):
                x[r, zlib.crc32(t[i: i + k].encode()) % dim] += 1.0
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)


class Logistic:
    """Softmax regression on [N, F] features with L2 weight decay, trained by full-batch L-BFGS."""

    def __init__(self, n_classes: int, weight_decay: float = 1e-3) -> None:
        self.n_classes, self.weight_decay = n_classes, weight_decay
        self.w: torch.Tensor | None = None
        self.mean = self.std = None

    def fit(self, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> Logistic:
        self.mean, self.std = x.mean(0), x.std(0).clamp(min=1e-6)
        x = torch.cat([(x - self.mean) / self.std, torch.ones(len(x), 1)], 1)  # [N, F + 1]: a bias column
        w = torch.zeros(x.shape[1], self.n_classes, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w, y) + self.weight_decay * (w[:-1] ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.w = w.detach()
        return self

    def proba(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([(x - self.mean) / self.std, torch.ones(len(x), 1)], 1)
        return (x @ self.w).softmax(-1)


def answer_features(prompts: Sequence[str], answers: Sequence[Answer], dim: int = 256) -> torch.Tensor:
    """What an answer classifier reads: the answer's log-probability statistics and hashed n-grams of
    prompt and answer."""
    stats = []
    for a in answers:
        lps = a.logprobs or [a.score]
        stats.append([sum(lps) / len(lps), min(lps), lps[0], float(len(lps))])
    texts = [p + " => " + a.text for p, a in zip(prompts, answers, strict=True)]
    return torch.cat([torch.tensor(stats), ngram_features(texts, dim)], 1)


class AnswerClassifier:
    """P(the answer is right) from (prompt, answer): FrugalGPT's trained scorer, as a logistic regression."""

    def __init__(self, dim: int = 256) -> None:
        self.dim, self.model = dim, Logistic(2)

    def fit(self, prompts: Sequence[str], answers: Sequence[Answer], right: Sequence[bool]) -> AnswerClassifier:
        self.model.fit(answer_features(prompts, answers, self.dim), torch.tensor([int(r) for r in right]))
        return self

    def __call__(self, prompts: Sequence[str], answers: Sequence[Answer]) -> torch.Tensor:
        return self.model.proba(answer_features(prompts, answers, self.dim))[:, 1]


class Router:
    """Sends each prompt to one of ``n`` specialists, chosen by a classifier on the prompt's text."""

    def __init__(self, n: int, dim: int = 1024) -> None:
        self.n, self.dim, self.model = n, dim, Logistic(n)

    @staticmethod
    def labels(correct: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        """The target per prompt: the cheapest specialist that answers it right, else the most accurate
        specialist overall (correct, costs [N, S] -> [N])."""
        order = costs.mean(0).argsort()
        fallback = int(correct.float().mean(0).argmax())
        out = torch.full((correct.shape[0],), fallback, dtype=torch.long)
        for s in order.flip(0).tolist():  # the cheapest right one is written last
            out[correct[:, s].bool()] = s
        return out

    def fit(self, prompts: Sequence[str], labels: torch.Tensor) -> Router:
        self.model.fit(ngram_features(prompts, self.dim), labels)
        return self

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.model.proba(ngram_features(prompts, self.dim)).argmax(-1)
