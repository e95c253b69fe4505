"""The tokenizer inside a GGUF file (tokenizer.ggml.*) <-> groundup.Tokenizer, through a tokenizer.json.

llama.cpp's "gpt2" tokenizer model is byte-level BPE: tokens in the byte-to-unicode alphabet, merges as
"a b" strings, token types (1 normal, 3 control, 4 user-defined, 6 byte) and a pre-tokenizer *name*
(tokenizer.ggml.pre) standing for the split regex of the original tokenizer.json. Reading builds that
tokenizer.json and hands it to tokenizer/hf_format.py; writing does the reverse for a groundup BPE
tokenizer, naming its pre-tokenizer when it is one of the known ones. SentencePiece vocabularies ("llama"
model: pieces with scores, no merges, byte fallback) are read as BPE whose merges the scores imply; only
byte-level BPE is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.gguf_read import open_gguf
from .components import UnsupportedTokenizer
from .hf_format import from_json, to_json

if TYPE_CHECKING:  # the class is built from these parts in tokenizer.py, which imports this module
    from .tokenizer import Tokenizer

_LETTERS = r"[^\r\n\p{L}\p{N}]?\p{L}+"
_TAIL = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
GPT2_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
BARE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def _split(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}, BARE_LEVEL]}


# tokenizer.ggml.pre -> the pre_tokenizer of the tokenizer.json it stands for
PRE_TOKENIZERS: dict[str, dict] = {
    "gpt-2": GPT2_LEVEL,
    "default": GPT2_LEVEL,
    "llama-bpe": _split(rf"{_CONTRACTIONS}|{_LETTERS}|\p{{N}}{{1,3}}|{_TAIL}"),  # Llama 3
    "qwen2": _split(rf"{_CONTRACTIONS}|{_LETTERS}|\p{{N}}|{_TAIL}"),
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, GPT2_LEVEL]},
}
_CONTROL, _USER = 3, 4


def read(path: str | Path) -> dict[str, Any]:
    """The parts of the Tokenizer stored in a GGUF file's tokenizer.ggml.* metadata (the file is memory-mapped;
    the tensors are not read)."""
    meta, _ = open_gguf(path, strings=True)
    fields = {name: value for name, value in meta.items() if name.startswith("tokenizer.")}
    return tokenizer_from_gguf(fields, str(path))


def tokenizer_from_gguf(fields: dict[str, Any], source: str) -> dict[str, Any]:
    """The parts of a Tokenizer from a GGUF file's tokenizer.ggml.* fields (and tokenizer.chat_template): byte-level BPE
    ("gpt2") or SentencePiece-style BPE ("llama": pieces with scores, byte fallback)."""
    kind = fields.get("tokenizer.ggml.model")
    if kind == "llama":
        return _sentencepiece(fields, source)
    if kind != "gpt2":
        raise UnsupportedTokenizer(f"{source}: tokenizer.ggml.model={kind!r} is not supported (supported: 'gpt2', "
                                   "byte-level BPE; 'llama', SentencePiece BPE); use the model's HF folder for its "
                                   "tokenizer.json")
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedTokenizer(f"{source}: tokenizer.ggml.pre={pre!r} is not a known pre-tokenizer (known: "
                              f"{', '.join(PRE_TOKENIZERS)})")
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [m.split(" ", 1) for m in fields.get("tokenizer.ggml.merges", [])]
    return _build(fields, tokens, types, source, kept=(_CONTROL, _USER), normalizer=None,
                  pre_tokenizer=PRE_TOKENIZERS[pre], merges=merges,
                  decoder={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True})


def _build(fields: dict[str, Any], tokens: list[str], types: list[int], source: str, *, kept: tuple[int, ...],
           normalizer: dict | None, pre_tokenizer: dict | None, decoder: dict, merges: list,
           unk: str | None = None, byte_fallback: bool = False) -> dict[str, Any]:
    """The Tokenizer parts of the tokenizer.json both vocabularies become: BPE over the file's tokens, the tokens of
    types ``kept`` as added tokens (user-defined ones matched in the normalized text, as sentencepiece and
    llama.cpp match them; the others special), BOS added when the file asks, special tokens named from
    the file's ids."""
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": ty == _USER, "special": ty != _USER}
             for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty in kept]
    obj = {"version": "1.0", "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
           "post_processor": _bos_template(fields, tokens), "decoder": decoder,
           "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": byte_fallback, "byte_fallback": byte_fallback,
                     "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges}}
    names = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id",
             "unk_token": "unknown_token_id"}
    config = {k: tokens[int(fields[f"tokenizer.ggml.{v}"])] for k, v in names.items()
              if f"tokenizer.ggml.{v}" in fields}
    try:
        return from_json(obj, f"{source} (tokenizer.ggml.*)", config=config,
                         chat_template=fields.get("tokenizer.chat_template"))
    except ValueError as err:
        raise UnsupportedTokenizer(f"{source}: {err}") from None


