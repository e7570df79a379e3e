"""A generator that draws counting and composition scenes with labelled shapes.

For demos and tests: a person can judge its images, and each image's ground truth is
known. With probability ``error_rate`` an image is drawn wrong (a count off by one, or an
object left out), which is what an over-optimised model does. Pure Pillow and numpy.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from workers.ml.scenes import MAX_COUNT, Scene, SceneObject, parse_scene

_PALETTE = [(230, 57, 70), (29, 53, 87), (69, 123, 157), (244, 162, 97), (42, 157, 143),
            (131, 56, 236), (255, 183, 3), (88, 129, 87), (188, 71, 73), (0, 119, 182)]
_SHAPES = ("circle", "square", "triangle", "diamond")


@dataclass(frozen=True)
class Rendered:
    image: Image.Image
    asked: Scene | None
    drawn: Scene | None

    @property
    def matches_prompt(self) -> bool | None:
        """Ground truth: whether the drawing shows what the prompt asks (None if unknown)."""
        if self.asked is None:
            return None
        return self.asked == self.drawn


def _style(name: str) -> tuple[str, tuple[int, int, int]]:
    digest = hashlib.sha256(name.encode()).digest()
    return _SHAPES[digest[0] % len(_SHAPES)], _PALETTE[digest[1] % len(_PALETTE)]


def _perturb(scene: Scene, rng: np.random.Generator) -> Scene:
    """A wrong drawing of ``scene``: an object left out, or a count off by one that stays in
    1..MAX_COUNT (1 goes up, MAX_COUNT goes down), so the wrong scene can still be drawn and named."""
    objects = list(scene.objects)
    if len(objects) > 1 and rng.random() < 0.5:
        objects.pop(int(rng.integers(len(objects))))  # an object left out
    else:
        i = int(rng.integers(len(objects)))
        objects[i] = SceneObject(objects[i].name, _wrong_count(objects[i].count, rng))
    return Scene(tuple(objects))


def _wrong_count(n: int, rng: np.random.Generator) -> int:
    if n <= 1:
        return n + 1
    if n >= MAX_COUNT:
        return n - 1
    return n + 1 if rng.random() < 0.5 else n - 1


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=(20, 20, 20), width=2)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=(20, 20, 20), width=2)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill, outline=(20, 20, 20))
    else:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill, outline=(20, 20, 20))


def render(prompt: str, *, seed: int, size: tuple[int, int] = (256, 256), error_rate: float = 0.0,
           salt: str = "") -> Rendered:
    """Draw ``prompt`` deterministically from ``seed`` (and ``salt``). Whether it is drawn wrong is drawn from
    the seed, the prompt and ``salt`` (the checkpoint's), so that a checkpoint's mistakes fall on
    ``error_rate`` of its images whatever the number of seeds, independently of another
    checkpoint's. A failure raises RuntimeError naming the
    prompt (a job's error text must say which prompt broke, not just ``KeyError: 11``)."""
    try:
        return _render(prompt, seed=seed, size=size, error_rate=error_rate, salt=salt)
    except Exception as exc:
        raise RuntimeError(f"procedural render of {prompt!r} (seed {seed}): {type(exc).__name__}: {exc}") from exc


def _word(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _wrong(prompt: str, seed: int, salt: str, error_rate: float) -> bool:
    return bool(np.random.default_rng([int(seed), _word(prompt), _word(salt)]).random() < error_rate)


def _render(prompt: str, *, seed: int, size: tuple[int, int], error_rate: float, salt: str) -> Rendered:
    # Two checkpoints draw the same seed differently, as two models would: never the same picture.
    rng = np.random.default_rng([int(seed), _word(salt)] if salt else seed)
    width, height = size
    background = tuple(int(v) for v in rng.integers(225, 256, size=3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, width // 14))
    asked = parse_scene(prompt)
    if asked is None:
        draw.multiline_text((8, 8), _wrap(prompt, 28), fill=(40, 40, 40), font=font)
        return Rendered(image, None, None)
    drawn = _perturb(asked, rng) if _wrong(prompt, seed, salt, error_rate) else asked
    instances = [o.name for o in drawn.objects for _ in range(o.count)]
    cols = int(np.ceil(np.sqrt(len(instances))))
    rows = int(np.ceil(len(instances) / cols))
    cell_w, cell_h = width / cols, height / rows
    cells = rng.permutation(cols * rows)[: len(instances)]
    for name, cell in zip(instances, cells):
        shape, colour = _style(name)
        r, c = divmod(int(cell), cols)
        pad = min(cell_w, cell_h) * float(rng.uniform(0.12, 0.22))
        box = (c * cell_w + pad, r * cell_h + pad, (c + 1) * cell_w - pad, (r + 1) * cell_h - pad * 1.8)
        _draw_shape(draw, shape, box, colour)
        draw.text(((box[0] + box[2]) / 2, box[3] + 2), name, fill=(20, 20, 20), font=font, anchor="ma")
    drawn.describe()  # the backend records it: fail here, where the prompt is known
    return Rendered(image, asked, drawn)


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
