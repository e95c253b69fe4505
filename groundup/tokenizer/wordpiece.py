"""WordPiece (Schuster & Nakajima, 2012; Wu et al., 2016, as BERT uses it): each word is split greedily,
longest vocabulary match first, from the left; pieces after the first carry the continuation prefix
(``##``). A word with a part that matches nothing, or longer than ``max_input_chars_per_word`` characters,
becomes the unknown token whole. This is the rule HF tokenizers applies, so both give the same ids.
"""

from __future__ import annotations


class WordPiece:
    """A WordPiece vocabulary and its per-word encoder (the ``model`` of a Tokenizer)."""

    kind = "WordPiece"

    def __init__(self, vocab: dict[str, int], *, unk_token: str = "[UNK]", continuing_subword_prefix: str = "##",
                 max_input_chars_per_word: int = 100) -> None:
        if unk_token not in vocab:
            raise ValueError(f"model.unk_token {unk_token!r} is not in the vocabulary")
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.unk_token, self.prefix, self.max_chars = unk_token, continuing_subword_prefix, max_input_chars_per_word
        self.unk_id = self.vocab[unk_token]
        self.merges: list = []  # no merges: WordPiece matches whole vocabulary entries
        self._longest = max((len(t) for t in self.vocab), default=1)  # no match can be longer than this

    def encode_word(self, word: str) -> tuple[int, ...]:
        """One pre-tokenized word -> its piece ids."""
        if len(word) > self.max_chars:
            return (self.unk_id,)
        vocab, ids, start, n = self.vocab, [], 0, len(word)
        while start < n:
            end = min(n, start + self._longest)  # shorter than the longest entry: skips hopeless lookups
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                tid = vocab.get(piece)
                if tid is not None:
                    ids.append(tid)
                    break
                end -= 1
            else:
                return (self.unk_id,)
            start = end
        return tuple(ids)

    def to_json(self) -> dict:
        return {"type": "WordPiece", "unk_token": self.unk_token, "continuing_subword_prefix": self.prefix,
                "max_input_chars_per_word": self.max_chars,
                "vocab": dict(sorted(self.vocab.items(), key=lambda kv: kv[1]))}


class WordLevel:
    """A word -> id table: each pre-tokenized word is one token, or the unknown token (tokenizers'
    WordLevel, common in small test and toy tokenizers)."""

    kind = "WordLevel"

    def __init__(self, vocab: dict[str, int], *, unk_token: str | None = None) -> None:
        if unk_token is not None and unk_token not in vocab:
            raise ValueError(f"model.unk_token {unk_token!r} is not in the vocabulary")
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.unk_token, self.merges = unk_token, []

    def encode_word(self, word: str) -> tuple[int, ...]:
        tid = self.vocab.get(word)
        if tid is not None:
            return (tid,)
        if self.unk_token is None:
            raise ValueError(f"{word!r} is not in the vocabulary and the model has no unk_token")
        return (self.vocab[self.unk_token],)

    def to_json(self) -> dict:
        return {"type": "WordLevel", "unk_token": self.unk_token,
                "vocab": dict(sorted(self.vocab.items(), key=lambda kv: kv[1]))}
