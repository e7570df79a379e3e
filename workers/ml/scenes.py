"""What a counting or composition prompt asks for, read from its text.

The TIA2 templates (SPEC.md section 1) are ``a realistic photo of {count} {objects}`` and
``a realistic photo of {a X} and {a Y}``. Pure Python: no Django, no torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OBJECTS = (
    "airplane", "apple", "automobile", "bird", "book", "cake", "carrot", "cat", "chair", "cup",
    "deer", "dog", "fork", "frog", "horse", "laptop", "microwave", "orange", "ship", "suitcase",
    "teddy bear", "toaster", "truck", "umbrella", "vase",
)
NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
                "seven": 7, "eight": 8, "nine": 9, "ten": 10}
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
               8: "eight", 9: "nine", 10: "ten"}
MAX_COUNT = max(COUNT_WORDS)  # the largest count a prompt can ask for, and a drawing show
_IRREGULAR_PLURALS = {"deer": "deer", "teddy bear": "teddy bears"}


def plural(name: str) -> str:
    if name in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[name]
    if name.endswith(("s", "sh", "ch", "x")):
        return name + "es"
    return name + "s"


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def count_phrase(name: str, count: int) -> str:
    """``a cup``, ``an apple``, ``three cups``; digits past ``ten`` (``11 cups``), so that
    describing any scene never fails."""
    if count == 1:
        return f"{article(name)} {name}"
    return f"{COUNT_WORDS.get(count, str(count))} {plural(name)}"


@dataclass(frozen=True)
class SceneObject:
    name: str
    count: int


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]

    def describe(self) -> str:
        return "a realistic photo of " + " and ".join(count_phrase(o.name, o.count) for o in self.objects)


_NAME_BY_FORM = {**{o: o for o in OBJECTS}, **{plural(o): o for o in OBJECTS}}
_PHRASE = re.compile(
    r"(?P<count>" + "|".join(NUMBER_WORDS) + r")\s+(?P<name>" + "|".join(
        sorted((re.escape(f) for f in _NAME_BY_FORM), key=len, reverse=True)) + r")"
)


def parse_scene(text: str) -> Scene | None:
    """The objects and counts a prompt asks for, or None when it is not a scene prompt."""
    body = text.strip().lower().rstrip(".")
    body = re.sub(r"^(a realistic photo of|a photo of)\s+", "", body)
    parts = [p.strip() for p in body.split(" and ")]
    objects = []
    for part in parts:
        match = _PHRASE.fullmatch(part)
        if not match:
            return None
        objects.append(SceneObject(_NAME_BY_FORM[match["name"]], NUMBER_WORDS[match["count"]]))
    return Scene(tuple(objects)) if objects else None


def demo_prompts() -> list[str]:
    """A small counting and composition prompt set in TIA2's templates, for the demo."""
    counting = [Scene((SceneObject(name, n),)).describe()
                for name in ("cup", "apple", "dog", "book", "umbrella") for n in (1, 2, 3, 4)]
    pairs = [("dog", "vase"), ("cat", "chair"), ("apple", "book"), ("bird", "umbrella"),
             ("cake", "fork"), ("laptop", "cup"), ("horse", "truck"), ("frog", "orange")]
    composition = [Scene((SceneObject(a, 1), SceneObject(b, 1))).describe() for a, b in pairs]
    return counting + composition
