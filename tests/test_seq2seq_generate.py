"""Encoder-decoder decoding: the cache invariant, and greedy / beam search against transformers.generate."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB

import groundup as gu


def _source(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # one padded source
    return ids, mask


def _eos_friendly(name: str, hf_encdec_folder, tmp_path):
    """The tiny model made less degenerate (small biases, so logits depend on the input) and with EOS
    likely enough that hypotheses end at different lengths (Marian: a bias on its output logits; T5: a
    larger EOS embedding row, which its tied head reads)."""
    import transformers as T

    path, ref = hf_encdec_folder(name)
    ref = type(ref).from_pretrained(path).eval()
    with torch.no_grad():
        for pname, p in ref.named_parameters():
            if pname.endswith("bias") and p.dim() == 1:
                p.mul_(0.1)
        if name == "marian":
            ref.final_logits_bias[0, ref.config.eos_token_id] += 3.5
        else:
            ref.shared.weight[ref.config.eos_token_id] *= 2.0
    ref.save_pretrained(tmp_path / name)
    return gu.from_pretrained(tmp_path / name), getattr(T, type(ref).__name__).from_pretrained(tmp_path / name).eval()


def _trim(seqs: torch.Tensor, eos: int) -> list[list[int]]:
    """Each row up to and including its first EOS (after the start token); padding conventions differ."""
    out = []
    for row in seqs.tolist():
        end = next((i for i, t in enumerate(row) if i > 0 and t == eos), len(row) - 1)
        out.append(row[: end + 1])
    return out


@pytest.mark.parametrize("name", ["t5", "marian"])
def test_cached_decode_equals_full_forward(name, hf_encdec_folder):
    model = gu.from_pretrained(hf_encdec_folder(name)[0])
    src, mask = _source()
    tgt = torch.randint(3, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(src, attention_mask=mask, decoder_input_ids=tgt)
        memory = model.encode(src, attention_mask=mask)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, i:i + 1], memory, memory_mask=mask, cache=cache) for i in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 6


@pytest.mark.parametrize("name", ["t5", "marian"])
def test_greedy_matches_hf(name, hf_encdec_folder, tmp_path):
    model, ref = _eos_friendly(name, hf_encdec_folder, tmp_path)
    src, mask = _source(2)
    with torch.no_grad():
        want = ref.generate(src, attention_mask=mask, max_new_tokens=10, do_sample=False, num_beams=1, use_cache=False)
    got = model.generate(src, attention_mask=mask, max_new_tokens=10)
    eos = ref.config.eos_token_id
    assert _trim(got, eos) == _trim(want, eos)


@pytest.mark.parametrize("name", ["t5", "marian"])
@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (2.0, "never"), (-1.0, True), (0.0, False)])
def test_beam_search_matches_hf(name, length_penalty, early_stopping, hf_encdec_folder, tmp_path):
    model, ref = _eos_friendly(name, hf_encdec_folder, tmp_path)
    src, mask = _source(3)
    eos = ref.config.eos_token_id
    kwargs = dict(num_beams=4, max_new_tokens=9, length_penalty=length_penalty, early_stopping=early_stopping)
    with torch.no_grad():
        want = ref.generate(src, attention_mask=mask, do_sample=False, use_cache=False, **kwargs)
    got = model.generate(src, attention_mask=mask, **kwargs)
    assert _trim(got, eos) == _trim(want, eos)
    assert got.shape == want.shape


@pytest.mark.parametrize("name", ["t5", "marian"])
def test_beams_end_at_eos_and_differ_from_greedy(name, hf_encdec_folder, tmp_path):
    """The test models really exercise finished hypotheses and re-ranking: some outputs stop at EOS before
    the limit, lengths differ, and beam search finds something greedy does not."""
    model, _ = _eos_friendly(name, hf_encdec_folder, tmp_path)
    src, mask = _source(3)
    beams = model.generate(src, attention_mask=mask, num_beams=4, max_new_tokens=9)
    greedy = model.generate(src, attention_mask=mask, max_new_tokens=9)
    eos = model.config.eos_token_id
    rows = _trim(beams, eos)
    assert any(r[-1] == eos and len(r) < 10 for r in rows) and len({len(r) for r in rows}) > 1
    assert rows != _trim(greedy, eos)
