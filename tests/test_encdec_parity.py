"""Encoder (BERT) and encoder-decoder (T5, Marian) parity with transformers, in both directions."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, hf_encdec_configs, randomize_

import groundup as gu

TOL = 1e-4
KERNELS = ("eager", "sdpa", "flash")
BERTS = [n for n in hf_encdec_configs() if n.startswith("bert")]
SEQ2SEQ = [n for n in hf_encdec_configs() if not n.startswith("bert")]


def _batch(seed: int = 0, batch: int = 2, seq: int = 11) -> dict[str, torch.Tensor]:
    """Token ids, sentence A/B segments and a right-padded attention mask (row 0 loses 4 tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def _bert_outputs(model, ref, batch) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, groundup, transformers) pairs of every head the model has, real tokens only."""
    real = batch["attention_mask"].bool()
    out = ref(**batch)
    cfg = model.config
    if cfg.heads.mlm_head and cfg.heads.nsp_head:
        mlm, nsp = model.pretraining_logits(**batch)
        return [("mlm", mlm[real], out.prediction_logits[real]), ("nsp", nsp, out.seq_relationship_logits)]
    if cfg.heads.mlm_head:
        return [("mlm", model(**batch)[real], out.logits[real])]
    if cfg.heads.num_labels:
        return [("classifier", model.classify(**batch), out.logits)]
    return [("hidden", model.encode(**batch)[real], out.last_hidden_state[real]),
            ("pooled", model.pooled(**batch), out.pooler_output)]


@pytest.mark.parametrize("name", BERTS)
def test_bert_hf_to_groundup(name, hf_encdec_folder):
    path, ref = hf_encdec_folder(name)
    model = gu.from_pretrained(path)
    assert isinstance(model, gu.Encoder)
    batch = _batch()
    with torch.no_grad():
        for kernel in KERNELS:
            model.set_attn_kernel(kernel)
            for head, got, want in _bert_outputs(model, ref, batch):
                assert want.abs().max() > 0.3, f"{head}: outputs too small for the tolerance to mean anything"
                torch.testing.assert_close(got, want, atol=TOL, rtol=0, msg=f"{name} {head} {kernel}")


def _export(name: str, hf_encdec_folder, out) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random groundup model with the folder's config, saved to ``out`` and loaded back by transformers;
    also checks that groundup reloads the saved folder tensor for tensor."""
    import transformers as T

    path, ref = hf_encdec_folder(name)
    cfg = gu.from_pretrained(path).config
    model = randomize_(type(gu.from_pretrained(path))(cfg), seed=11).eval()
    model.save_pretrained(out)
    again = gu.from_pretrained(out)
    assert again.config.tie_embeddings == cfg.tie_embeddings
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    return model, getattr(T, type(ref).__name__).from_pretrained(out, attn_implementation="eager").eval()


@pytest.mark.parametrize("name", BERTS)
def test_bert_groundup_to_hf(name, hf_encdec_folder, tmp_path):
    model, back = _export(name, hf_encdec_folder, tmp_path / "out")
    with torch.no_grad():
        for head, got, want in _bert_outputs(model, back, _batch(seed=1)):
            torch.testing.assert_close(got, want, atol=TOL, rtol=0, msg=head)


def _s2s_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    b = _batch(seed)
    g = torch.Generator().manual_seed(seed + 100)
    dec = torch.randint(3, VOCAB, (2, 7), generator=g)
    dec[:, 0] = 0  # decoder start token
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "decoder_input_ids": dec}


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_hf_to_groundup(name, hf_encdec_folder):
    path, ref = hf_encdec_folder(name)
    model = gu.from_pretrained(path)
    assert isinstance(model, gu.Seq2Seq)
    batch = _s2s_batch()
    with torch.no_grad():
        want = ref(**batch).logits
        assert want.abs().max() > 0.3
        for kernel in KERNELS:
            model.set_attn_kernel(kernel)
            torch.testing.assert_close(model(**batch), want, atol=TOL, rtol=0, msg=f"{name} {kernel}")


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_groundup_to_hf(name, hf_encdec_folder, tmp_path):
    model, back = _export(name, hf_encdec_folder, tmp_path / "out")
    batch = _s2s_batch(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch), back(**batch).logits, atol=TOL, rtol=0)
