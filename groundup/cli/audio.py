"""`groundup transcribe FILE.wav FOLDER`: speech to text with a Whisper folder (its tokenizer.json and
generation_config.json), in 30 s windows; `groundup speech train`: a small recogniser trained here."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint.hf import from_pretrained
from ..generate.transcribe import generation_config, transcribe
from ..tokenizer import Tokenizer
from ..train.speech import SpeechSettings, run


def cmd_transcribe(args: argparse.Namespace) -> int:
    folder = Path(args.model)
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        raise ValueError(f"{folder}: a Whisper folder needs config.json and tokenizer.json")
    model = from_pretrained(folder)
    gen = generation_config(folder)
    texts = transcribe(model, Tokenizer.from_pretrained(folder), args.audio, language=args.language or None,
                       task=args.task, timestamps=args.timestamps, num_beams=args.num_beams,
                       suppress_tokens=gen.get("suppress_tokens") or (),
                       begin_suppress_tokens=gen.get("begin_suppress_tokens") or ())
    print(" ".join(t for t in texts if t))
    return 0


def cmd_speech_train(args: argparse.Namespace) -> int:
    r = run(SpeechSettings(data=args.data, out_dir=args.out, steps=args.steps, seconds=args.seconds, seed=args.seed))
    print(f"trained {r['parameters']:,} parameters in {r['train_seconds']}s -> {r['folder']}")
    print(f"held-out word error rate {r['wer']:.3f}, exact transcripts {r['exact']:.3f}")
    return 0


def add_audio_parser(sub) -> None:
    t = sub.add_parser("transcribe", help="speech to text with a Whisper folder (30 s windows)")
    t.add_argument("audio", help="a WAV file (any rate: resampled to 16 kHz; channels averaged)")
    t.add_argument("model", help="a Whisper model folder (config.json, safetensors, tokenizer.json)")
    t.add_argument("--language", default="en", help="a language code with a token in the tokenizer; '' to omit")
    t.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    t.add_argument("--timestamps", action="store_true", help="let the model emit timestamp tokens")
    t.add_argument("--num-beams", type=int, default=1)
    t.set_defaults(func=cmd_transcribe)
    sp = sub.add_parser("speech", help="train a small Whisper-style recogniser on audio-text JSONL")
    st = sp.add_subparsers(dest="speech_command", required=True).add_parser(
        "train", help="train.jsonl / test.jsonl of {audio, text} (bench/audio_data.py makes synthetic ones)")
    st.add_argument("--data", default="data/speech")
    st.add_argument("--out", default="out/speech")
    st.add_argument("--steps", type=int, default=1000)
    st.add_argument("--seconds", type=float, default=4.0, help="clips padded or cut to this length")
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=cmd_speech_train)
