"""groundup.audio.log_mel against transformers' WhisperFeatureExtractor on generated signals (a chirp, silence,
white noise, a short tone burst): max difference of the log-mel values below 1e-4, 80 and 128 bins, batched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from groundup.audio import N_FRAMES, log_mel, mel_filters

T = pytest.importorskip("transformers")


def _signals() -> dict[str, np.ndarray]:
    sr = 16000
    t = np.arange(sr * 4) / sr
    g = np.random.default_rng(0)
    burst = np.zeros(sr * 2)
    burst[4000:8000] = 0.5 * np.sin(2 * math.pi * 440 * np.arange(4000) / sr)
    return {"chirp": 0.3 * np.sin(2 * math.pi * (100 + 900 * t) * t), "silence": np.zeros(sr * 3),
            "noise": 0.1 * g.standard_normal(sr * 5), "burst": burst, "long": 0.05 * g.standard_normal(sr * 31)}


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_transformers(n_mels):
    ref = T.WhisperFeatureExtractor(feature_size=n_mels)
    for name, x in _signals().items():
        want = ref(x.astype(np.float32), sampling_rate=16000, return_tensors="pt").input_features[0]
        got = log_mel(torch.tensor(x, dtype=torch.float32), n_mels=n_mels)
        assert got.shape == (n_mels, N_FRAMES)
        assert (got - want).abs().max() < 1e-4, name


def test_a_batch_is_each_example_alone():
    ref = T.WhisperFeatureExtractor()
    xs = [s.astype(np.float32) for s in _signals().values()]
    want = ref(xs, sampling_rate=16000, return_tensors="pt").input_features
    got = log_mel(xs)
    assert got.shape == (len(xs), 80, N_FRAMES)
    assert (got - want).abs().max() < 1e-4
    assert torch.equal(got[1], log_mel(xs[1]))


def test_the_filter_bank_is_transformers_slaney_bank():
    from transformers.audio_utils import mel_filter_bank

    want = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                           sampling_rate=16000, norm="slaney", mel_scale="slaney")
    torch.testing.assert_close(mel_filters(80).double(), torch.tensor(want), atol=1e-7, rtol=1e-6)


def test_bad_input_names_the_fix():
    with pytest.raises(ValueError, match="defined at 16000 Hz; resample first"):
        log_mel(torch.zeros(100), sampling_rate=44100)
    with pytest.raises(ValueError, match=r"waveform must be \[samples\]"):
        log_mel(torch.zeros(2, 3, 4))


def test_an_espeak_clip_equals_transformers_when_espeak_is_installed(tmp_path):
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): the generated signals above still run")
    from groundup.audio import load_audio

    subprocess.run(["espeak-ng", "-w", str(tmp_path / "s.wav"), "turn the red light on"], check=True)
    x = load_audio(tmp_path / "s.wav")  # espeak writes 22,050 Hz: resampled to 16 kHz
    want = T.WhisperFeatureExtractor()(x.numpy(), sampling_rate=16000, return_tensors="pt").input_features[0]
    assert (log_mel(x) - want).abs().max() < 1e-4
