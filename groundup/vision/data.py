"""Image-text pairs for training: captioned image folders (JSONL or CSV) and the batches the training loop draws.

A captions file lists one image per record, its path relative to the file: JSONL lines {"image": "a.png",
"caption": "..."} ("text" is read too), or a CSV with columns image,caption. Errors name the file and line.
``ImageTextData`` holds processed pairs in memory and serves them as the one training loop's data source
(``next_batch``, fixed ``val_batches``, an exact-resume ``state_dict``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .image import ImageError


@dataclass
class Captioned:
    image: Path
    caption: str


def read_captions(path: str | Path) -> list[Captioned]:
    """The (image, caption) records of a JSONL or CSV captions file; every image must exist."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such captions file (JSONL lines {{\"image\": ..., \"caption\": ...}} or a CSV "
                         "with columns image,caption)")
    rows: list[tuple[int, dict]] = []
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ImageError(f"{path}: the CSV header must name the columns image and caption, got "
                                 f"{reader.fieldnames}")
            rows = [(i + 2, r) for i, r in enumerate(reader)]
    else:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ImageError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ImageError(f"{path}:{n}: each line must be a JSON object with image and caption")
            rows.append((n, record))
    out = []
    for n, r in rows:
        image, caption = r.get("image"), r.get("caption", r.get("text"))
        if not isinstance(image, str) or not isinstance(caption, str) or not caption.strip():
            raise ImageError(f"{path}:{n}: needs an image path and a non-empty caption (text)")
        file = (path.parent / image).resolve()
        if not file.is_file():
            raise ImageError(f"{path}:{n}: image {image} not found (paths are relative to {path.parent})")
        out.append(Captioned(file, caption))
    if not out:
        raise ImageError(f"{path}: no records")
    return out


@dataclass
class ImageTextBatch:
    """pixel_values [B, 3, H, W], input_ids and attention_mask [B, L]: text i describes image i."""

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> ImageTextBatch:
        return ImageTextBatch(self.pixel_values.to(device), self.input_ids.to(device), self.attention_mask.to(device))

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()


