"""Audio in: Whisper's log-mel features (features.py) and WAV files (io.py). Only the standard library and torch:
no extra is needed."""

from .features import HOP, N_FRAMES, N_SAMPLES, SAMPLING_RATE, log_mel, mel_filters, pad_or_trim
from .io import AudioError, load_audio, resample, save_wav

__all__ = ["HOP", "N_FRAMES", "N_SAMPLES", "SAMPLING_RATE", "AudioError", "load_audio", "log_mel", "mel_filters",
           "pad_or_trim", "resample", "save_wav"]
