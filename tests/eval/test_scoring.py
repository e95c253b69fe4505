"""Scoring and perplexity against direct computations: rolling windows as the harness cuts them, shared
contexts equal to one forward per request, strided perplexity equal to the transformers guide's loop,
bits per byte by hand, KL and top-1 agreement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import groundup as gu
from groundup import eval as ge


@pytest.fixture(scope="module")
def model_tok(lm_folder):
    return gu.from_pretrained(lm_folder).eval(), gu.Tokenizer.from_pretrained(lm_folder)


def test_rolling_windows_are_the_harness_windows():
    lm_utils = pytest.importorskip("lm_eval.utils")
    for n in (1, 2, 5, 16, 17, 33, 64):
        for window in (1, 2, 4, 16, 31):
            ids = list(range(100, 100 + n))
            theirs = [lm_utils.make_disjoint_window(w) for w in
                      lm_utils.get_rolling_token_windows(ids, prefix_token=7, max_seq_len=window, context_len=1)]
            assert list(ge.rolling_windows(ids, 7, window)) == theirs, (n, window)


def direct_loglikelihood(model, ctx, cont):
    ids = torch.tensor([ctx + cont])
    logp = model(ids[:, :-1])[0].float().log_softmax(-1)[len(ctx) - 1:]  # the positions predicting cont
    tgt = torch.tensor(cont)
    return float(logp.gather(1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all())


def test_shared_contexts_score_as_one_forward_per_request(model_tok):
    model, tok = model_tok
    g = torch.Generator().manual_seed(0)
    pairs = []
    for q in range(5):  # questions of different lengths, 1..4 choices each, continuations of 1..6 tokens
        ctx = torch.randint(3, tok.vocab_size, (4 + 7 * q,), generator=g).tolist()
        for c in range(1 + q % 4):
            pairs.append((ctx, torch.randint(3, tok.vocab_size, (1 + (c * 5 + q) % 6,), generator=g).tolist()))
    want = [direct_loglikelihood(model, c, x) for c, x in pairs]
    for share in (True, False):
        for bs in (1, 3, 16):
            got = ge.Scorer(model, tok, batch_size=bs, share_contexts=share, progress=False).loglikelihood_ids(pairs)
            for (a, ga), (b, gb) in zip(got, want, strict=True):
                assert abs(a - b) < 1e-4 and ga == gb


def test_greedy_flag_is_true_for_the_models_own_continuation(model_tok):
    model, tok = model_tok
    ctx = tok.encode("Question: How many legs does a spider have?\nAnswer:")
    new = gu.generate(model, torch.tensor([ctx]), 5)[0, len(ctx):].tolist()
    (lp, greedy), (_, other) = ge.Scorer(model, tok, progress=False).loglikelihood_ids(
        [(ctx, new), (ctx, [*new[:-1], (new[-1] + 1) % tok.vocab_size])])
    assert greedy and not other and lp < 0


def test_context_longer_than_the_window_is_cut_on_the_left_and_counted(model_tok):
    model, tok = model_tok
    ctx, cont = list(range(3, 83)), [5, 6, 7]
    s = ge.Scorer(model, tok, max_length=32, progress=False)
    (lp, _), = s.loglikelihood_ids([(ctx, cont)])
    inputs = (ctx + cont)[-33:]  # the harness keeps the last max_length + 1 ids
    assert lp == pytest.approx(direct_loglikelihood(model, inputs[:-3], inputs[-3:])[0], abs=1e-4)
    assert s.truncated == 1
    with pytest.raises(ValueError, match="more than the window"):
        s.loglikelihood_ids([([1], list(range(3, 40)))])


def hf_guide_perplexity(model, ids, window, stride):
    """The loop of transformers' perplexity guide (labels shifted inside the model), token count fixed."""
    enc = torch.tensor([ids])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, enc.size(1), stride):
        end = min(begin + window, enc.size(1))
        trg_len = end - prev_end
        inp = enc[:, begin:end]
        tgt = inp.clone()
        tgt[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(inp, labels=tgt).loss
        n = int((tgt[:, 1:] != -100).sum())  # the labels the loss averaged (the guide's "- batch size"
        # is right only for the first window, where the first label is the one the shift drops)
        nll_sum += float(loss) * n
        n_tokens += n
        prev_end = end
        if end == enc.size(1):
            break
    return math.exp(nll_sum / n_tokens), n_tokens


def windows_perplexity(model, ids, windows):
    """exp(mean NLL) of the scored places of (begin, end, first) windows, from transformers' logits."""
    nll, n = 0.0, 0
    for b, e, first in windows:
        with torch.no_grad():
            logp = model(torch.tensor([ids[b:e]])).logits[0].float().log_softmax(-1)
        tgt = torch.tensor(ids[first:e])
        nll -= float(logp[first - b - 1: e - b - 1].gather(1, tgt[:, None]).sum())
        n += len(tgt)
    return math.exp(nll / n), n


@pytest.fixture(scope="module")
def hf_model(lm_folder):
    import transformers as T

    return T.AutoModelForCausalLM.from_pretrained(lm_folder).eval()


@pytest.mark.parametrize("window,stride", [(32, 16), (48, 7), (128, 100), (32, 32), (128, 128)])
def test_strided_perplexity_equals_transformers(model_tok, hf_model, window, stride):
    model, tok = model_tok
    text = " ".join(t.read_text() for t in sorted(ge.tasks.TASKS_DIR.glob("tiny_*.jsonl")))[:1500]
    ids = [tok.bos_token_id, *tok.encode(text, add_special_tokens=False)]
    assert len(ids) > 2 * window
    got = ge.perplexity(model, ids[1:], prefix_id=tok.bos_token_id, window=window, stride=stride, text=text,
                        batch_size=3, progress=False)
    assert got.tokens == len(ids) - 1  # every token once
    if stride < window:  # the guide's own loop scores every token too: the same number
        want, n = hf_guide_perplexity(hf_model, ids, window, stride)
        assert n == got.tokens and got.token_perplexity == pytest.approx(want, rel=1e-4)
    # where the guide would skip each window's first token, ours start a place earlier: check those windows
    spans = list(ge.strided_windows(len(ids), window, stride))
    assert all(b < first for b, _, first in spans) and all(e - b <= window for b, e, _ in spans)
    want, n = windows_perplexity(hf_model, ids, spans)
    assert n == got.tokens and got.token_perplexity == pytest.approx(want, rel=1e-4)


def test_bits_per_byte_and_word_perplexity_by_hand():
    # all weights zero: every next-token distribution is uniform over V, so each token costs ln V nats
    model = gu.CausalLM(gu.Config.preset("tiny-llama").replace(vocab_size=256, d_model=16, n_heads=2, n_kv_heads=1,
                                                                d_ff=32, n_layers=1))
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    text = "héllo wörld"  # 11 characters, 13 UTF-8 bytes, 2 words
    ids = list(text.encode("utf-8"))  # byte ids
    got = ge.perplexity(model, ids, prefix_id=0, text=text, progress=False)
    assert (got.tokens, got.bytes, got.words) == (13, 13, 2)
    assert got.token_perplexity == pytest.approx(256)
    assert got.bits_per_byte == pytest.approx(13 * 8 / 13)  # log2(256) bits per token, a token per byte
    assert got.word_perplexity == pytest.approx(256 ** (13 / 2))


def test_kl_and_top1_against_a_reference(model_tok):
    model, tok = model_tok
    other = gu.CausalLM(model.config).eval()
    text = "Perplexity is the exponential of the average negative log-likelihood per token."
    ids = tok.encode(text, add_special_tokens=False)
    same = ge.perplexity(model, ids, prefix_id=tok.bos_token_id, reference=model, text=text, progress=False)
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.top1 == same.tokens
    got = ge.perplexity(model, ids, prefix_id=tok.bos_token_id, reference=other, text=text, window=16, stride=8,
                        progress=False)
    # direct: one forward over the whole text (it fits the context), the same positions
    seq = torch.tensor([[tok.bos_token_id, *ids]])
    with torch.no_grad():
        p, q = other(seq)[0, :-1].log_softmax(-1), model(seq)[0, :-1].log_softmax(-1)
    # the strided windows give each token less context than the full forward: compare with the windows' own
    full = ge.perplexity(model, ids, prefix_id=tok.bos_token_id, reference=other, text=text, window=128,
                         progress=False)
    assert full.kl == pytest.approx(float(F.kl_div(q, p, log_target=True, reduction="sum")), rel=1e-4)
    assert full.top1 == int((p.argmax(-1) == q.argmax(-1)).sum())
    assert got.tokens == full.tokens and got.kl > 0
