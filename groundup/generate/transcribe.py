"""Speech to text with a Whisper model: the special-token protocol, 30-second windows, decoding.

Whisper's decoder starts from a forced prefix (Radford et al., 2022, 2.3): <|startoftranscript|>, the language
(<|en|>, <|de|> ...), the task (<|transcribe|> or <|translate|> into English) and <|notimestamps|> unless
timestamps are wanted. The generation config of a checkpoint lists ids never to generate (``suppress_tokens``)
and ids not to start with (``begin_suppress_tokens``: the blank and the end of text). Audio longer than 30 s is
cut into consecutive 30 s windows, each transcribed on its own, the texts joined (the simple long-form scheme;
OpenAI's sequential decoding that seeks by timestamps is not this).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..audio import HOP, N_SAMPLES, load_audio, log_mel, pad_or_trim
from .entry import generate

TASKS = ("transcribe", "translate")


def _token(tokenizer: Any, name: str, what: str) -> int:
    i = tokenizer.token_to_id(name)
    if i is None:
        raise ValueError(f"the tokenizer has no {name} token ({what}); is this a Whisper tokenizer.json?")
    return i


def whisper_prompt(tokenizer: Any, *, language: str | None = "en", task: str = "transcribe",
                   timestamps: bool = False) -> list[int]:
    """The forced decoder prefix: <|startoftranscript|> [<|lang|>] <|task|> [<|notimestamps|>]. ``language`` is a
    code the tokenizer has a token for ("en", "de", ...); None leaves it to the model (an English-only
    checkpoint has none)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} must be one of {', '.join(TASKS)}")
    ids = [_token(tokenizer, "<|startoftranscript|>", "the start of a transcript")]
    if language is not None:
        ids.append(_token(tokenizer, f"<|{language.lower()}|>", f"language {language!r}: give a code such as en, de"))
    ids.append(_token(tokenizer, f"<|{task}|>", "the task"))
    if not timestamps:
        ids.append(_token(tokenizer, "<|notimestamps|>", "transcripts without timestamps"))
    return ids


def generation_config(folder: str | Path) -> dict[str, Any]:
    """A folder's generation_config.json (empty when there is none)."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def windows(waveform: torch.Tensor, length: int = N_SAMPLES) -> list[torch.Tensor]:
    """Consecutive windows of ``length`` samples (the last one shorter; it is padded before the features)."""
    if waveform.dim() != 1 or waveform.numel() == 0:
        raise ValueError(f"the waveform must be one non-empty channel [samples], got {tuple(waveform.shape)}")
    return [waveform[i:i + length] for i in range(0, waveform.numel(), length)]


@torch.no_grad()
def transcribe(model: torch.nn.Module, tokenizer: Any, audio: str | Path | torch.Tensor, *, language: str | None = "en",
               task: str = "transcribe", timestamps: bool = False, num_beams: int = 1,
               suppress_tokens: Sequence[int] = (), begin_suppress_tokens: Sequence[int] = (),
               batch: int = 8) -> list[str]:
    """The text of each 30 s window of ``audio`` (a WAV path or 16 kHz samples), greedy or with beams."""
    if getattr(model, "audio_stem", None) is None:
        raise ValueError("transcribe needs a Whisper-style model (a Seq2Seq with an audio encoder, n_mels > 0)")
    waveform = load_audio(audio) if isinstance(audio, str | Path) else torch.as_tensor(audio, dtype=torch.float32)
    prefix = whisper_prompt(tokenizer, language=language, task=task, timestamps=timestamps)
    eos = model.config.eos_ids or [_token(tokenizer, "<|endoftext|>", "the end of text")]
    room = model.config.max_seq_len - len(prefix)
    # a window is what the encoder's positions cover: 30 s for Whisper (1500 x 2 frames x 10 ms), less for one
    # trained here on short clips
    span = (model.config.encoder_positions or model.config.max_seq_len) * 2 * HOP
    texts: list[str] = []
    chunks = [pad_or_trim(c, span) for c in windows(waveform, span)]
    for b in range(0, len(chunks), batch):
        feats = log_mel(chunks[b:b + batch], n_mels=model.config.n_mels, pad=False)  # [n, n_mels, span / 160]
        out = generate(model, input_features=feats, max_new_tokens=room, num_beams=num_beams,
                       decoder_input_ids=torch.tensor([prefix] * feats.shape[0]), suppress_tokens=suppress_tokens,
                       begin_suppress_tokens=begin_suppress_tokens, eos_token_id=eos)
        texts += [tokenizer.decode(row[len(prefix):].tolist(), skip_special_tokens=True).strip() for row in out]
    return texts
