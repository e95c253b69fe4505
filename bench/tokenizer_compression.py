"""Tokens per word vs vocabulary size (course: "1.3 tokens per word" for a GPT-2-size vocabulary on English).

    python bench/tokenizer_compression.py [--out docs/bench_tokenizer_compression.md]

English prose available offline: the Python documentation topics shipped with the interpreter
(pydoc_data.topics, ~465 KB). Byte-level BPEs are trained by groundup on 80% of the topics and measured
on the held-out 20%: bytes/token, tokens/word (whitespace-separated words) and vocabulary used. Training
stops early when every word is one token (no pair left), so the learned size can be below the asked one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from groundup import Tokenizer
from groundup.cli.tokenizer import stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import pydoc_data.topics as topics

    docs = [topics.topics[k] for k in sorted(topics.topics)]
    cut = int(len(docs) * 0.8)
    train, held = docs[:cut], "".join(docs[cut:])
    lines = ["| vocab asked | vocab learned | bytes/token | tokens/word | vocabulary used | train s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        t0 = time.perf_counter()
        tok = Tokenizer.train(train, size, special_tokens=["<|endoftext|>"])
        dt = time.perf_counter() - t0
        s = stats(tok, held)
        lines.append(f"| {size:,} | {tok.vocab_size:,} | {s['bytes_per_token']:.2f} | {s['tokens_per_word']:.2f} | "
                     f"{100 * s['vocab_coverage']:.0f}% | {dt:.1f} |")
    n_train = sum(len(d.encode()) for d in train)
    cmd = " ".join(["python bench/tokenizer_compression.py", *sys.argv[1:]])
    head = (f"Command: `{cmd}`"
            + f" — trained on {n_train / 1e3:.0f} KB, measured on {len(held.encode()) / 1e3:.0f} KB held out "
            f"({len(held.split()):,} words).")
    table = head + "\n\n" + "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(f"# Tokens per word vs vocabulary size\n\n{table}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
