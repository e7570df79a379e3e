"""Contrastive prompts for TextNorm (SPEC section 2): rule-based, or from a local language model.

Rule-based (version ``RULES_VERSION``), for prompts made of counted noun phrases such as
"a realistic photo of two cups" or "a photo of a red cat to the left of a blue dog":
- counting (one object with count n): the counts n-2, n-1, n+1, n+2 that are >= 1;
- composition (two or more objects): each object alone; count variants (the counting rule
  applied to one object at a time); object swaps (the objects exchange places, keeping the
  counts, colours and relation of their places; skipped where that says the same thing, as
  in "a cat and a dog"); colour attribute swaps (the colours exchange objects); and
- spatial-relation swaps (left <-> right, above <-> below) for any prompt.
Prompts that fit no rule get an empty list. The original is never in the output and the
output has no duplicates. Prompts are parsed case-insensitively ("A photo of three cups"),
and the output keeps the original's capitals ("A photo of two cups").
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

RULES_VERSION = "rules-v1"

log = logging.getLogger(__name__)

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray",
           "grey"]
RELATION_SWAPS = {"left": "right", "right": "left", "above": "below", "below": "above"}
_IRREGULAR_PLURALS = {"deer": "deer", "sheep": "sheep", "fish": "fish", "mouse": "mice", "person": "people",
                      "child": "children", "man": "men", "woman": "women", "goose": "geese", "foot": "feet",
                      "tooth": "teeth", "knife": "knives", "wolf": "wolves", "leaf": "leaves", "shelf": "shelves",
                      "bus": "buses", "cactus": "cacti", "octopus": "octopuses", "ox": "oxen",
                      "tomato": "tomatoes", "potato": "potatoes"}
_IRREGULAR_SINGULARS = {p: s for s, p in _IRREGULAR_PLURALS.items()}
_COUNT_WORD = {w: i for i, w in enumerate(NUMBER_WORDS) if i >= 1} | {"a": 1, "an": 1}
_CONNECTORS = [" to the left of ", " to the right of ", " on the left of ", " on the right of ", " above ",
               " below ", " on top of ", " under ", " next to ", " and ", " with "]
_SYMMETRIC = {" and ", " next to ", " with "}


def pluralize(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        plural = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return f"{head} {plural}" if head else plural


def singularize(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR_SINGULARS:
        single = _IRREGULAR_SINGULARS[last]
    elif last.endswith("ies") and len(last) > 4:
        single = last[:-3] + "y"
    elif re.search(r"(ss|x|z|ch|sh)es$", last):
        single = last[:-2]
    elif last.endswith("s") and not last.endswith("ss"):
        single = last[:-1]
    else:
        single = last
    return f"{head} {single}" if head else single


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def count_phrase(count: int, noun: str, *, colour: str | None = None, use_article: bool = True) -> str:
    """'an apple', 'two red cups', 'one cat' (with use_article False)."""
    words = f"{colour} {noun}" if colour else noun
    if count == 1:
        return f"{article(words) if use_article else 'one'} {words}"
    plural = pluralize(noun)
    words = f"{colour} {plural}" if colour else plural
    number = NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)
    return f"{number} {words}"


@dataclass(frozen=True)
class NounPhrase:
    count: int
    noun: str  # singular
    colour: str | None
    use_article: bool

    def text(self) -> str:
        return count_phrase(self.count, self.noun, colour=self.colour, use_article=self.use_article)


@dataclass(frozen=True)
class Scene:
    prefix: str  # e.g. "a realistic photo of " (may be empty)
    phrases: tuple[NounPhrase, ...]
    connectors: tuple[str, ...]  # between phrases, with their spaces
    suffix: str  # e.g. "." or ""

    def text(self) -> str:
        out = self.prefix + self.phrases[0].text()
        for conn, phrase in zip(self.connectors, self.phrases[1:], strict=True):
            out += conn + phrase.text()
        return out + self.suffix


_PHRASE = re.compile(
    r"(?P<count>" + "|".join(sorted(_COUNT_WORD, key=len, reverse=True)) + r"|\d+)\s+"
    r"(?:(?P<colour>" + "|".join(COLOURS) + r")\s+)?(?P<noun>[a-z][a-z\-]*(?: [a-z][a-z\-]*)?)$"
)


def _parse_phrase(text: str) -> NounPhrase | None:
    m = _PHRASE.fullmatch(text.strip())
    if not m:
        return None
    word, noun = m["count"], m["noun"]
    if any(w in _COUNT_WORD for w in noun.split()):
        return None
    count = int(word) if word.isdigit() else _COUNT_WORD[word]
    if count < 1:
        return None
    return NounPhrase(count=count, noun=noun if count == 1 else singularize(noun), colour=m["colour"],
                      use_article=word in ("a", "an") or count != 1)


def parse_scene(prompt: str) -> Scene | None:
    """The prompt as counted noun phrases joined by connectors, or None if it is not one.
    The scene is read from the lowercased prompt; ``restore_case`` puts the capitals back."""
    low = prompt.strip().lower()
    suffix = ""
    if low.endswith("."):
        low, suffix = low[:-1], "."
    # The prefix ends right before the first count word: try each candidate start.
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\s))(?:" + "|".join(_COUNT_WORD) + r"|\d+)\s", low)]
    for start in starts:
        prefix, body = low[:start], low[start:]
        pattern = "(" + "|".join(re.escape(c) for c in _CONNECTORS) + ")"
        parts = re.split(pattern, body)
        texts, connectors = parts[0::2], parts[1::2]
        phrases = [_parse_phrase(t) for t in texts]
        if all(phrases):
            return Scene(prefix, tuple(phrases), tuple(connectors), suffix)  # type: ignore[arg-type]
    return None


_WORD = re.compile(r"[A-Za-z][A-Za-z\-]*")


def restore_case(text: str, original: str) -> str:
    """``text``, made from the lowercased ``original``, with the original's capitals back: a
    capital first letter, and each word written with capitals (in its singular or plural
    form too: "two Teddy Bears" -> "a Teddy Bear"). The original's first word counts only
    for the first letter unless it has capitals inside ("NASA")."""
    styled: dict[str, str] = {}
    for i, word in enumerate(_WORD.findall(original)):
        if word == word.lower() or (i == 0 and word[1:] == word[1:].lower()):
            continue
        low = word.lower()
        for form in (low, pluralize(low), singularize(low)):
            styled.setdefault(form, word if form == low else _like(form, word))
    out = _WORD.sub(lambda m: styled.get(m.group(), m.group()), text)
    return out[:1].upper() + out[1:] if original.strip()[:1].isupper() else out


def _like(form: str, model: str) -> str:
    """``form`` written like ``model``: "tvs" like "TV" is "TVs", "bear" like "Bears" is "Bear"."""
    if form.startswith(model.lower()):
        return model + form[len(model):]
    return form[:1].upper() + form[1:]


def _count_variants(n: int) -> list[int]:
    return [c for c in (n - 2, n - 1, n + 1, n + 2) if c >= 1]


def _with_phrase(scene: Scene, i: int, phrase: NounPhrase) -> Scene:
    phrases = list(scene.phrases)
    phrases[i] = phrase
    return replace(scene, phrases=tuple(phrases))


def _counting(scene: Scene) -> list[str]:
    out = []
    for i, phrase in enumerate(scene.phrases):
        for c in _count_variants(phrase.count):
            out.append(_with_phrase(scene, i, replace(phrase, count=c, use_article=True)).text())
    return out


def _each_alone(scene: Scene) -> list[str]:
    return [replace(scene, phrases=(p,), connectors=()).text() for p in scene.phrases]


def _object_swaps(scene: Scene) -> list[str]:
    out = []
    ps = scene.phrases
    for i in range(len(ps)):
        for j in range(i + 1, len(ps)):
            if ps[i].noun == ps[j].noun:
                continue
            same_binding = (ps[i].count, ps[i].colour) == (ps[j].count, ps[j].colour)
            symmetric = all(c in _SYMMETRIC for c in scene.connectors)
            if same_binding and symmetric:
                continue  # "a dog and a cat" says what "a cat and a dog" says
            swapped = _with_phrase(scene, i, replace(ps[i], noun=ps[j].noun))
            out.append(_with_phrase(swapped, j, replace(ps[j], noun=ps[i].noun)).text())
    return out


def _colour_swaps(scene: Scene) -> list[str]:
    out = []
    ps = scene.phrases
    for i in range(len(ps)):
        for j in range(i + 1, len(ps)):
            if ps[i].colour == ps[j].colour:
                continue
            swapped = _with_phrase(scene, i, replace(ps[i], colour=ps[j].colour))
            out.append(_with_phrase(swapped, j, replace(ps[j], colour=ps[i].colour)).text())
    return out


def _relation_swaps(prompt: str) -> list[str]:
    pattern = re.compile(r"\b(" + "|".join(RELATION_SWAPS) + r")\b", re.IGNORECASE)
    if not pattern.search(prompt):
        return []

    def swap(m: re.Match) -> str:
        word = RELATION_SWAPS[m.group(1).lower()]
        return word.capitalize() if m.group(1)[0].isupper() else word

    return [pattern.sub(swap, prompt)]


def rule_based_contrastive(prompt: str) -> list[str]:
    """SPEC section 2's rules: de-duplicated, never the prompt itself."""
    scene = parse_scene(prompt)
    out: list[str] = []
    if scene is not None:
        out += _counting(scene)
        if len(scene.phrases) >= 2:
            composition = _each_alone(scene)
            out = composition + out + _object_swaps(scene) + _colour_swaps(scene)
        out = [restore_case(t, prompt) for t in out]
    out += _relation_swaps(prompt)
    return [t for t in dict.fromkeys(out) if t != prompt]


