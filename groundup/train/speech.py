"""A small Whisper-style recogniser trained from scratch on the one loop, on audio-text JSONL
({"audio": "x.wav", "text": "..."}, paths relative to the file), then held-out word error rate.

Clips are padded or cut to ``seconds`` (not Whisper's 30 s: short utterances on 2 cores), so the encoder has
100 x seconds / 2 positions; the decoder learns the transcript after Whisper's forced prefix
<|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>, with no loss on the prefix. The result is a
transformers Whisper folder (WhisperForConditionalGeneration reads it) with its tokenizer.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..audio import load_audio, log_mel, pad_or_trim
from ..audio.wer import wer
from ..config import Config
from ..generate.transcribe import whisper_prompt
from ..models.seq2seq import Seq2Seq
from ..nn.cross_entropy import cross_entropy
from ..tokenizer import Tokenizer
from ..utils.files import atomic_write_text
from ..vision.data import InMemoryData
from .loop import TrainArgs, train
from .objective import TrainObjective

SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|notimestamps|>")


@dataclass
class SpeechSettings:
    data: str = "data/speech"  # a folder with train.jsonl and test.jsonl (bench/audio_data.py writes one)
    out_dir: str = "out/speech"
    seconds: float = 4.0
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512
    vocab_size: int = 320
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    progress: bool = True


def read_pairs(path: Path) -> list[tuple[Path, str]]:
    """(audio path, text) records of an audio-text JSONL file; errors name the line."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file (JSONL lines {{\"audio\": \"x.wav\", \"text\": \"...\"}})")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        audio, text = (rec.get("audio"), rec.get("text")) if isinstance(rec, dict) else (None, None)
        if not isinstance(audio, str) or not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{n}: needs an audio path and a non-empty text")
        out.append((path.parent / audio, text.strip()))
    return out


@dataclass
class SpeechBatch:
    features: torch.Tensor  # [B, n_mels, frames]
    decoder_input_ids: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L], -100 on the prefix and padding
    mask: torch.Tensor  # [B, L]

    def to(self, device) -> SpeechBatch:
        return SpeechBatch(*(t.to(device) for t in (self.features, self.decoder_input_ids, self.targets, self.mask)))

    @property
    def tokens(self) -> int:
        return self.decoder_input_ids.numel()


class SpeechData(InMemoryData):
    """Features and token rows in memory; shuffled epochs, fixed validation batches."""

    def __init__(self, feats, rows, val_feats, val_rows, prefix_len: int, pad: int, seed: int = 0) -> None:
        self.feats, self.rows, self.val_feats, self.val_rows = feats, rows, val_feats, val_rows
        self.prefix_len, self.pad = prefix_len, pad
        self.block_size = max(map(len, rows + val_rows))
        super().__init__(len(rows), len(val_rows), seed)

    def _batch(self, idx: list[int], val: bool) -> SpeechBatch:
        feats, rows = (self.val_feats, self.val_rows) if val else (self.feats, self.rows)
        L = max(len(rows[i]) for i in idx) - 1
        dec = torch.full((len(idx), L), self.pad, dtype=torch.long)
        tgt = torch.full((len(idx), L), -100, dtype=torch.long)
        mask = torch.zeros(len(idx), L, dtype=torch.long)
        for b, i in enumerate(idx):
            r = torch.tensor(rows[i])
            dec[b, :len(r) - 1], mask[b, :len(r) - 1] = r[:-1], 1
            tgt[b, self.prefix_len - 1:len(r) - 1] = r[self.prefix_len:]  # the transcript and its end only
        return SpeechBatch(feats[idx], dec, tgt, mask)


class TranscriptObjective(TrainObjective):
    """Cross-entropy of the transcript tokens given the audio."""

    def loss(self, model, batch: SpeechBatch, index: int, reduction: str = "mean", rows=None):
        logits = model(input_features=batch.features, decoder_input_ids=batch.decoder_input_ids,
                       decoder_attention_mask=batch.mask)
        return cross_entropy(logits, batch.targets, reduction), int((batch.targets != -100).sum())


def _features(paths: list[Path], samples: int) -> torch.Tensor:
    return torch.stack([log_mel(pad_or_trim(load_audio(p), samples), pad=False) for p in paths])  # [N, 80, F]


@torch.no_grad()
def transcribe_all(model: Seq2Seq, tok, feats: torch.Tensor, prefix: list[int], eos: int, batch: int = 64) -> list[str]:
    out = []
    for b in range(0, len(feats), batch):
        chunk = feats[b:b + batch]
        ids = model.generate(input_features=chunk, decoder_input_ids=torch.tensor([prefix] * len(chunk)),
                             max_new_tokens=model.config.max_seq_len - len(prefix), eos_token_id=eos)
        out += [tok.decode(r[len(prefix):].tolist(), skip_special_tokens=True).strip() for r in ids]
    return out


def run(settings: SpeechSettings, log=print) -> dict[str, Any]:
    s = settings
    torch.manual_seed(s.seed)
    root = Path(s.data)
    train_pairs, test_pairs = read_pairs(root / "train.jsonl"), read_pairs(root / "test.jsonl")
    samples = int(s.seconds * 16000)
    feats, test_feats = _features([p for p, _ in train_pairs], samples), _features([p for p, _ in test_pairs], samples)
    tok = Tokenizer.train([t for _, t in train_pairs], s.vocab_size, special_tokens=SPECIALS, eos_token=SPECIALS[0])
    prefix = whisper_prompt(tok)
    eos = tok.token_to_id("<|endoftext|>")

    def rows(pairs):
        return [prefix + tok.encode(" " + t) + [eos] for _, t in pairs]

    train_rows, test_rows = rows(train_pairs), rows(test_pairs)
    longest = max(map(len, train_rows + test_rows))
    cfg = Config(arch="seq2seq", family="whisper", vocab_size=tok.vocab_size, d_model=s.d_model, n_layers=s.n_layers,
                 n_heads=s.n_heads, d_ff=s.d_ff, n_mels=80, encoder_max_seq_len=feats.shape[-1] // 2,
                 max_seq_len=max(longest + 8, 32), pos="learned", ffn="gelu", norm="layernorm", norm_eps=1e-5,
                 key_bias=False, lm_head_bias=False, tie_embeddings=True, decoder_start_token_id=prefix[0],
                 eos_token_id=eos, pad_token_id=eos, bos_token_id=eos)
    model = Seq2Seq(cfg)
    data = SpeechData(feats, train_rows, test_feats, test_rows, len(prefix), eos, s.seed)
    args = TrainArgs(out_dir=s.out_dir, steps=s.steps, batch_size=s.batch_size, lr=s.lr, min_lr=s.lr / 10,
                     warmup=min(100, s.steps // 10), eval_every=max(1, s.steps // 5), eval_batches=4,
                     save_every=s.steps, seed=s.seed, progress=s.progress, name="speech")
    summary = train(model, data, args, objective=TranscriptObjective(), log=log)
    model.eval()
    hyps = transcribe_all(model, tok, test_feats, prefix, eos)
    refs = [t for _, t in test_pairs]
    results = {"settings": asdict(s), "parameters": model.num_params(), "train_seconds": round(summary["seconds"], 1),
               "val_loss": summary["val_loss"], "wer": wer(refs, hyps),
               "exact": sum(r == h for r, h in zip(refs, hyps, strict=True)) / len(refs),
               "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[:8]]}
    out = Path(s.out_dir) / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write_text(Path(s.out_dir) / "results.json", json.dumps(results, indent=2) + "\n")
    return {**results, "folder": str(out)}
