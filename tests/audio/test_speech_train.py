"""The speech pipeline at toy size: audio-text JSONL -> features -> a Whisper-style model on the one loop -> WER on
the held-out file, and a folder transformers' WhisperForConditionalGeneration reads with the same logits."""

from __future__ import annotations

import json
import math

import pytest
import torch

import groundup as gu
from groundup.audio import save_wav

T = pytest.importorskip("transformers")


def _corpus(root, n: int, split: str) -> None:
    (root / split).mkdir(parents=True)
    words = ["one", "two", "three"]
    rows = []
    for i in range(n):
        k = i % 3
        t = torch.arange(8000) / 16000
        save_wav(root / split / f"{i}.wav", 0.3 * torch.sin(2 * math.pi * (300 + 200 * k) * t))
        rows.append({"audio": f"{split}/{i}.wav", "text": words[k]})
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_speech_training_writes_a_whisper_folder(tmp_path):
    from groundup.train.speech import SpeechSettings, run

    _corpus(tmp_path / "data", 12, "train")
    _corpus(tmp_path / "data", 6, "test")
    r = run(SpeechSettings(data=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), seconds=1.0, d_model=32,
                           n_layers=1, n_heads=2, d_ff=64, vocab_size=280, steps=3, batch_size=4, progress=False),
            log=lambda *_: None)
    assert 0.0 <= r["wer"] and len(r["examples"]) == 6
    ours = gu.from_pretrained(tmp_path / "out" / "model")
    hf = T.WhisperForConditionalGeneration.from_pretrained(tmp_path / "out" / "model").eval()
    feats = torch.randn(1, 80, 100)
    dec = torch.tensor([[ours.config.decoder_start_token_id, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_features=feats, decoder_input_ids=dec),
                                   hf(input_features=feats, decoder_input_ids=dec).logits, atol=1e-4, rtol=1e-4)


def test_bad_records_name_the_line(tmp_path):
    from groundup.train.speech import read_pairs

    (tmp_path / "x.jsonl").write_text('{"audio": "a.wav", "text": "hi"}\n{"audio": "b.wav"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: needs an audio path and a non-empty text"):
        read_pairs(tmp_path / "x.jsonl")
