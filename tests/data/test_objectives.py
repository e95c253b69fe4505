"""BERT objectives: MLM masking proportions (statistical) and NSP pair construction."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groundup.data import bert_pair, mask_tokens, nsp_pairs
from groundup.data.objectives import IGNORE, IS_NEXT, NOT_NEXT

CLS, SEP, PAD, MASK, V = 1, 2, 0, 3, 1000


def _batch(n: int = 256, t: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, V, (n, t), generator=g)
    ids[:, 0], ids[:, t // 2], ids[:, -1] = CLS, SEP, SEP
    mask = torch.ones_like(ids)
    ids[::2, -20:], mask[::2, -20:] = PAD, 0  # half the rows padded
    return ids, mask


def test_mlm_proportions_on_a_large_batch():
    ids, mask = _batch()
    before = ids.clone()
    inputs, labels = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=(CLS, SEP, PAD),
                                 attention_mask=mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, before), "the input tensor must not be modified"
    eligible = mask.bool() & ~torch.isin(ids, torch.tensor([CLS, SEP, PAD]))
    chosen = labels != IGNORE
    n = int(chosen.sum())
    # ~57k eligible tokens: 15% +- 0.5% chosen (about 6 standard deviations)
    assert abs(n / int(eligible.sum()) - 0.15) < 0.005
    assert not (chosen & ~eligible).any(), "special tokens and padding are never chosen"
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == IGNORE).all()
    assert torch.equal(inputs[~chosen], ids[~chosen]), "unchosen tokens are untouched"
    masked = (inputs == MASK) & chosen
    unchanged = (inputs == ids) & chosen
    randomised = chosen & ~masked & ~unchanged
    assert abs(int(masked.sum()) / n - 0.8) < 0.02
    # a random draw can hit the original token (1 in V): "unchanged" is 10% plus that sliver
    assert abs(int(unchanged.sum()) / n - 0.1) < 0.015
    assert abs(int(randomised.sum()) / n - 0.1) < 0.015


def test_mlm_is_reproducible_and_validates():
    ids, _ = _batch(8, 32)
    a = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="mlm_probability=1.5"):
        mask_tokens(ids, mask_token_id=MASK, vocab_size=V, mlm_probability=1.5)
    with pytest.raises(ValueError, match="mask_token_id=5000"):
        mask_tokens(ids, mask_token_id=5000, vocab_size=V)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(10, 99), max_size=30), st.lists(st.integers(10, 99), max_size=30),
       st.integers(5, 40))
def test_bert_pair_layout(a, b, max_len):
    if len(a) + len(b) == 0 or max_len < 5:
        return
    ids, types = bert_pair(a, b, cls_id=CLS, sep_id=SEP, max_len=max_len)
    assert len(ids) == len(types) <= max_len
    assert ids[0] == CLS and ids[-1] == SEP and ids.count(SEP) == 2
    first_sep = ids.index(SEP)
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    kept_a, kept_b = ids[1:first_sep], ids[first_sep + 1:-1]
    assert kept_a == a[: len(kept_a)] and kept_b == b[: len(kept_b)], "truncation drops tokens from the end"
    if len(a) + len(b) > max_len - 3:
        assert abs(len(kept_a) - len(kept_b)) <= 1 or min(len(kept_a), len(kept_b)) in (len(a), len(b))


def test_nsp_pairs_are_half_next_and_really_next():
    # sentence ids encode (document, index) so the test can tell where B came from
    docs = [[[10 + d, 200 + i] for i in range(20)] for d in range(50)]
    pairs = nsp_pairs(docs, cls_id=CLS, sep_id=SEP, max_len=16, seed=0)
    assert len(pairs) == 50 * 19
    labels = [p["label"] for p in pairs]
    assert abs(labels.count(IS_NEXT) / len(labels) - 0.5) < 0.05  # 950 pairs: ~3 standard deviations
    for p in pairs:
        ids = p["input_ids"]
        (da, ia), (db, ib) = ids[1:3], ids[4:6]
        if p["label"] == IS_NEXT:
            assert da == db and ib == ia + 1
        else:
            assert p["label"] == NOT_NEXT and da != db
    with pytest.raises(ValueError, match="at least two non-empty documents"):
        nsp_pairs(docs[:1], cls_id=CLS, sep_id=SEP)
