"""Reading and writing HF tokenizer folders: tokenizer.json, tokenizer_config.json, chat_template.jinja.

Only local files are read. Every problem is reported with the file and the field (and the line for JSON
syntax errors) before any work is done, and files are written atomically so a failed save never leaves
half a tokenizer behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.files import atomic_write_text
from .bpe import BPE
from .components import Decoder, Normalizer, PostProcessor, PreTokenizer, UnsupportedTokenizer
from .encoding import AddedToken
from .unigram import Unigram
from .wordpiece import WordLevel, WordPiece

if TYPE_CHECKING:  # the class is built from these parts in tokenizer.py, which imports this module
    from .tokenizer import Tokenizer

_KEPT = ("truncation", "padding")  # tokenizer.json fields carried through a load/save unchanged


_U64 = 2**64 - 1
_POW10 = [float(f"1e{k}") for k in range(309)]


def rust_float(text: str) -> float:
    """A JSON number parsed the way HF tokenizers parses it (serde_json without its float_roundtrip
    feature): the digits as a u64 (digits past 19 or so dropped), converted to f64, then multiplied or
    divided by one power of ten. That is not always the nearest double: a Unigram score can differ from
    Python's correctly rounded value in the last bit, and ties between segmentations then fall differently.
    Reading scores this way gives the same lattice, so the same ids."""
    neg = text.startswith("-")
    body = text[1:] if neg else text
    mantissa, _, exp_text = body.replace("E", "e").partition("e")
    whole, _, fraction = mantissa.partition(".")
    sig, exponent = 0, 0
    for d in whole:
        if sig * 10 + int(d) > _U64:
            exponent += 1  # an integer part past u64: later digits only scale it
        else:
            sig = sig * 10 + int(d)
    if exponent == 0:
        for d in fraction:
            if sig * 10 + int(d) > _U64:
                break  # the remaining fraction digits are ignored
            sig, exponent = sig * 10 + int(d), exponent - 1
    if exp_text:
        exponent += int(exp_text)
    f = float(sig)
    while abs(exponent) >= len(_POW10):
        if f == 0.0 or exponent >= 0:
            break
        f, exponent = f / 1e308, exponent + 308
    if abs(exponent) < len(_POW10):
        f = f * _POW10[exponent] if exponent >= 0 else f / _POW10[-exponent]
    return -f if neg else f


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text, parse_float=rust_float)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _merges(raw: Any, where: str) -> list[tuple[str, str]]:
    """Merges as written by tokenizers: ["a b", ...] (older files) or [["a", "b"], ...]."""
    if not isinstance(raw, list):
        raise UnsupportedTokenizer(f"{where}: model.merges must be a list, got {type(raw).__name__}")
    out = []
    for i, m in enumerate(raw):
        if isinstance(m, str):
            parts = m.split(" ")
        elif isinstance(m, list):
            parts = m
        else:
            parts = []
        if len(parts) != 2 or type(parts[0]) is not str or type(parts[1]) is not str:
            raise UnsupportedTokenizer(f"{where}: model.merges[{i}] = {m!r} is not a pair of tokens")
        out.append((parts[0], parts[1]))
    return out


def _wordpiece(obj: dict, where: str) -> WordPiece | WordLevel:
    vocab = obj.get("vocab")
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise UnsupportedTokenizer(f"{where}: model.vocab must map token strings to integer ids")
    try:
        if obj.get("type") == "WordLevel":
            return WordLevel(vocab, unk_token=obj.get("unk_token"))
        return WordPiece(vocab, unk_token=obj.get("unk_token", "[UNK]"),
                         continuing_subword_prefix=obj.get("continuing_subword_prefix", "##"),
                         max_input_chars_per_word=int(obj.get("max_input_chars_per_word", 100)))
    except ValueError as e:
        raise UnsupportedTokenizer(f"{where}: {e}") from None


def _unigram(obj: dict, where: str) -> Unigram:
    vocab = obj.get("vocab")
    ok = isinstance(vocab, list) and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                                         and isinstance(v[1], int | float) for v in vocab)
    if not ok:
        raise UnsupportedTokenizer(f"{where}: a Unigram model.vocab is a list of [piece, score] pairs")
    try:
        return Unigram([(p, s) for p, s in vocab], unk_id=obj.get("unk_id"),
                       byte_fallback=bool(obj.get("byte_fallback", False)))
    except ValueError as e:
        raise UnsupportedTokenizer(f"{where}: {e}") from None


def model_from_json(obj: Any, where: str) -> BPE | WordPiece | WordLevel | Unigram:
    if not isinstance(obj, dict):
        raise UnsupportedTokenizer(f"{where}: 'model' must be an object")
    kind = obj.get("type", "BPE" if "merges" in obj else None)
    if kind in ("WordPiece", "WordLevel"):
        return _wordpiece(obj, where)
    if kind == "Unigram":
        return _unigram(obj, where)
    if kind != "BPE":
        raise UnsupportedTokenizer(
            f"{where}: model.type {kind!r} is not supported: groundup.Tokenizer runs BPE (GPT-2, Llama), "
            "WordPiece (BERT), Unigram (T5, ALBERT, XLNet) and WordLevel models")
    if obj.get("dropout") not in (None, 0, 0.0):
        raise UnsupportedTokenizer(f"{where}: model.dropout={obj['dropout']} (BPE-dropout) is a training-time "
                                   "regularizer and is not supported; set it to null")
    vocab = obj.get("vocab")
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise UnsupportedTokenizer(f"{where}: model.vocab must map token strings to integer ids")
    try:
        return BPE(vocab, _merges(obj.get("merges", []), where), unk_token=obj.get("unk_token"),
                   byte_fallback=bool(obj.get("byte_fallback", False)), fuse_unk=bool(obj.get("fuse_unk", False)),
                   continuing_subword_prefix=obj.get("continuing_subword_prefix"),
                   end_of_word_suffix=obj.get("end_of_word_suffix"),
                   ignore_merges=bool(obj.get("ignore_merges", False)))
    except UnsupportedTokenizer:
        raise
    except ValueError as e:
        raise UnsupportedTokenizer(f"{where}: {e}") from None


def from_json(obj: Any, where: str = "tokenizer.json", config: dict | None = None,
              chat_template: Any = None) -> dict[str, Any]:
    """The parts of a Tokenizer (its constructor's arguments) from the parsed content of a tokenizer.json."""
    if not isinstance(obj, dict) or "model" not in obj:
        raise UnsupportedTokenizer(f"{where}: not a tokenizer.json (no 'model' field)")
    model = model_from_json(obj["model"], where)
    added = []
    for i, t in enumerate(obj.get("added_tokens") or []):
        if not isinstance(t, dict) or not isinstance(t.get("id"), int) or not isinstance(t.get("content"), str):
            raise UnsupportedTokenizer(f"{where}: added_tokens[{i}] needs an integer 'id' and a string 'content'")
        added.append(AddedToken(t["id"], t["content"], special=t.get("special", False),
                                single_word=t.get("single_word", False), lstrip=t.get("lstrip", False),
                                rstrip=t.get("rstrip", False), normalized=t.get("normalized", not t.get("special"))))

    def where_(field: str) -> str:
        return f"{where}: {field}"

    try:
        norm = Normalizer(obj["normalizer"], where_("normalizer")) if obj.get("normalizer") else None
        pre = PreTokenizer(obj.get("pre_tokenizer"), where_("pre_tokenizer"))
        post = PostProcessor(obj["post_processor"], where_("post_processor")) if obj.get("post_processor") else None
        dec = Decoder(obj["decoder"], where_("decoder")) if obj.get("decoder") else None
    except (KeyError, TypeError, IndexError) as e:
        raise UnsupportedTokenizer(f"{where}: malformed pipeline entry ({type(e).__name__}: {e})") from None
    extra = {k: obj[k] for k in _KEPT if obj.get(k) is not None}
    return dict(model=model, normalizer=norm, pre_tokenizer=pre, post_processor=post, decoder=dec,
                added_tokens=added, config=config, chat_template=chat_template, extra=extra)


def read(path: str | Path) -> dict[str, Any]:
    """The parts of a Tokenizer (as from_json gives them) in tokenizer.json, or in a folder with tokenizer.json
    and optionally tokenizer_config.json and chat_template.jinja (transformers >= 4.43 writes the template
    there)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        hint = " (a folder needs tokenizer.json; slow-tokenizer files such as vocab.json/merges.txt or " \
               "tokenizer.model are not read: convert them with transformers first)" if path.is_dir() else ""
        raise FileNotFoundError(f"{file}: no such file{hint}")
    config: dict = {}
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        config = _read_json(cfg_file)
        if not isinstance(config, dict):
            raise ValueError(f"{cfg_file}: expected a JSON object")
    template: Any = config.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        template = {t["name"]: t["template"] for t in template}
    return from_json(_read_json(file), str(file), config=config, chat_template=template)


def to_json(tok: Tokenizer) -> dict:
    """The tokenizer.json object (format of tokenizers >= 0.20: merges as pairs)."""
    m = tok.model
    if isinstance(m, BPE):
        model = {"type": "BPE", "dropout": None, "unk_token": m.unk_token,
                 "continuing_subword_prefix": m.continuing_subword_prefix, "end_of_word_suffix": m.end_of_word_suffix,
                 "fuse_unk": m.fuse_unk, "byte_fallback": m.byte_fallback, "ignore_merges": m.ignore_merges,
                 "vocab": dict(sorted(m.vocab.items(), key=lambda kv: kv[1])), "merges": [list(p) for p in m.merges]}
    else:
        model = m.to_json()  # WordPiece, Unigram
    return {
        "version": "1.0",
        "truncation": tok.extra.get("truncation"),
        "padding": tok.extra.get("padding"),
        "added_tokens": [t.to_json() for t in tok.added],
        "normalizer": tok.normalizer.json if tok.normalizer else None,
        "pre_tokenizer": tok.pre_tokenizer.json,
        "post_processor": tok.post_processor.json if tok.post_processor else None,
        "decoder": tok.decoder.json if tok.decoder else None,
        "model": model,
    }


def save_json(tok: Tokenizer, path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps(to_json(tok), ensure_ascii=False, indent=2))


def config_json(tok: Tokenizer) -> dict:
    """tokenizer_config.json: what transformers' PreTrainedTokenizerFast needs besides tokenizer.json."""
    cfg = dict(tok.config)
    cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    cfg.setdefault("clean_up_tokenization_spaces", False)
    cfg.setdefault("model_max_length", int(1e30))
    cfg["added_tokens_decoder"] = {str(t.id): {k: v for k, v in t.to_json().items() if k != "id"}
                                   for t in tok.added}
    if tok.chat_template is not None:
        cfg["chat_template"] = (tok.chat_template if isinstance(tok.chat_template, str)
                                else [{"name": k, "template": v} for k, v in tok.chat_template.items()])
    return cfg


def save_pretrained(tok: Tokenizer, folder: str | Path) -> None:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    save_json(tok, folder / "tokenizer.json")
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config_json(tok), ensure_ascii=False, indent=2))
    stale = folder / "chat_template.jinja"  # would override the template just written to the config
    if stale.is_file():
        stale.unlink()
