"""Corpora and reference tokenizers built offline with HF `tokenizers` for the parity tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from groundup.data import python_stdlib

# Words from many scripts, with combining marks, emoji (and ZWJ sequences), digits and odd whitespace.
WORDS = ("the quick brown fox jumps over lazy dogs Grüße naïve café Zürich ñandú façade coöperate "
         "東京 は 晴れ です 日本語 中文 汉字 한국어 문장 русский язык Ελληνικά עברית العربية हिन्दी ไทย "
         "e\u0301 a\u0308 o\u0303 🙂 🎉 👩‍💻 🇩🇪 ❤️ 3.14159 2026 1,000,000 0x1F $100 50% "
         "don't it's we're I've you'll he'd can't O'Neil").split()
SEPARATORS = [" ", " ", " ", "  ", ", ", ". ", "\n", "\n\n", "\t", " - ", "\u00a0", "\u3000", "!", "? ", "\r\n"]


def unicode_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(n_words):
        w = rng.choice(WORDS)
        if rng.random() < 0.1:
            w = w.upper() if rng.random() < 0.5 else w.capitalize()
        out.append(w)
        out.append(rng.choice(SEPARATORS))
    return "".join(out)


def chunks(text: str, size: int = 1 << 16) -> list[str]:
    """Pieces of ~size characters cut at line ends (so both libraries see the same units)."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        out.append(text[start:end])
        start = end
    return out


@pytest.fixture(scope="session")
def corpus() -> str:
    """~2 MB: 1.6 MB of stdlib source and ~0.4 MB of multilingual text."""
    return python_stdlib(1_600_000, include_tests=False) + unicode_text(60_000)


@pytest.fixture(scope="session")
def hf_bytelevel(tmp_path_factory, corpus) -> Path:
    """A GPT-2 style byte-level BPE (2k vocab) trained by `tokenizers` on a slice of the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(chunks(corpus[::7] + unicode_text(5000, seed=1), 4096), trainer)
    path = tmp_path_factory.mktemp("hf_bytelevel") / "tokenizer.json"
    tok.save(str(path))
    return path


def sentencepiece_style(folder: Path, corpus: str, variant: str, vocab_size: int = 1500) -> Path:
    """A Llama-2 style tokenizer.json: <unk> <s> </s>, 256 <0x..> byte tokens, then merges learned by
    `tokenizers` on metaspace words; byte fallback for everything else. variant 'legacy' writes the
    metaspace with normalizers (Llama-2's original file), 'metaspace' with the Metaspace pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  limit_alphabet=120)
    learner.train_from_iterator(chunks(corpus[::5], 4096), trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in learned["merges"]], unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    if variant == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    path = folder / f"sp_{variant}.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session", params=["legacy", "metaspace"])
def hf_sentencepiece(request, tmp_path_factory, corpus) -> Path:
    return sentencepiece_style(tmp_path_factory.mktemp("sp"), corpus, request.param)


def _train_text(corpus: str) -> list[str]:
    return chunks(corpus[::6] + unicode_text(8000, seed=3), 4096)


def bert_style(folder: Path, corpus: str, variant: str) -> Path:
    """A BERT tokenizer.json: BertNormalizer, BertPreTokenizer, WordPiece, [CLS] A [SEP] (B [SEP]), the
    WordPiece decoder. 'uncased' lowercases and strips accents, 'cased' neither (BertProcessing then)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = HFTokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=24))
    tok.normalizer = normalizers.BertNormalizer(lowercase=variant == "uncased")
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_train_text(corpus), trainers.WordPieceTrainer(vocab_size=1500, special_tokens=specials,
                                                                           show_progress=False, limit_alphabet=300))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if variant == "uncased":
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                           special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    else:
        tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    path = folder / f"bert_{variant}.json"
    tok.save(str(path))
    return path


def t5_style(folder: Path, corpus: str, variant: str) -> Path:
    """A T5-style tokenizer.json: NFKC ('precompiled': sentencepiece's nmt_nfkc charsmap, as real T5 files),
    Metaspace, Unigram, `$A </s>`. 'bytes' adds the
    256 <0x..> pieces and byte fallback (as ALBERT-like files spell unknown characters)."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    if variant == "precompiled":  # what transformers writes for T5: sentencepiece's rules, spaces collapsed
        tok.normalizer = normalizers.Sequence([normalizers.Precompiled(nmt_nfkc_charsmap()),
                                               normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=1200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False, max_piece_length=12)
    tok.train_from_iterator(_train_text(corpus), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    obj = json.loads(tok.to_str())
    if variant == "bytes":
        low = min(s for _, s in obj["model"]["vocab"]) - 5.0
        obj["model"]["vocab"] += [[f"<0x{b:02X}>", low] for b in range(256)]
        obj["model"]["byte_fallback"] = True
        obj["decoder"] = {"type": "Sequence", "decoders": [obj["decoder"], {"type": "ByteFallback"}]}
    path = folder / f"t5_{variant}.json"
    path.write_text(json.dumps(obj, ensure_ascii=False))
    return path


def _proto_fields(b: bytes):
    """(field number, bytes or None) of a serialized protobuf message: enough to read a sentencepiece model
    without the protobuf package."""
    def varint(i: int) -> tuple[int, int]:
        n = shift = 0
        while True:
            x = b[i]
            i += 1
            n |= (x & 0x7F) << shift
            shift += 7
            if x < 0x80:
                return n, i

    i = 0
    while i < len(b):
        key, i = varint(i)
        kind = key & 7
        if kind == 0:
            _, i = varint(i)
            yield key >> 3, None
        elif kind == 2:
            n, i = varint(i)
            yield key >> 3, b[i:i + n]
            i += n
        else:
            i += 4 if kind == 5 else 8
            yield key >> 3, None


def nmt_nfkc_charsmap() -> bytes:
    """sentencepiece's compiled nmt_nfkc rules (what T5/ALBERT files carry as precompiled_charsmap), taken
    from a tiny model trained here: ModelProto.normalizer_spec (3) . precompiled_charsmap (2)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    text = [f"line {i} of a small text" for i in range(300)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=40,
                                   normalization_rule_name="nmt_nfkc", minloglevel=2)
    spec = next(v for f, v in _proto_fields(buf.getvalue()) if f == 3)
    return next(v for f, v in _proto_fields(spec) if f == 2)
