"""`groundup transcribe` end to end on a tiny random Whisper with a Whisper-style tokenizer (byte-level BPE and
Whisper's special tokens, built with HF tokenizers): 40 s of audio is two 30 s windows, each decoded from the
<|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|> prefix with the folder's suppressed ids; the text
equals transformers' generate + tokenizers' decode on the same windows."""

from __future__ import annotations

import json

import pytest
import torch

from groundup.audio import log_mel, save_wav
from groundup.cli import main
from groundup.generate.transcribe import whisper_prompt, windows
from groundup.tokenizer import Tokenizer
from tests.conftest import randomize_

T = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


def _tokenizer(path):
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat", "hello world, speech to text"] * 20, trainer)
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path / "tokenizer.json"))
    return tok


def test_transcribe_equals_transformers_window_by_window(tmp_path, capsys):
    tok = _tokenizer(tmp_path)
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    hf = T.WhisperForConditionalGeneration(T.WhisperConfig(
        vocab_size=tok.get_vocab_size(), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
        max_source_positions=1500, max_target_positions=24, decoder_start_token_id=ids["<|startoftranscript|>"],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"]))
    randomize_(hf).eval()
    hf.save_pretrained(tmp_path)
    suppress, begin = [ids["<|nospeech|>"], ids["<|startoflm|>"]], [ids["<|endoftext|>"], 220 % tok.get_vocab_size()]
    (tmp_path / "generation_config.json").write_text(json.dumps({"suppress_tokens": suppress,
                                                                 "begin_suppress_tokens": begin}))
    wave = 0.1 * torch.randn(16000 * 40, generator=torch.Generator().manual_seed(0))
    save_wav(tmp_path / "speech.wav", wave)
    ours_tok = Tokenizer.from_pretrained(tmp_path)
    prefix = whisper_prompt(ours_tok)
    assert prefix == [ids[s] for s in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")]

    from groundup.audio import load_audio

    chunks = windows(load_audio(tmp_path / "speech.wav"))
    assert [len(c) for c in chunks] == [480000, 160000]
    texts = []
    with torch.no_grad():
        for c in chunks:
            out = T.GenerationMixin.generate(hf, input_features=log_mel(c)[None], max_new_tokens=24 - len(prefix),
                                             decoder_input_ids=torch.tensor([prefix]), do_sample=False,
                                             suppress_tokens=suppress, begin_suppress_tokens=begin,
                                             eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"])
            texts.append(tok.decode(out[0, len(prefix):].tolist(), skip_special_tokens=True).strip())
    assert all(texts)  # the suppression of the end of text at the start leaves every window some text
    assert main(["transcribe", str(tmp_path / "speech.wav"), str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == " ".join(t for t in texts if t)


def test_transcribe_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "notes.wav").write_text("not audio")
    assert main(["transcribe", str(tmp_path / "notes.wav"), str(tmp_path)]) == 2
    assert "needs config.json and tokenizer.json" in capsys.readouterr().err
    tok = _tokenizer(tmp_path)
    assert tok.token_to_id("<|fr|>") is None
    with pytest.raises(ValueError, match=r"no <\|fr\|> token \(language 'fr'"):
        whisper_prompt(Tokenizer.from_pretrained(tmp_path), language="fr")
