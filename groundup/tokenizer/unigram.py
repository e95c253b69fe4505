"""The unigram language model tokenizer (Kudo, 2018, arXiv:1804.10959; SentencePiece): every piece has a
log-probability, and a word is cut into the pieces whose scores sum highest (Viterbi over the lattice of
pieces that match at each position).

The search is the one sentencepiece and HF tokenizers run, so ties fall the same way: positions are
visited left to right, the pieces starting at a position are tried shortest first, and a later candidate
replaces the best path to its end only when its score is strictly higher. A character no piece covers
becomes the unknown piece with score ``min(score) - 10``; consecutive unknown characters fuse into one
unknown token. With ``byte_fallback`` an unknown token is spelt as its UTF-8 bytes (``<0xE2>`` ...) when
the vocabulary has them.
"""

from __future__ import annotations

from .bpe import byte_token

UNK_PENALTY = 10.0  # below the least likely piece: an unknown character is never preferred over a real one


class Unigram:
    """Pieces with scores (the ``model`` of a Tokenizer); ``encode_word`` runs the Viterbi search."""

    kind = "Unigram"

    def __init__(self, pieces: list[tuple[str, float]], *, unk_id: int | None = None,
                 byte_fallback: bool = False) -> None:
        if unk_id is not None and not 0 <= unk_id < len(pieces):
            raise ValueError(f"model.unk_id={unk_id} is outside the vocabulary of {len(pieces)} pieces")
        self.pieces = [(str(p), float(s)) for p, s in pieces]
        self.vocab = {p: i for i, (p, _) in enumerate(self.pieces)}  # a repeated piece: the last id, as tokenizers
        self.id_to_token = dict(enumerate(p for p, _ in self.pieces))
        scores = {p: self.pieces[i][1] for p, i in self.vocab.items()}
        self.unk_id, self.byte_fallback = unk_id, byte_fallback
        self.min_score = min((s for _, s in self.pieces), default=0.0)
        self.longest = max((len(p) for p, _ in self.pieces), default=1)
        # Every prefix of a piece -> the piece's score, or None for a prefix that is no piece itself: one lookup
        # per candidate, and the scan from a position stops at the first text that starts no piece, as a walk
        # down the trie of pieces would.
        self._lattice: dict[str, float | None] = {p[:k]: None for p, _ in self.pieces for k in range(1, len(p))}
        self._lattice.update(scores)
        unk_text = self.pieces[unk_id][0] if unk_id is not None else None
        self._unk_text = unk_text if unk_text is not None and self.vocab[unk_text] == unk_id else None
        self.merges: list = []
        self._bytes = [self.vocab.get(byte_token(b)) for b in range(256)] if byte_fallback else None

    def segment(self, word: str) -> list[tuple[str, bool]]:
        """The best segmentation of ``word``: (piece text, is unknown) from left to right."""
        n = len(word)
        if n == 0:
            return []
        lattice, unk_text, longest = self._lattice, self._unk_text, self.longest
        unk_score = self.min_score - UNK_PENALTY
        best = [0.0] * (n + 1)
        start_of: list[int | None] = [None] * (n + 1)
        unknown = [False] * (n + 1)
        for i in range(n):
            here, single = best[i], False
            for j in range(i + 1, (n if n < i + longest else i + longest) + 1):
                sub = word[i:j]
                score = lattice.get(sub, False)
                if score is False:  # no piece starts with this text
                    break
                if score is None:  # a prefix of pieces, not a piece
                    continue
                total = score + here
                if start_of[j] is None or total > best[j]:
                    best[j], start_of[j], unknown[j] = total, i, sub == unk_text
                if j == i + 1:
                    single = True
            if not single and (start_of[i + 1] is None or unk_score + here > best[i + 1]):
                best[i + 1], start_of[i + 1], unknown[i + 1] = unk_score + here, i, True
        out: list[tuple[str, bool]] = []
        end = n
        while end > 0:
            begin = start_of[end]
            if unknown[end] and out and out[-1][1]:  # fuse runs of unknown characters
                out[-1] = (word[begin:end] + out[-1][0], True)
            else:
                out.append((word[begin:end], unknown[end]))
            end = begin
        return out[::-1]

    def encode_word(self, word: str) -> tuple[int, ...]:
        """One pre-tokenized word -> its piece ids."""
        ids: list[int] = []
        for piece, _ in self.segment(word):
            tid = self.vocab.get(piece)
            if tid is not None:
                ids.append(tid)
                continue
            if self._bytes is not None:
                spelt = [self._bytes[b] for b in piece.encode("utf-8", "surrogatepass")]
                if all(t is not None for t in spelt):
                    ids.extend(spelt)
                    continue
            if self.unk_id is None:
                raise ValueError(f"{piece!r} has no piece and the model has no unk_id")
            ids.append(self.unk_id)
        return tuple(ids)

    def to_json(self) -> dict:
        return {"type": "Unigram", "unk_id": self.unk_id, "vocab": [[p, s] for p, s in self.pieces],
                "byte_fallback": self.byte_fallback}
