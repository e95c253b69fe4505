"""Whisper's input: 16 kHz mono audio -> an 80 (or 128) x 3000 log-mel spectrogram (Radford et al., 2022, 2.2).

    pad or trim to 30 s (480,000 samples) -> STFT (n_fft 400 = 25 ms, hop 160 = 10 ms, periodic Hann window,
    centred with reflection) -> power |X|^2, the last frame dropped -> Slaney mel filter bank over 0-8000 Hz,
    Slaney-normalised -> log10 with a floor of 1e-10 -> clamp to (max - 8) -> (x + 4) / 4

so values fall roughly in [-1, 1]. The arithmetic is transformers' WhisperFeatureExtractor's (fp32 STFT, the
filter bank built from the same formulas), so the features agree with it to float rounding.
"""

from __future__ import annotations

import functools
import math

import torch

SAMPLING_RATE = 16000
N_FFT = 400
HOP = 160
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLING_RATE * CHUNK_SECONDS  # 480,000
N_FRAMES = N_SAMPLES // HOP  # 3000


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (Auditory Toolbox): linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    mel = f / f_sp
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep, mel)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sampling_rate: int = SAMPLING_RATE,
                f_min: float = 0.0, f_max: float = 8000.0) -> torch.Tensor:
    """Triangular filters [n_fft // 2 + 1, n_mels] centred on n_mels points evenly spaced in mels between f_min
    and f_max, each scaled by 2 / (its width in Hz) (Slaney's equal-area normalisation)."""
    bins = torch.linspace(0, sampling_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # FFT bin frequencies
    mels = torch.linspace(float(hz_to_mel(torch.tensor(f_min, dtype=torch.float64))),
                          float(hz_to_mel(torch.tensor(f_max, dtype=torch.float64))), n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)  # [n_mels + 2] in Hz
    width = edges[1:] - edges[:-1]  # [n_mels + 1]
    slopes = edges[None, :] - bins[:, None]  # [bins, n_mels + 2]
    down = -slopes[:, :-2] / width[:-1]  # rising edge, [bins, n_mels]
    up = slopes[:, 2:] / width[1:]  # falling edge
    filters = torch.clamp(torch.minimum(down, up), min=0.0)
    return (filters * (2.0 / (edges[2:] - edges[:-2]))[None]).float()  # [bins, n_mels]


def pad_or_trim(waveform: torch.Tensor, length: int = N_SAMPLES) -> torch.Tensor:
    """[..., T] -> [..., length]: zeros appended, or the end cut."""
    if waveform.shape[-1] >= length:
        return waveform[..., :length]
    return torch.nn.functional.pad(waveform, (0, length - waveform.shape[-1]))


def log_mel(waveform, sampling_rate: int = SAMPLING_RATE, n_mels: int = 80, *, pad: bool = True) -> torch.Tensor:
    """Log-mel features [n_mels, 3000] of a 16 kHz mono waveform (a tensor, array or list of samples in [-1, 1]);
    a batch [B, T] (or a list of waveforms) gives [B, n_mels, 3000], each clamped to its own maximum.
    ``pad=False`` keeps the waveform's own length (frames = samples // 160)."""
    if sampling_rate != SAMPLING_RATE:
        raise ValueError(f"sampling_rate={sampling_rate}: Whisper's features are defined at 16000 Hz; resample first "
                         "(groundup.audio.load_audio does)")
    if isinstance(waveform, list | tuple) and waveform and not isinstance(waveform[0], int | float):
        return torch.stack([log_mel(w, sampling_rate, n_mels, pad=pad) for w in waveform])
    x = torch.as_tensor(waveform, dtype=torch.float32)
    if x.dim() not in (1, 2) or x.shape[-1] == 0:
        raise ValueError(f"waveform must be [samples] or [batch, samples] with samples > 0, got {tuple(x.shape)}")
    if pad:
        x = pad_or_trim(x)
    stft = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)  # [(B,) bins, frames]
    # |X|^2 as re^2 + im^2 (no square root to square again); the filters on every frame, then the last one dropped
    # (3000 frames for 30 s): one contiguous product instead of a strided one
    power = stft.real.square() + stft.imag.square()  # [(B,) bins, frames + 1]
    mel = (mel_filters(n_mels).T @ power)[..., :-1]  # [(B,) n_mels, frames]
    logs = torch.clamp(mel, min=1e-10).log10()
    top = logs.amax(dim=(-2, -1), keepdim=True)  # each example's own maximum
    return (torch.maximum(logs, top - 8.0) + 4.0) / 4.0
