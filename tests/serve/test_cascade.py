"""Cascades (FrugalGPT) and routing: the policy arithmetic, threshold fitting under a budget, the live cascade
equal to its simulation, classifiers that learn what they should, an Engine-backed stage's scores."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_util import CharTokenizer, base

from groundup.serve import Engine
from groundup.serve.cascade import Answer, AnswerClassifier, Cascade, EngineStage, Router, fit, frontier, simulate


def test_simulate_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.3]])
    correct = torch.tensor([[1, 0], [0, 1], [0, 1]])
    costs = torch.tensor([[1.0, 10.0]] * 3)
    stage, right, paid = simulate(scores, correct, costs, [0.5])
    assert stage.tolist() == [0, 1, 0] and right.tolist() == [True, True, False] and paid.tolist() == [1, 11, 1]
    stage, _, paid = simulate(scores, correct, costs, [math.inf])  # never accept: everyone pays both
    assert stage.tolist() == [1, 1, 1] and paid.tolist() == [11, 11, 11]


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 40), st.integers(2, 3), st.integers(0, 2**31 - 1))
def test_fit_keeps_the_budget_and_beats_the_cheapest_alone(n, stages, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, stages, generator=g)
    correct = (torch.rand(n, stages, generator=g) < torch.linspace(0.3, 0.8, stages)).long()
    costs = torch.tensor([[4.0 ** s for s in range(stages)]] * n)
    f = fit(scores, correct, costs, grid=8)
    assert f.cost <= float(costs[:, -1].mean()) + 1e-6  # never more than asking the largest alone
    assert f.accuracy >= float(correct[:, 0].float().mean()) - 1e-9  # the first stage alone is a candidate
    _stage, right, paid = simulate(scores, correct, costs, f.thresholds)
    assert float(right.float().mean()) == pytest.approx(f.accuracy) and float(paid.mean()) == pytest.approx(f.cost)
    points = frontier(scores, correct, costs, grid=8)
    assert all(a.cost <= b.cost and a.accuracy < b.accuracy for a, b in itertools.pairwise(points))


class Fixed:
    """A stage with canned answers, counting the prompts it was asked."""

    def __init__(self, table: dict[str, Answer]) -> None:
        self.table, self.asked = table, []

    def __call__(self, prompts):
        self.asked += prompts
        return [Answer(self.table[p].text, self.table[p].score, self.table[p].cost) for p in prompts]


def test_the_live_cascade_equals_its_simulation():
    prompts = ["a", "b", "c", "d"]
    small = Fixed({p: Answer(p + "1", s, 1.0) for p, s in zip(prompts, [-0.1, -2.0, -0.5, -3.0], strict=True)})
    large = Fixed({p: Answer(p + "2", -0.2, 8.0) for p in prompts})
    out = Cascade([small, large], [-0.6])(prompts)
    assert [(a.text, s, c) for a, s, c in out] == [("a1", 0, 1.0), ("b2", 1, 9.0), ("c1", 0, 1.0), ("d2", 1, 9.0)]
    assert large.asked == ["b", "d"]  # only the rejected ones went on
    scores = torch.tensor([[-0.1, -0.2], [-2.0, -0.2], [-0.5, -0.2], [-3.0, -0.2]])
    stage, _, paid = simulate(scores, torch.zeros(4, 2, dtype=torch.long), torch.tensor([[1.0, 8.0]] * 4), [-0.6])
    assert stage.tolist() == [s for _, s, _ in out] and paid.tolist() == [c for _, _, c in out]
    with pytest.raises(ValueError, match="2 stages need 1 thresholds"):
        Cascade([small, large], [])


def test_router_and_answer_classifier_learn_a_plain_rule():
    train = [f"add {i} and {j}" for i in range(8) for j in range(4)] + [f"times {i} by {j}" for i in range(8)
                                                                        for j in range(4)]
    labels = torch.tensor([0] * 32 + [1] * 32)
    router = Router(2).fit(train, labels)
    assert router(["add 11 and 3", "times 12 by 5"]).tolist() == [0, 1]
    correct = torch.tensor([[1, 1], [0, 1], [0, 0]])
    assert Router.labels(correct, torch.tensor([[1.0, 5.0]] * 3)).tolist() == [0, 1, 1]
    right = [i % 2 == 0 for i in range(len(train))]  # in both kinds of prompt, confident answers are right
    answers = [Answer("x", -0.1, 1, [-0.1, -0.2]) if r else Answer("y", -3.0, 1, [-3.0, -2.5]) for r in right]
    clf = AnswerClassifier().fit(train, answers, right)
    p = clf(["add 1 and 9", "times 2 by 2"], [Answer("x", -0.1, 1, [-0.1, -0.1]), Answer("y", -3, 1, [-3.0])])
    assert p[0] > 0.5 > p[1]


def test_an_engine_stage_scores_with_the_models_own_logprobs():
    model, tok = base(), CharTokenizer()
    stage = EngineStage("tiny", Engine(model, tok), tok, max_tokens=5, template="{prompt}xy")
    (a,) = stage(["abc"])
    ids = tok.encode("abcxy")
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([ids + a.tokens])).float()[0], -1)
    want = [float(full[len(ids) - 1 + j, t]) for j, t in enumerate(a.tokens)]
    assert a.text == tok.decode(a.tokens)
    assert a.logprobs == pytest.approx(want, abs=1e-4) and a.score == pytest.approx(sum(want) / 5, abs=1e-4)
    assert a.cost == stage.cost_per_token * (len(ids) + 5)