_UNKNOWN = 2


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies: every split of a piece into two pieces of the
    vocabulary is a merge, ranked by the merged piece's score, best first (SentencePiece's BPE merges the
    best-scoring pair first; Kudo & Richardson, 2018). Ties go to the longer left part, then the longer
    right part, then vocabulary order (the order transformers' converter produces)."""
    ids = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, score in zip(tokens, scores, strict=True):
        pairs = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
        pairs.sort(key=lambda lr: (ids[lr[0]], ids[lr[1]]))
        found.extend((left, right, score) for left, right in pairs)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)  # stable: ties keep the order above
    return [(left, right) for left, right, _ in found]


def _sentencepiece(fields: dict[str, Any], source: str) -> dict[str, Any]:
    """llama.cpp's "llama" vocabulary as a tokenizer.json: a "▁" before the text and for every space, BPE
    over the pieces with merges from their scores, unknown characters as <0xXX> byte pieces."""
    tokens = list(fields["tokenizer.ggml.tokens"])
    scores = [float(x) for x in fields.get("tokenizer.ggml.scores", [0.0] * len(tokens))]
    types = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    if not len(tokens) == len(scores) == len(types):
        raise UnsupportedTokenizer(f"{source}: tokenizer.ggml.tokens, scores and token_type differ in length "
                                   f"({len(tokens)}, {len(scores)}, {len(types)})")
    unk_id = fields.get("tokenizer.ggml.unknown_token_id",
                        next((i for i, t in enumerate(types) if t == _UNKNOWN), None))
    # The space before the text and every space become "▁" as normalization (Llama-2's own tokenizer.json):
    # "  hi" -> "▁▁▁hi", as sentencepiece and llama.cpp have it. A Metaspace pre-tokenizer (what
    # transformers builds from a GGUF) adds no "▁" before text that starts with a space: "▁▁hi".
    spaces = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    if fields.get("tokenizer.ggml.add_space_prefix", True):
        spaces.insert(0, {"type": "Prepend", "prepend": "\u2581"})
    fields = {"tokenizer.ggml.add_bos_token": True, **fields}  # llama.cpp's default for this vocabulary
    decoder = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return _build(fields, tokens, types, source, kept=(_CONTROL, _USER, _UNKNOWN),
                  normalizer={"type": "Sequence", "normalizers": spaces}, pre_tokenizer=None, decoder=decoder,
                  merges=[list(m) for m in spm_merges(tokens, scores)],
                  unk=None if unk_id is None else tokens[int(unk_id)], byte_fallback=True)


def _bos_template(fields: dict[str, Any], tokens: list[str]) -> dict | None:
    if not fields.get("tokenizer.ggml.add_bos_token") or "tokenizer.ggml.bos_token_id" not in fields:
        return None
    bos_id = int(fields["tokenizer.ggml.bos_token_id"])
    bos = tokens[bos_id]
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def write_tokenizer(writer, tok: Tokenizer, vocab_size: int) -> None:
    """Put a byte-level BPE Tokenizer into a GGUFWriter as llama.cpp's "gpt2" tokenizer."""
    obj = to_json(tok)
    model = obj["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedTokenizer("save_gguf writes byte-level BPE tokenizers only (llama.cpp's 'gpt2' model)")
    pre = next((name for name, p in PRE_TOKENIZERS.items() if p == obj["pre_tokenizer"]), None)
    if pre is None:
        raise UnsupportedTokenizer("save_gguf: the tokenizer's pre_tokenizer is none that llama.cpp names "
                              f"({', '.join(PRE_TOKENIZERS)})")
    tokens = [""] * vocab_size
    for t, i in model["vocab"].items():
        tokens[i] = t
    types = [1] * vocab_size
    for a in obj["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = _CONTROL if a.get("special") else _USER
    for i, t in enumerate(tokens):
        if not t:
            tokens[i], types[i] = f"[PAD{i}]", _USER  # rows of the embedding with no token (padded vocabularies)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) for m in model["merges"]])
    if tok.chat_template and isinstance(tok.chat_template, str):
        writer.add_chat_template(tok.chat_template)
