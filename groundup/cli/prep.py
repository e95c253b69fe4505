"""`groundup prep-data`: clean and augment an instruction JSONL file (data/prep.py), reporting every drop.

    groundup prep-data raw.jsonl --out clean.jsonl --redact-pii --blocklist words.txt --dedup near \\
        --augment 2 --synonyms synonyms.json --p-delete 0.1 --swaps 1 --seed 0

Redaction applies to every string field of a record; the blocklist and duplicate checks read all string
fields joined; augmentation adds N rewritten copies of each kept record, rewriting the prompt-side field
(prompt, instruction or the user turns) and never the answer. Dropped records are listed with their line
numbers; the output is written atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.instruct import read_records
from ..data.prep import augment, blocklist_filter, dedup_exact, dedup_near, redact_pii
from ..utils.files import atomic_file

PROMPT_FIELDS = ("prompt", "instruction", "input", "context")


def add_prep_parser(sub) -> None:
    p = sub.add_parser("prep-data", help="redact, filter, deduplicate and augment an instruction JSONL file")
    p.add_argument("data", help="JSONL file of records")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--redact-pii", action="store_true", help="e-mail addresses -> [EMAIL], phones -> [PHONE]")
    p.add_argument("--blocklist", default=None, help="file of blocked words, one per line")
    p.add_argument("--dedup", choices=("none", "exact", "near"), default="exact")
    p.add_argument("--threshold", type=float, default=0.8, help="near duplicates: estimated Jaccard similarity")
    p.add_argument("--augment", type=int, default=0, help="rewritten copies to add per record")
    p.add_argument("--synonyms", default=None, help="JSON file {word: [synonyms]} for synonym replacement")
    p.add_argument("--p-synonym", type=float, default=0.2)
    p.add_argument("--p-delete", type=float, default=0.0)
    p.add_argument("--swaps", type=int, default=0)
    p.add_argument("--p-typo", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=main_prep)


def _strings(rec: dict) -> list[str]:
    out = [v for v in rec.values() if isinstance(v, str)]
    for turns in (rec.get("messages"), rec.get("conversations")):
        for t in turns or []:
            out += [v for v in t.values() if isinstance(v, str)] if isinstance(t, dict) else []
    return out


def _map_strings(rec: dict, fn, *, prompt_only: bool = False) -> dict:
    rec = dict(rec)
    for k, v in rec.items():
        if isinstance(v, str) and (not prompt_only or k in PROMPT_FIELDS):
            rec[k] = fn(v)
    for key, role_key, user in (("messages", "role", "user"), ("conversations", "from", "human")):
        if isinstance(rec.get(key), list):
            rec[key] = [{**t, **{f: fn(t[f]) for f in ("content", "value") if isinstance(t.get(f), str)
                                 and (not prompt_only or t.get(role_key) == user)}} if isinstance(t, dict) else t
                        for t in rec[key]]
    return rec


def main_prep(args: argparse.Namespace) -> int:
    synonyms = json.loads(Path(args.synonyms).read_text()) if args.synonyms else None
    if args.augment and not (synonyms or args.p_delete or args.swaps or args.p_typo):
        raise ValueError("--augment needs at least one rewrite: --synonyms, --p-delete, --swaps or --p-typo")
    blocked = Path(args.blocklist).read_text().splitlines() if args.blocklist else []
    records, lines = [], []
    for rec, where in read_records(args.data):
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: a record must be a JSON object")
        records.append(_map_strings(rec, redact_pii) if args.redact_pii else rec)
        lines.append(where)
    texts = ["\n".join(_strings(r)) for r in records]
    kept, dropped = blocklist_filter(texts, blocked)
    report = [f"{lines[i]}: blocked word {w!r}" for i, w in dropped]
    if args.dedup != "none":
        sub = [texts[i] for i in kept]
        if args.dedup == "exact":
            keep_sub, dup = dedup_exact(sub)
            report += [f"{lines[kept[i]]}: exact duplicate of {lines[kept[j]]}" for i, j in dup]
        else:
            keep_sub, dup = dedup_near(sub, threshold=args.threshold, seed=args.seed)
            report += [f"{lines[kept[i]]}: near duplicate of {lines[kept[j]]} (Jaccard ~{s:.2f})" for i, j, s in dup]
        kept = [kept[i] for i in keep_sub]
    out = []
    for n, i in enumerate(kept):
        out.append(records[i])
        for c in range(args.augment):
            seed = args.seed * 1_000_003 + n * 101 + c
            out.append(_map_strings(records[i], lambda t, s=seed: augment(
                t, seed=s, synonyms=synonyms, p_synonym=args.p_synonym, p_delete=args.p_delete, swaps=args.swaps,
                p_typo=args.p_typo), prompt_only=True))
    atomic_file(args.out, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in out)))
    for line in report:
        print(f"dropped {line}")
    print(f"{len(records)} records read, {len(records) - len(kept)} dropped, {len(out) - len(kept)} augmented "
          f"copies added: {len(out)} written to {args.out}")
    return 0
