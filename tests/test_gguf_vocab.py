"""A SentencePiece ("llama") vocabulary inside a GGUF file: a model trained by the sentencepiece library,
written into GGUF metadata as llama.cpp's converter does (pieces, scores, token types), reads back as a
Tokenizer whose ids equal sentencepiece's own and transformers' GGUF tokenizer's, and whose merges equal
the ones transformers derives from the scores."""

from __future__ import annotations

from pathlib import Path

import pytest

import groundup as gu
from groundup.tokenizer.gguf_vocab import spm_merges

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")

CORPUS = ("The quick brown fox jumps over the lazy dog. Naïve café owners serve crème brûlée, 3.14 and 42! "
          "def tokenize(text):\n    return [t for t in text.split()]\n") * 40
TEXTS = ["The quick brown fox", "  leading spaces and\ttabs\nnew lines", "crème brûlée at the café",
         "unseen 字符 and emoji 🦊 fall back to bytes", "42 + 3.14 = 45.14", ""]


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory) -> tuple[Path, object]:
    """(a GGUF file holding the vocabulary, the sentencepiece processor it came from)."""
    folder = tmp_path_factory.mktemp("spm")
    (folder / "corpus.txt").write_text(CORPUS)
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "m"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,  # Llama's
                                   user_defined_symbols=["<tool>"], minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "m.model"))
    n = sp.get_piece_size()

    def kind(i: int) -> int:  # llama.cpp's token types
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_byte(i):
            return 6
        return 4 if sp.id_to_piece(i) == "<tool>" else 1

    writer = gguf.GGUFWriter(str(folder / "m.gguf"), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types([kind(i) for i in range(n)])
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return folder / "m.gguf", sp


def test_ids_equal_sentencepiece_and_transformers(spm_gguf):
    import transformers as T

    path, sp = spm_gguf
    ours = gu.Tokenizer.from_file(path)
    theirs = T.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == [sp.bos_id(), *sp.encode(text)], text
        if not text.startswith(" "):  # transformers' Metaspace gives "  x" one "▁" less than sentencepiece
            assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=True) == sp.decode(sp.encode(text)), text
    for text in ("a <tool> b", "<tool>x"):  # a user-defined piece stays whole, found as sentencepiece finds it
        assert ours.encode(text) == [sp.bos_id(), *sp.encode(text)], text


def test_merges_from_scores_equal_transformers(spm_gguf):
    from transformers.tokenization_utils_base import generate_merges

    path, _ = spm_gguf
    fields = {name: f.contents() for name, f in gguf.GGUFReader(str(path)).fields.items()}
    tokens, scores = list(fields["tokenizer.ggml.tokens"]), [float(x) for x in fields["tokenizer.ggml.scores"]]
    want = generate_merges({t: i for i, t in enumerate(tokens)}, dict(zip(tokens, scores, strict=True)))
    assert spm_merges(tokens, scores) == want