# ---- language model -------------------------------------------------------------------

LM_TEMPLATE = (
    "Write {k} short image captions that differ from the caption below in one detail "
    "(count, object, colour or position). One per line.\nCaption: {prompt}\nCaptions:\n"
)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|\(\d+\))\s*")


def parse_generated_lines(text: str, *, prompt: str, max_chars: int = 200, limit: int | None = None) -> list[str]:
    """Keep well-formed lines: bullets and quotes stripped; empty, over-long, duplicate,
    unprintable or letter-less lines and the prompt itself dropped."""
    out: list[str] = []
    seen = {prompt.strip().lower()}
    for raw in text.splitlines():
        line = _BULLET.sub("", raw).strip().strip("\"'`").strip()
        if not line or len(line) > max_chars:
            continue
        if "\ufffd" in line or not line.isprintable() or not re.search(r"[A-Za-z]{2,}", line):
            continue
        if line.lower().startswith(("caption", "captions")):
            continue
        key = line.lower()
        if key in seen:
            continue
        seen.add(key)
        out.append(line)
        if limit is not None and len(out) >= limit:
            break
    return out


@dataclass(frozen=True)
class LanguageModelSettings:
    k: int = 8
    max_new_tokens: int = 96
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    max_chars: int = 200


class LanguageModelGenerator:
    """Contrastive prompts from a local transformers causal language model (a folder)."""

    def __init__(self, path: str, settings: LanguageModelSettings = LanguageModelSettings(), *,
                 device: str = "cpu"):
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise ValueError(f"language model path {path} is not a folder")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ValueError(f"language model at {path}: cannot load: {exc}") from exc
        self.settings = settings
        self.device = device

    def generate(self, prompt: str) -> list[str]:
        """Up to k lines for ``prompt``. A prompt the model fails on gives no lines (the run
        records it as empty) rather than aborting the whole dataset."""
        try:
            return self._generate(prompt)
        except (RuntimeError, IndexError, ValueError) as exc:
            log.warning("language model failed on prompt %r; no contrastive prompts: %s: %s",
                        prompt, type(exc).__name__, exc)
            return []

    def _generate(self, prompt: str) -> list[str]:
        import torch

        s = self.settings
        text = LM_TEMPLATE.format(k=s.k, prompt=prompt)
        enc = self.tokenizer(text, return_tensors="pt")
        enc, max_new = fit_to_context(enc, s.max_new_tokens, context_length(self.model.config))
        if max_new < 1:
            return []
        enc = enc.to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(s.seed)
            out = self.model.generate(**enc, max_new_tokens=max_new, do_sample=True,
                                      temperature=s.temperature, top_p=s.top_p, pad_token_id=pad)
        new = self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return parse_generated_lines(new, prompt=prompt, max_chars=s.max_chars, limit=s.k)


_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(config) -> int | None:
    """How many tokens (input + output) the model can see, from its config, or None if the
    config does not say. Names differ by family (GPT-2: n_positions; most others:
    max_position_embeddings); multimodal configs keep it in their text config."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in _CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_to_context(enc, max_new_tokens: int, context: int | None):
    """The tokenised input and a max_new_tokens that fit ``context`` together: new tokens are
    capped at what is left after the input, and an input that alone fills the context loses
    its oldest tokens (left-truncated, so the prompt and "Captions:" at its end are kept) to
    leave room for max_new_tokens, up to half the context. Past the context a model with
    learned positions raises IndexError on the CPU, and a device-side assert on CUDA."""
    if context is None:
        return enc, max_new_tokens
    length = enc["input_ids"].shape[1]
    if length >= context:
        keep = context - min(max_new_tokens, context // 2)
        enc = type(enc)({k: v[:, -keep:] for k, v in enc.items()})
        length = keep
    return enc, min(max_new_tokens, context - length)


Generator = Callable[[str], list[str]]
