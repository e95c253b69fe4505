"""Whisper feature extraction and transcription of 30 s: groundup vs transformers, same weights, one process.

    python bench/audio.py [--repeats 5] [--out docs/audio_bench.md]

Features: 30 s of noise through transformers' WhisperFeatureExtractor and groundup.audio.log_mel. Transcription:
a whisper-tiny-shaped model (random init, 37.8M parameters) saved by transformers and loaded by groundup, the
encoder over one 30 s window and 64 greedy tokens from the 4-token prefix (min_new_tokens = max_new_tokens, so
both generate the same count), against transformers' generate with the same prefix. Calls alternate; medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch
from report import alternate, command, emit

import groundup as gu
from groundup.audio import log_mel


def features(repeats: int) -> list[str]:
    import transformers as T

    x = (0.1 * np.random.default_rng(0).standard_normal(16000 * 30)).astype(np.float32)
    ref = T.WhisperFeatureExtractor()
    ref(x, sampling_rate=16000, return_tensors="pt")
    log_mel(torch.from_numpy(x))
    t_hf, t_gu = alternate(lambda: ref(x, sampling_rate=16000, return_tensors="pt"),
                           lambda: log_mel(torch.from_numpy(x)), repeats)
    return ["| 30 s of audio | transformers ms | groundup ms | speed-up |", "|---|---:|---:|---:|",
            f"| log-mel features (80 bins) | {t_hf * 1e3:.1f} | {t_gu * 1e3:.1f} | {t_hf / t_gu:.2f}x |"]


def transcription(tmp: Path, repeats: int, new: int = 64) -> list[str]:
    import transformers as T

    torch.manual_seed(0)
    hf = T.WhisperForConditionalGeneration(T.WhisperConfig(
        d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6, decoder_attention_heads=6,
        encoder_ffn_dim=1536, decoder_ffn_dim=1536)).eval()
    hf.save_pretrained(tmp / "whisper")
    ours = gu.from_pretrained(tmp / "whisper")
    feats = log_mel(0.1 * torch.randn(16000 * 30, generator=torch.Generator().manual_seed(1)))[None]
    prefix = torch.tensor([[50258, 50259, 50360, 50364]])

    def run_hf():
        return T.GenerationMixin.generate(hf, input_features=feats, decoder_input_ids=prefix, max_new_tokens=new,
                                          min_new_tokens=new, do_sample=False)

    def run_gu():
        return ours.generate(input_features=feats, decoder_input_ids=prefix, max_new_tokens=new, min_new_tokens=new)

    with torch.inference_mode():
        a, b = run_hf(), run_gu()
        same = a.tolist() == b.tolist()
        t_hf, t_gu = alternate(run_hf, run_gu, repeats)
    head = f"| whisper-tiny shapes, 30 s, {new} greedy tokens | transformers s | groundup s | speed-up | same tokens |"
    row = f"| encoder + decoding | {t_hf:.3f} | {t_gu:.3f} | {t_hf / t_gu:.2f}x | {same} |"
    return [head, "|---|---:|---:|---:|---|", row]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = [f"`{command()}`", "", *features(args.repeats), "", *transcription(Path(tmp), args.repeats)]
    emit("Audio: Whisper features and transcription vs transformers", lines, args.out)


if __name__ == "__main__":
    main()
