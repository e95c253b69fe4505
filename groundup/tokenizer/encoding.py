"""What an encode returns beside the ids, and the truncation and padding settings of a tokenizer.json,
applied the way tokenizers applies them: truncate the sequence(s) to ``max_length`` less the special
tokens the post-processor will add, post-process, then pad (to a fixed length, or to the longest of a
batch, rounded up to ``pad_to_multiple_of``) with the attention mask marking the real tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .components import UnsupportedTokenizer


@dataclass
class Encoding:
    """ids, segment (token type) ids, and attention mask (1 = token, 0 = padding), all the same length."""

    ids: list[int]
    type_ids: list[int] = field(default_factory=list)
    attention_mask: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Truncation:
    max_length: int
    strategy: str = "LongestFirst"  # LongestFirst | OnlyFirst | OnlySecond
    direction: str = "Right"  # Right keeps the start, Left keeps the end

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Truncation | None:
        if obj is None:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("max_length"), int) or obj["max_length"] < 0:
            raise UnsupportedTokenizer(f"{where}: truncation needs an integer max_length >= 0, got {obj!r}")
        t = cls(obj["max_length"], obj.get("strategy", "LongestFirst"), obj.get("direction", "Right"))
        if t.strategy not in ("LongestFirst", "OnlyFirst", "OnlySecond") or t.direction not in ("Left", "Right"):
            raise UnsupportedTokenizer(f"{where}: truncation strategy {t.strategy!r} / direction {t.direction!r} "
                                       "is not LongestFirst/OnlyFirst/OnlySecond, Left/Right")
        return t

    def _cut(self, ids: list[int], n: int) -> list[int]:
        if n >= len(ids):
            return ids
        return ids[:n] if self.direction == "Right" else ids[len(ids) - n:]

    def apply(self, a: list[int], b: list[int] | None, added: int) -> tuple[list[int], list[int] | None]:
        """Cut a (and b) so that, with ``added`` special tokens, at most max_length remain."""
        limit = max(self.max_length - added, 0)
        total = len(a) + (len(b) if b is not None else 0)
        if total <= limit:
            return a, b
        if b is None:
            if self.strategy == "OnlySecond":
                raise ValueError("truncation strategy OnlySecond needs a second sequence")
            return self._cut(a, limit), None
        if self.strategy == "LongestFirst":
            n1, n2 = sorted((len(a), len(b)))
            n2 = n1 if n1 > limit else max(n1, limit - n1)
            if n1 + n2 > limit:
                n1, n2 = limit // 2, limit // 2 + limit % 2
            if len(a) > len(b):
                n1, n2 = n2, n1
            return self._cut(a, n1), self._cut(b, n2)
        target = a if self.strategy == "OnlyFirst" else b
        remove = total - limit
        if len(target) <= remove:
            raise ValueError(f"truncation {self.strategy}: the sequence ({len(target)} tokens) is too short to remove "
                             f"{remove}")
        cut = self._cut(target, len(target) - remove)
        return (cut, b) if self.strategy == "OnlyFirst" else (a, cut)


@dataclass(frozen=True)
class Padding:
    fixed: int | None = None  # None: pad to the longest of the batch
    direction: str = "Right"
    pad_id: int = 0
    pad_type_id: int = 0
    multiple_of: int | None = None

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Padding | None:
        if obj is None:
            return None
        strategy = obj.get("strategy", "BatchLongest") if isinstance(obj, dict) else None
        fixed = strategy.get("Fixed") if isinstance(strategy, dict) else None
        if strategy != "BatchLongest" and not isinstance(fixed, int):
            raise UnsupportedTokenizer(f"{where}: padding strategy {strategy!r} is not BatchLongest or {{'Fixed': N}}")
        p = cls(fixed, obj.get("direction", "Right"), int(obj.get("pad_id", 0)), int(obj.get("pad_type_id", 0)),
                obj.get("pad_to_multiple_of"))
        if p.direction not in ("Left", "Right"):
            raise UnsupportedTokenizer(f"{where}: padding direction {p.direction!r} is not Left or Right")
        return p

    def apply(self, batch: list[Encoding]) -> list[Encoding]:
        """Pad every encoding shorter than the target (in place) and return the batch."""
        target = self.fixed if self.fixed is not None else max((len(e) for e in batch), default=0)
        if self.multiple_of and target % self.multiple_of:
            target += self.multiple_of - target % self.multiple_of
        for e in batch:
            n = target - len(e)
            if n <= 0:
                continue
            if self.direction == "Right":
                e.ids += [self.pad_id] * n
                e.type_ids += [self.pad_type_id] * n
                e.attention_mask += [0] * n
            else:
                e.ids[:0], e.type_ids[:0], e.attention_mask[:0] = [self.pad_id] * n, [self.pad_type_id] * n, [0] * n
        return batch


@dataclass
class AddedToken:
    """A token matched in raw text before BPE (tokenizers' AddedToken)."""

    id: int
    content: str
    special: bool = True
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = False

    def to_json(self) -> dict:
        return {"id": self.id, "content": self.content, "single_word": self.single_word, "lstrip": self.lstrip,
                "rstrip": self.rstrip, "normalized": self.normalized, "special": self.special}
