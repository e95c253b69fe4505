"""Synthetic speech for training a small recogniser here: espeak-ng speaks numbers, digit strings and templated
sentences in several voices and speeds; sox adds a little noise to some. A data step for bench/docs, not a test
dependency (needs `apt-get install espeak-ng sox`).

    python bench/audio_data.py --out data/speech [--train 3000 --test 300]

Writes <out>/<split>/<i>.wav and <out>/<split>.jsonl with {"audio": "<split>/<i>.wav", "text": ...}. Utterance i
of a split is drawn from a generator seeded by (split, i): the same set on every machine, the splits disjoint in
their draws (the texts may repeat across splits: "seven" is "seven").
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
from pathlib import Path

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us+f3", "en-gb+m3", "en-us+m5", "en-gb-x-gbclan"]
COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
THINGS = ["light", "door", "window", "radio", "fan"]


def number_words(n: int) -> str:
    """0 <= n < 1000 in words, as espeak says it ("three hundred and forty two")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def utterance(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return number_words(rng.randrange(1000))
    if kind == 1:
        return " ".join(ONES[rng.randrange(10)] for _ in range(rng.randint(3, 6)))
    if kind == 2:
        return f"turn the {rng.choice(COLOURS)} {rng.choice(THINGS)} {rng.choice(['on', 'off'])}"
    return f"open the {rng.choice(THINGS)} at {number_words(rng.randint(1, 12))} o clock"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/speech")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=300)
    args = p.parse_args()
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install espeak-ng sox")
    root = Path(args.out)
    for split, n in (("train", args.train), ("test", args.test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            rng = random.Random(f"groundup-speech/{split}/{i}")
            text, voice, speed = utterance(rng), rng.choice(VOICES), rng.randint(130, 210)
            wav = root / split / f"{i:05d}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
            if rng.random() < 0.3:  # a little background noise
                noisy = wav.with_suffix(".noisy.wav")
                noise = subprocess.run(["sox", str(wav), "-p", "synth", "whitenoise", "vol",
                                        f"{rng.uniform(0.005, 0.02):.4f}"], capture_output=True, check=True).stdout
                subprocess.run(["sox", "-m", str(wav), "-t", "sox", "-", str(noisy)], input=noise, check=True,
                               capture_output=True)
                noisy.replace(wav)
            rows.append({"audio": f"{split}/{wav.name}", "text": text})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{split}: {n} utterances -> {root / split}")


if __name__ == "__main__":
    main()
