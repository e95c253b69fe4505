"""Audio in: Whisper's log-mel features (features.py) and WAV files (io.py). Only the standard library and torch:
no extra is needed."""

from .features import N_FRAMES, N_SAMPLES, SAMPLING_RATE, log_mel, mel_filters, pad_or_trim

__all__ = ["N_FRAMES", "N_SAMPLES", "SAMPLING_RATE", "log_mel", "mel_filters", "pad_or_trim"]
