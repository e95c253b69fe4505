"""Whisper against transformers, both ways: a tiny random WhisperForConditionalGeneration (every parameter
randomised) read by groundup and written back; encoder output and decoder logits within 1e-4 fp32."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from tests.conftest import randomize_

T = pytest.importorskip("transformers")
TOL = dict(atol=1e-4, rtol=1e-4)


def _whisper(n_mels: int = 80):
    return T.WhisperForConditionalGeneration(T.WhisperConfig(
        vocab_size=120, num_mel_bins=n_mels, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_source_positions=50,
        max_target_positions=40, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2))


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_matches_transformers_both_ways(tmp_path, n_mels):
    hf = randomize_(_whisper(n_mels)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = gu.from_pretrained(tmp_path / "hf")
    assert type(ours).__name__ == "Seq2Seq" and ours.config.n_mels == n_mels
    feats = torch.randn(2, n_mels, 100, generator=torch.Generator().manual_seed(0))
    dec = torch.tensor([[1, 5, 7, 9], [1, 8, 3, 2]])

    def compare(ref, model):
        with torch.no_grad():
            want = ref(input_features=feats, decoder_input_ids=dec)
            enc = ref.model.encoder(input_features=feats).last_hidden_state
            torch.testing.assert_close(model.encode(input_features=feats), enc, **TOL)
            torch.testing.assert_close(model(input_features=feats, decoder_input_ids=dec), want.logits, **TOL)

    compare(hf, ours)
    ours.save_pretrained(tmp_path / "gu")
    compare(T.WhisperForConditionalGeneration.from_pretrained(tmp_path / "gu").eval(), ours)


def test_features_of_the_wrong_shape_are_refused():
    model = gu.models.Seq2Seq(gu.Config(arch="seq2seq", vocab_size=50, d_model=16, n_layers=1, n_heads=2, n_mels=80,
                                        encoder_max_seq_len=10, max_seq_len=8, key_bias=False))
    with pytest.raises(ValueError, match=r"input_features must be log-mel \[batch, n_mels=80, frames\]"):
        model(input_features=torch.randn(1, 40, 20), decoder_input_ids=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="at most 20 frames"):
        model(input_features=torch.randn(1, 80, 30), decoder_input_ids=torch.tensor([[1]]))


@pytest.mark.parametrize("beams", [1, 4])
def test_generation_with_a_forced_prefix_and_suppressed_tokens_equals_transformers(tmp_path, beams):
    """Whisper's protocol: the decoder starts from <|startoftranscript|> <|lang|> <|task|> <|notimestamps|> (here
    ids 1, 100, 101, 102), some ids never appear and some not first; greedy and 4-beam search give transformers'
    tokens (its generic generate, with the same prefix and suppression processors)."""
    hf = randomize_(_whisper()).eval()
    hf.save_pretrained(tmp_path)
    ours = gu.from_pretrained(tmp_path)
    feats = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(4))
    prefix = torch.tensor([[1, 100, 101, 102]] * 2)
    # suppress what this random model prefers, so the processors decide the output
    free = ours.generate(input_features=feats, max_new_tokens=8, decoder_input_ids=prefix, eos_token_id=2)
    suppress = [*sorted(set(free[:, 4:].reshape(-1).tolist()) - {2})[:3], 9]
    first = ours.generate(input_features=feats, max_new_tokens=1, decoder_input_ids=prefix, eos_token_id=2,
                          suppress_tokens=suppress)
    begin = sorted(set(first[:, 4].tolist()) | {2})
    with torch.no_grad():
        want = T.GenerationMixin.generate(hf, input_features=feats, decoder_input_ids=prefix, max_new_tokens=8,
                                          num_beams=beams, do_sample=False, suppress_tokens=suppress,
                                          begin_suppress_tokens=begin, eos_token_id=2, pad_token_id=0)
    got = ours.generate(input_features=feats, max_new_tokens=8, num_beams=beams, decoder_input_ids=prefix,
                        suppress_tokens=suppress, begin_suppress_tokens=begin, eos_token_id=2, pad_token_id=0)
    assert got.tolist() == want.tolist()
    assert not set(got[:, 4:].reshape(-1).tolist()) & set(suppress) and not set(got[:, 4].tolist()) & set(begin)
    assert got[:, 4:].tolist() != free[:, 4:].tolist()  # the suppression changed what was generated


def test_presets_have_the_published_sizes(capsys):
    """Counted on the meta device; transformers' WhisperConfig of the same shapes gives the same totals."""
    from groundup.cli import main
    from groundup.models import meta_model

    sizes = {"whisper-tiny": 37_760_640, "whisper-base": 72_593_920, "whisper-small": 241_734_912,
             "whisper-medium": 763_857_920, "whisper-large-v3": 1_543_490_560}
    for name, n in sizes.items():
        assert meta_model(gu.Config.preset(name)).num_params() == n, name
    with torch.device("meta"):
        hf = T.WhisperForConditionalGeneration(T.WhisperConfig(d_model=384, encoder_layers=4, decoder_layers=4,
                                                               encoder_attention_heads=6, decoder_attention_heads=6,
                                                               encoder_ffn_dim=1536, decoder_ffn_dim=1536))
    assert hf.num_parameters() == sizes["whisper-tiny"]
    assert main(["calc", "whisper-tiny"]) == 0
    out = capsys.readouterr().out
    assert "3000 log-mel frames of 80 bins" in out and "1500 encoder positions" in out and "37,760,640" in out
