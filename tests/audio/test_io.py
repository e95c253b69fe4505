"""WAV files in: PCM widths, channels, resampling checked against scipy's polyphase filter and a pure tone, and
the errors for a non-audio file, a truncated WAV, an empty file and a rate that cannot be resampled."""

from __future__ import annotations

import math
import wave

import numpy as np
import pytest
import torch

from groundup.audio import AudioError, load_audio, resample, save_wav


def _write(path, samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> None:
    scale = 2 ** (8 * width - 1) - 1
    ints = np.round(np.clip(samples, -1, 1) * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(raw)


def test_a_tone_survives_resampling_from_44100():
    sr, f0 = 44100, 440.0
    x = torch.sin(2 * math.pi * f0 * torch.arange(sr) / sr)
    y = resample(x, sr, 16000)
    assert y.shape == (16000,)
    want = torch.sin(2 * math.pi * f0 * torch.arange(16000) / 16000)
    assert (y[200:-200] - want[200:-200]).abs().max() < 2e-3  # the edges see the zero padding


def test_resampling_agrees_with_scipy_polyphase():
    signal = pytest.importorskip("scipy.signal")
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(8000, generator=g, dtype=torch.float64).numpy()
    for orig, new in ((8000, 16000), (22050, 16000), (48000, 16000)):
        # content up to half the lower Nyquist: where both filters pass it untouched
        x = torch.from_numpy(signal.lfilter(*signal.butter(8, 0.5 * min(orig, new) / orig), noise))
        ours = resample(x, orig, new).numpy()
        theirs = signal.resample_poly(x.numpy(), new // math.gcd(orig, new), orig // math.gcd(orig, new))
        n = min(len(ours), len(theirs))
        mid = slice(100, n - 100)
        assert np.abs(ours[mid] - theirs[mid]).max() < 2e-2 * np.abs(theirs).max(), (orig, new)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_and_stereo_read_back(tmp_path, width):
    t = np.arange(1600) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.25 * np.sin(2 * np.pi * 500 * t)
    _write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, width=width, channels=2)
    got = load_audio(tmp_path / "s.wav")
    tol = 2.0 / 2 ** (8 * width - 1) + 1e-6
    assert got.shape == (1600,) and np.abs(got.numpy() - (left + right) / 2).max() < tol


def test_bad_files_are_named(tmp_path):
    (tmp_path / "notes.wav").write_text("hello, not audio")
    with pytest.raises(AudioError, match="notes.wav is not a PCM WAV file"):
        load_audio(tmp_path / "notes.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: the file is empty"):
        load_audio(tmp_path / "empty.wav")
    save_wav(tmp_path / "ok.wav", torch.zeros(16000))
    data = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="cut.wav: the WAV header promises 16000 frames"):
        load_audio(tmp_path / "cut.wav")
    _write(tmp_path / "slow.wav", np.zeros(100), 1000)
    with pytest.raises(AudioError, match="slow.wav: sample rate 1000 Hz cannot be resampled"):
        load_audio(tmp_path / "slow.wav")
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")


def test_wer_equals_jiwer():
    jiwer = pytest.importorskip("jiwer")
    from groundup.audio.wer import wer

    refs = ["turn the red light on", "three hundred and forty two", "seven one two", "open the door"]
    hyps = ["turn the red light off", "three hundred forty two", "seven one one two", ""]
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert wer(refs, refs) == 0.0
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])
