"""Tokenizer speed and memory: groundup vs HF `tokenizers` (Rust) on 10 MB of the Python standard library.

    python bench/tokenizer.py [--mb 10] [--repeats 3] [--out docs/bench_tokenizer.md]

Rows: training a byte-level BPE with an 8k vocabulary from the file; encoding the whole text in one call
(a fresh tokenizer each time, so groundup's word cache starts empty) and decoding it back; encoding it as a
batch of lines (tokenizers uses both cores there, groundup one); and the same one-call encode and decode
with a Llama-2 style tokenizer (metaspace + byte fallback, no pre-tokenizer), a BERT WordPiece one (uncased,
BertNormalizer + BertPreTokenizer) and a T5-style Unigram one (NFKC + Metaspace). Both sides run on the same
file and the same tokenizer.json, alternate, and the median of the repeats is reported with the ratio
(>1: groundup faster). Ids and decoded text are checked to be identical before timing. Peak memory is
the rise of the resident set's high-water mark in a separate process doing only that task (Linux: reset
through /proc/self/clear_refs just before the task).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' reference-tokenizer builders
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import alternate, command, emit
from tokenizer.conftest import bert_style, sentencepiece_style, t5_style  # tests/tokenizer/conftest.py

from groundup import Tokenizer
from groundup.data import python_stdlib


def hf_train(path: str, vocab: int):
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([path], trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def gu_train(path: str, vocab: int) -> Tokenizer:
    return Tokenizer.train(Path(path), vocab, special_tokens=["<|endoftext|>"])


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_child(task: str, side: str, path: str, tok_json: str, vocab: int, q) -> None:
    text = Path(path).read_text(encoding="utf-8")
    if task == "encode":
        if side == "gu":
            tok = Tokenizer.from_file(tok_json)
            f = lambda: tok.encode(text, allowed_special="all")
        else:
            from tokenizers import Tokenizer as HF

            tok = HF.from_file(tok_json)
            f = lambda: tok.encode(text).ids
    else:
        f = (lambda: gu_train(path, vocab)) if side == "gu" else (lambda: hf_train(path, vocab))
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as c:  # reset the high-water mark (VmHWM) to the current RSS
        c.write("5")
    f()
    q.put(_status_mb("VmHWM") - before)


def peak_mb(task: str, side: str, path: str, tok_json: str, vocab: int) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(task, side, path, tok_json, vocab, q))
    p.start()
    value = q.get()
    p.join()
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=10)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()
    from tokenizers import Tokenizer as HF

    text = python_stdlib(int(args.mb * 1e6))
    n_mb = len(text.encode()) / 1e6
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    rows = []

    # --- training
    g, h = alternate(lambda: gu_train(str(path), args.vocab), lambda: hf_train(str(path), args.vocab),
                      args.repeats)
    mine, theirs = gu_train(str(path), args.vocab), hf_train(str(path), args.vocab)
    theirs.save(str(tmp / "hf.json"))
    same = json.loads(theirs.to_str())["model"]["merges"] == [list(m) for m in mine.model.merges]
    rows.append((f"train {args.vocab} vocab ({'identical' if same else 'DIFFERENT'} merges)", g, h,
                 peak_mb("train", "gu", str(path), "", args.vocab), peak_mb("train", "hf", str(path), "", args.vocab)))

    # --- encoding with the same tokenizer.json
    hf_json = str(tmp / "hf.json")
    sp_json = str(sentencepiece_style(tmp, text, "legacy", vocab_size=8000))
    bert_json, t5_json = str(bert_style(tmp, text, "uncased")), str(t5_style(tmp, text, "plain"))
    lines = text.splitlines(keepends=True)
    for name, tj in (("byte-level", hf_json), ("Llama-2 style", sp_json), ("BERT WordPiece", bert_json),
                     ("T5 Unigram", t5_json)):
        gu_tok, hf_tok = Tokenizer.from_file(tj), HF.from_file(tj)
        assert gu_tok.encode(text, allowed_special="all") == hf_tok.encode(text).ids, f"{name}: ids differ"
        g, h = alternate(lambda t: t.encode(text, allowed_special="all"), lambda t: t.encode(text).ids,
                          args.repeats, setup_a=lambda tj=tj: Tokenizer.from_file(tj),
                          setup_b=lambda tj=tj: HF.from_file(tj))
        rows.append((f"encode {name}, one call", g, h, peak_mb("encode", "gu", str(path), tj, 0),
                     peak_mb("encode", "hf", str(path), tj, 0)))
        ids = hf_tok.encode(text).ids
        assert gu_tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=False), f"{name}: text differs"
        g, h = alternate(lambda t=gu_tok, i=ids: t.decode(i),
                         lambda t=hf_tok, i=ids: t.decode(i, skip_special_tokens=False), args.repeats)
        rows.append((f"decode {name}, one call", g, h, float("nan"), float("nan")))
        if name == "byte-level":
            g, h = alternate(lambda t: t.encode_batch(lines, allowed_special="all"),
                              lambda t: t.encode_batch(lines), args.repeats,
                              setup_a=lambda tj=tj: Tokenizer.from_file(tj), setup_b=lambda tj=tj: HF.from_file(tj))
            rows.append((f"encode {name}, batch of {len(lines):,} lines", g, h, float("nan"), float("nan")))

    out = [f"Command: `{command()}` ({n_mb:.1f} MB of Python stdlib source, {os.cpu_count()} cores, "
           f"tokenizers {__import__('tokenizers').__version__})", "",
           "| task | groundup s | tokenizers s | ratio (>1: groundup faster) | groundup MB/s | tokenizers MB/s "
           "| peak MB groundup | peak MB tokenizers |",
           "|---|---|---|---|---|---|---|---|"]
    for name, g, h, pg, ph in rows:
        mem = f"{pg:.0f} | {ph:.0f}" if pg == pg else "- | -"
        out.append(f"| {name} | {g:.2f} | {h:.2f} | {h / g:.2f} | {n_mb / g:.2f} | {n_mb / h:.2f} | {mem} |")
    emit("Tokenizer benchmark", out, args.out)


if __name__ == "__main__":
    main()