def pad_ids(rows: Sequence[Sequence[int]], pad: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L] and their mask."""
    L = length or max(map(len, rows))
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r[:L], dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


class InMemoryData:
    """What the in-memory data sources of the loop share: every training row once per epoch in a seeded shuffled
    order, read ``n`` at a time (a new epoch when fewer than ``n`` are left, so no row is twice in a batch; each
    process takes its share of a global batch), fixed consecutive validation batches, and the position in a
    checkpoint for an exact resume. A subclass gives ``_batch(rows, val)`` and sets ``block_size``."""

    block_size: int

    def __init__(self, n_rows: int, n_val: int, seed: int) -> None:
        self.n_rows, self.n_val, self.seed, self.epoch, self.pos = n_rows, n_val, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        return torch.randperm(self.n_rows, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def _batch(self, rows: list[int], val: bool):
        raise NotImplementedError

    def next_batch(self, n: int, rank: int = 0, world: int = 1):
        if self.pos + n > self.n_rows:
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._shuffle()
        rows = self._order[self.pos:self.pos + n][rank::world]
        self.pos += n
        return self._batch(rows, False)

    def val_batches(self, micro: int, max_batches: int) -> Iterator:
        for b in range(min(max_batches, self.n_val // micro)):
            yield self._batch(list(range(b * micro, (b + 1) * micro)), True)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


class ImageTextData(InMemoryData):
    """Processed pairs in memory: shuffled epochs for training, the held-out pairs in fixed validation batches."""

    def __init__(self, pixels: torch.Tensor, ids: Sequence[Sequence[int]], val_pixels: torch.Tensor,
                 val_ids: Sequence[Sequence[int]], *, pad_id: int, seed: int = 0) -> None:
        if len(pixels) != len(ids) or len(val_pixels) != len(val_ids):
            raise ValueError("every image needs its caption: the counts differ")
        self.block_size = max(max(map(len, ids)), max(map(len, val_ids)))
        self.pixels, self.val_pixels = pixels, val_pixels
        self.ids, self.mask = pad_ids(ids, pad_id, self.block_size)
        self.val_ids, self.val_mask = pad_ids(val_ids, pad_id, self.block_size)
        super().__init__(len(pixels), len(val_pixels), seed * 1000)

    def _batch(self, rows: list[int], val: bool) -> ImageTextBatch:
        if val:
            return ImageTextBatch(self.val_pixels[rows], self.val_ids[rows], self.val_mask[rows])
        return ImageTextBatch(self.pixels[rows], self.ids[rows], self.mask[rows])

    def next_batch(self, n: int, rank: int = 0, world: int = 1) -> ImageTextBatch:
        if world != 1:
            raise ValueError("contrastive training compares every pair of a batch: run it on one process")
        if n > self.n_rows:
            raise ValueError(f"batch of {n} pairs from a set of {self.n_rows}: lower the batch size")
        return super().next_batch(n)


def encode_texts(tokenizer, texts: Sequence[str], bos: int | None, eos: int, limit: int) -> list[list[int]]:
    """[bos] + ids + [eos], cut to ``limit`` keeping the end-of-text token (the text tower pools there). A tokenizer
    whose post-processor adds them itself (CLIP's tokenizer.json) is taken as it is."""
    out = []
    for t in texts:
        ids = tokenizer.encode(t)
        if ids and ids[-1] == eos:
            ids = ids[:-1]
        elif bos is not None:
            ids = [bos, *ids]
        out.append([*ids[:limit - 1], eos])
    return out


def process_all(images: Sequence, processor: Callable, batch: int = 256) -> torch.Tensor:
    """pixel_values of many images, processed in chunks."""
    return torch.cat([processor(list(images[i:i + batch])) for i in range(0, len(images), batch)])


@dataclass
class VisionTextBatch:
    """pixel_values [N, 3, H, W] (None: text only), input_ids / targets / attention_mask [B, T]; targets are -100
    except on answer tokens."""

    pixel_values: torch.Tensor | None
    input_ids: torch.Tensor
    targets: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> VisionTextBatch:
        px = self.pixel_values.to(device) if self.pixel_values is not None else None
        return VisionTextBatch(px, self.input_ids.to(device), self.targets.to(device), self.attention_mask.to(device))

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()


class VisionTextData(InMemoryData):
    """(image, prompt ids, answer mask) examples, one image each (or none), as the loop's data source."""

    def __init__(self, pixels: torch.Tensor | None, examples: Sequence[tuple[list[int], list[int]]],
                 val_pixels: torch.Tensor | None, val_examples: Sequence[tuple[list[int], list[int]]], *,
                 pad_id: int, seed: int = 0) -> None:
        self.pixels, self.val_pixels, self.pad_id = pixels, val_pixels, pad_id
        self.examples, self.val_examples = list(examples), list(val_examples)
        self.block_size = max(len(ids) for ids, _ in self.examples + self.val_examples)
        super().__init__(len(self.examples), len(self.val_examples), seed * 1000)

    def _batch(self, rows: list[int], val: bool) -> VisionTextBatch:
        examples, pixels = (self.val_examples, self.val_pixels) if val else (self.examples, self.pixels)
        ids = [examples[r][0] for r in rows]
        tokens, mask = pad_ids(ids, self.pad_id)
        answer, _ = pad_ids([examples[r][1] for r in rows], 0, tokens.shape[1])
        # position t predicts token t + 1 where that token is an answer token
        targets = torch.full_like(tokens, -100)
        targets[:, :-1] = torch.where(answer[:, 1:].bool(), tokens[:, 1:], -100)
        px = pixels[rows] if pixels is not None else None
        return VisionTextBatch(px, tokens, targets, mask)
