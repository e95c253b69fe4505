"""WAV files in: the standard library's ``wave`` reads PCM (8, 16, 24 or 32 bit, any channels), channels are
averaged to mono and the rate is converted to 16 kHz with a windowed-sinc resampler. Every failure names the
file: not a WAV file, a truncated one, an empty one, a rate that cannot be resampled."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import torch

from ..utils.files import FileError
from .features import SAMPLING_RATE

MIN_RATE, MAX_RATE = 4000, 384000  # below 4 kHz speech has lost its content; above, no audio device records


class AudioError(FileError):
    """An input that is not usable audio, named with what would fix it."""


def resample(x: torch.Tensor, orig: int, new: int, *, zeros: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling of [..., T] from ``orig`` Hz to ``new`` Hz (Smith's windowed-sinc interpolation):
    each output sample is a sinc of cutoff rolloff x min(orig, new) / 2, Hann-windowed over ``zeros`` zero
    crossings, applied as one strided convolution with one kernel per output phase (gcd reduced)."""
    if orig == new:
        return x
    g = math.gcd(orig, new)
    up, down = new // g, orig // g  # per `down` input samples, `up` outputs
    cutoff = min(up, down) * rolloff
    width = math.ceil(zeros * down / cutoff)
    taps = torch.arange(-width, width + down, dtype=torch.float64) / down  # [K] input offsets, in input periods
    phases = -torch.arange(up, dtype=torch.float64)[:, None] / up  # [up, 1] where each output falls
    t = ((taps[None] + phases) * cutoff).clamp(-zeros, zeros)  # [up, K] in units of the cutoff period
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t.where(t != 0, torch.ones_like(t)))
    kernels = (sinc * window * cutoff / down).to(x.dtype)  # [up, K]
    lead, n = x.shape[:-1], x.shape[-1]
    flat = torch.nn.functional.pad(x.reshape(-1, 1, n), (width, width + down))  # [N, 1, T + pad]
    y = torch.nn.functional.conv1d(flat, kernels[:, None], stride=down)  # [N, up, frames]
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)  # the phases interleaved: [N, frames * up]
    return y[:, : math.ceil(up * n / down)].reshape(*lead, -1)


def load_audio(path: str | Path, sampling_rate: int = SAMPLING_RATE) -> torch.Tensor:
    """A WAV file as float32 mono samples in [-1, 1] at ``sampling_rate`` (resampled when the file's differs)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty")
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate, frames = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            data = f.readframes(frames)
    except (wave.Error, EOFError) as err:
        raise AudioError(f"{path} is not a PCM WAV file ({err}); convert it, e.g. sox in.mp3 -r 16000 -c 1 out.wav"
                         ) from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{path}: sample rate {rate} Hz cannot be resampled to {sampling_rate} Hz (accepted: "
                         f"{MIN_RATE}-{MAX_RATE} Hz)")
    if width not in (1, 2, 3, 4):
        raise AudioError(f"{path}: {8 * width}-bit samples are not PCM 8/16/24/32-bit")
    if frames == 0 or len(data) < frames * channels * width:
        raise AudioError(f"{path}: the WAV header promises {frames} frames but the data holds "
                         f"{len(data) // max(1, channels * width)}: the file is truncated or has no audio")
    x = _pcm(data, width).view(frames, channels).mean(dim=1)  # [T]: channels averaged
    return resample(x, rate, sampling_rate)


def _pcm(data: bytes, width: int) -> torch.Tensor:
    """Little-endian PCM bytes -> float32 in [-1, 1] (8-bit WAV is unsigned, the rest signed)."""
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if width == 1:
        return (raw.float() - 128.0) / 128.0
    if width == 3:  # 24-bit: sign-extend three bytes into an int32
        b = raw.view(-1, 3).int()
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return torch.where(v >= 1 << 23, v - (1 << 24), v).float() / float(1 << 23)
    dtype = torch.int16 if width == 2 else torch.int32
    return raw.view(dtype).float() / float(2 ** (8 * width - 1))


def save_wav(path: str | Path, samples: torch.Tensor, sampling_rate: int = SAMPLING_RATE) -> Path:
    """16-bit mono PCM (samples clipped to [-1, 1]); for tests and the synthetic speech set."""
    pcm = (samples.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sampling_rate)
        f.writeframes(pcm)
    return Path(path)
