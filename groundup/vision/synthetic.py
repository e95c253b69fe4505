"""A synthetic image-text set that needs no network: coloured shapes drawn with Pillow, with captions and
question/answer pairs from templates.

Each scene holds ``count`` copies (1-3) of one shape in one colour, at one of five positions when alone.
Scene i of a split is drawn from a generator seeded by (seed, split, i), so the set is the same on every
machine and the held-out split ("test") never shares a scene with "train". The labels a model can be asked
for are the shape (4), the colour (6), their pair (24), the count (3) and a single shape's position (5).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .image import pil

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 85, 220), "yellow": (235, 205, 35),
           "purple": (140, 55, 185), "orange": (245, 135, 25)}
COUNTS = ("one", "two", "three")
POSITIONS = ("left", "right", "top", "bottom", "centre")
SPLITS = {"train": 0, "test": 1}
QUESTIONS = {"colour": "What colour are the shapes?", "shape": "What shape is in the picture?",
             "count": "How many shapes are there?"}


@dataclass
class Scene:
    shape: str
    colour: str
    count: int
    position: str | None  # for a single shape; None when there are several
    image: object = field(repr=False)  # PIL.Image.Image

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def caption(self) -> str:
        """"a red circle on the left", "two blue squares"."""
        if self.count == 1:
            where = "in the centre" if self.position == "centre" else f"on the {self.position}"
            return f"a {self.colour} {self.shape} {where}"
        return f"{COUNTS[self.count - 1]} {self.colour} {self.shape}s"

    def answer(self, kind: str) -> str:
        return {"colour": self.colour, "shape": self.shape, "count": COUNTS[self.count - 1]}[kind]

    def conversation(self, kind: str) -> list[dict[str, str]]:
        """The LLaVA conversation format: a human turn with the <image> placeholder, the model's answer."""
        return [{"from": "human", "value": f"<image>\n{QUESTIONS[kind]}"}, {"from": "gpt", "value": self.answer(kind)}]


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    return None


def draw(shape: str, colour: str, count: int, position: str | None, size: int, rng: random.Random):
    """One scene's image: a light, slightly tinted background and ``count`` shapes that do not overlap."""
    Image = pil()
    from PIL import ImageDraw

    bg = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    pen = ImageDraw.Draw(img)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    r = size * (0.2 if count == 1 else 0.13) * rng.uniform(0.85, 1.15)
    if count == 1:
        cx, cy = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
                  "centre": (0.5, 0.5)}[position]
        centres = [(cx * size + rng.uniform(-2, 2), cy * size + rng.uniform(-2, 2))]
    else:  # cells of a 3 x 3 grid, so copies never touch
        cells = rng.sample(range(9), count)
        centres = [((c % 3 + 0.5) * size / 3, (c // 3 + 0.5) * size / 3) for c in cells]
    for cx, cy in centres:
        points = _outline(shape, cx, cy, r)
        if points is not None:
            pen.polygon(points, fill=fill)
        elif shape == "circle":
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            pen.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    return img


def scene(i: int, split: str = "train", *, size: int = 64, seed: int = 0) -> Scene:
    """Scene i of a split (the same on every machine)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    rng = random.Random(f"groundup-shapes/{seed}/{split}/{i}")
    shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    count = rng.choice((1, 1, 2, 3))  # half the scenes hold one shape, so positions are learned too
    position = rng.choice(POSITIONS) if count == 1 else None
    return Scene(shape, colour, count, position, draw(shape, colour, count, position, size, rng))


def scenes(n: int, split: str = "train", *, size: int = 64, seed: int = 0) -> Iterator[Scene]:
    for i in range(n):
        yield scene(i, split, size=size, seed=seed)


def write_folder(folder: str | Path, *, train: int = 2000, test: int = 200, size: int = 64, seed: int = 0) -> Path:
    """The set as files: <split>/<i>.png and <split>.jsonl, one record per image: {"image", "caption", "label",
    "shape", "colour", "count", "position", "conversations"} (the loaders of groundup.vision.data read it)."""
    root = Path(folder)
    for split, n in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i, s in enumerate(scenes(n, split, size=size, seed=seed)):
            name = f"{split}/{i:05d}.png"
            s.image.save(root / name)
            kind = ("colour", "shape", "count")[i % 3]
            rows.append({"image": name, "caption": s.caption, "label": s.label, "shape": s.shape, "colour": s.colour,
                         "count": s.count, "position": s.position, "conversations": s.conversation(kind)})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
