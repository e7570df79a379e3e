"""The TIA2 report: the human labels' figures per category (SPEC.md section 1's table) and,
for every reward model with scores on TIA2's images, the reward-vs-human protocol with raw
and TextNorm rows. Reads the database; the statistics are workers.stats (pure numpy)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from annotate.models import ContrastivePromptSet, Dataset, HumanLabel, RewardScore
from workers.stats.agreement import fleiss_kappa
from workers.ml.textnorm import ensemble_mean, ensemble_uncertainty
from workers.stats.reward_human import evaluate


class Tia2ReportError(Exception):
    pass


@dataclass(frozen=True)
class Ensemble:
    """SPEC section 2, item 5: R = mean_m p_m ("mean"), or that minus lambda times the
    population variance of the p_m ("uncertainty"), over the TextNorm scores of ``members``:
    each a reward model's name (when it has one TextNorm column) or a whole column name."""

    members: tuple[str, ...]
    method: str = "mean"
    lam: float = 0.0

    def __post_init__(self):
        if len(self.members) < 2:
            raise Tia2ReportError(f"ensemble: needs at least two reward models, not {list(self.members)}")
        if self.method not in ("mean", "uncertainty"):
            raise Tia2ReportError(f"ensemble method: must be mean or uncertainty, not {self.method!r}")
        if self.method == "uncertainty" and not self.lam >= 0:
            raise Tia2ReportError(f"ensemble lambda: must be >= 0, not {self.lam}")

    @property
    def name(self) -> str:
        how = "mean" if self.method == "mean" else f"uncertainty lambda={self.lam:g}"
        return f"ensemble {how} of TextNorm ({', '.join(self.members)})"


def _member_column(columns: dict[str, dict[int, float]], member: str) -> str:
    if member in columns and " textnorm (" in member:
        return member
    found = [name for name in columns if name.startswith(f"{member} textnorm (")]
    if len(found) == 1:
        return found[0]
    if not found:
        raise Tia2ReportError(f"ensemble: {member!r} has no TextNorm scores on TIA2's images")
    raise Tia2ReportError(f"ensemble: {member!r} has {len(found)} TextNorm columns; name one of them whole: "
                          + "; ".join(found))


def _ensemble_column(columns: dict[str, dict[int, float]], ensemble: Ensemble) -> dict[int, float]:
    """The ensemble's score of every image that all its members scored."""
    members = [columns[_member_column(columns, m)] for m in ensemble.members]
    ids = sorted(set.intersection(*(set(m) for m in members)))
    if not ids:
        raise Tia2ReportError(f"ensemble: {', '.join(ensemble.members)} have no image scored by all of them")
    p = np.array([[m[i] for i in ids] for m in members])
    values = ensemble_mean(p) if ensemble.method == "mean" else ensemble_uncertainty(p, lam=ensemble.lam)
    return dict(zip(ids, values.tolist(), strict=True))


def _label_table() -> dict:
    """One row per TIA2 image: ids, prompt, category and its three labels (slots 0-2)."""
    rows = (HumanLabel.objects.filter(image__prompt__dataset__source=Dataset.Source.TIA2, source="tia2")
            .order_by("image__prompt__category", "image__prompt__source_index", "image__source_name", "slot")
            .values_list("image_id", "image__prompt_id", "image__prompt__text", "image__prompt__category",
                         "slot", "value"))
    images: dict[int, list] = {}
    for image_id, prompt_id, text, category, slot, value in rows.iterator(chunk_size=5000):
        entry = images.setdefault(image_id, [prompt_id, text, category, [-1, -1, -1]])
        if slot < 3:
            entry[3][slot] = value
    if not images:
        raise Tia2ReportError("no TIA2 labels in the database: run `python manage.py import_tia2 PATH` first")
    ids = np.fromiter(images, dtype=np.int64, count=len(images))
    values = list(images.values())
    return {"image_ids": ids, "prompt_ids": [v[0] for v in values], "texts": {v[0]: v[1] for v in values},
            "categories": [v[2] for v in values], "labels": np.array([v[3] for v in values], dtype=np.int8)}


def _score_columns() -> dict[str, dict[int, float]]:
    """{column name: {image id: score}} over TIA2's images: a raw column per reward model, and
    a TextNorm column per reward model, prompt-set source and version, and normalisation.

    Rule-based and language-model sets carry one version for a whole run of the generator;
    imported sets carry a version per prompt (a hash of its texts), so their versions are
    told apart by import: a prompt's first imported set is import 1, a re-import with other
    texts import 2, and so on. The version (or import) is in the name only where a reward
    model has TextNorm scores of more than one for the same source and normalisation."""
    # The images' join, not a list of 27,500 ids in the query (a second of building and parsing).
    rows = list(
        RewardScore.objects.filter(image__prompt__dataset__source=Dataset.Source.TIA2)
        .values_list("reward_model__name", "variant", "prompt_set_id", "prompt_set__prompt_id",
                     "prompt_set__source", "prompt_set__version", "normalize", "scale", "temperature",
                     "image_id", "value")
        .iterator(5000)
    )
    import_of = _import_numbers({prompt for _, variant, _, prompt, source, *_ in rows
                                 if variant == RewardScore.Variant.TEXTNORM
                                 and source == ContrastivePromptSet.Source.IMPORTED})
    columns: dict[str, dict[int, float]] = defaultdict(dict)
    # (model, source, normalisation) -> {version key: {image id: score}}
    textnorm: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for model, variant, set_id, _, source, version, normalize, scale, temperature, image_id, value in rows:
        if variant == RewardScore.Variant.RAW:
            columns[f"{model} raw"][image_id] = value
            continue
        knob = f"s={scale:g}" if normalize == RewardScore.Normalize.MINMAX else f"tau={temperature:g}"
        if source == ContrastivePromptSet.Source.IMPORTED:
            version = f"import {import_of[set_id]}"
        textnorm[(model, source, f"{normalize} {knob}")][version][image_id] = value
    for (model, source, normalization), versions in textnorm.items():
        for version, by_image in versions.items():
            sets = f"{source} prompt sets" + (f" {version}" if len(versions) > 1 else "")
            columns[f"{model} textnorm ({sets}, {normalization})"] = by_image
    return dict(sorted(columns.items()))


def _import_numbers(prompt_ids: set[int]) -> dict[int, int]:
    """{imported set id: its number among its prompt's imported sets, oldest first, from 1}."""
    numbers: dict[int, int] = {}
    count: dict[int, int] = defaultdict(int)
    sets = (ContrastivePromptSet.objects
            .filter(prompt_id__in=prompt_ids, source=ContrastivePromptSet.Source.IMPORTED)
            .order_by("prompt_id", "created_at", "id").values_list("id", "prompt_id"))
    for set_id, prompt_id in sets.iterator(5000):
        count[prompt_id] += 1
        numbers[set_id] = count[prompt_id]
    return numbers


NOT_SCORED, PARTLY_SCORED = "not scored", "partly scored"


def _fully_scored(prompt_ids: list, categories: np.ndarray, scored: np.ndarray) -> tuple[np.ndarray, dict]:
    """The images of the prompts whose images all have a score (a prompt's metrics rank all of
    its images: over a subset they would measure something else), and per category the prompts
    left out: {category: {"not scored": n, "partly scored": n}}."""
    per_prompt: dict = defaultdict(list)
    for k, prompt in enumerate(prompt_ids):
        per_prompt[prompt].append(k)
    keep = np.zeros(scored.size, dtype=bool)
    unscored: dict = defaultdict(lambda: defaultdict(int))
    for rows in per_prompt.values():
        got = int(scored[rows].sum())
        if got == len(rows):
            keep[rows] = True
        else:
            unscored[categories[rows[0]]][NOT_SCORED if got == 0 else PARTLY_SCORED] += 1
    return keep, unscored


def _with_unscored(summaries: list[dict], unscored: dict, figures: list[dict]) -> list[dict]:
    """Each category's summary with its unscored prompts among the dropped ones, and a summary
    (nothing kept) for a category none of whose prompts is fully scored."""
    by_category = {c["category"]: c for c in summaries}
    out = []
    for figure in figures:
        category = figure["category"]
        summary = by_category.get(category) or {
            "category": category, "n_prompts": 0, "n_kept": 0, "n_dropped": 0, "dropped": {}, "n_images": 0,
            "n_positive_images": 0, "means": {}, "n_undefined": {}}
        extra = {reason: n for reason, n in unscored.get(category, {}).items() if n}
        summary = {**summary, "dropped": {**summary["dropped"], **extra},
                   "n_dropped": summary["n_dropped"] + sum(extra.values()),
                   "n_prompts": summary["n_prompts"] + sum(extra.values())}
        out.append(summary)
    return out


def tia2_report(*, per_prompt: bool = False, ensembles: list[Ensemble] = ()) -> dict:
    """The report; ``ensembles`` adds a row per ensemble of reward models' TextNorm scores."""
    table = _label_table()
    labels, categories = table["labels"], np.array(table["categories"])
    figures = []
    for category in dict.fromkeys(table["categories"]):
        mask = categories == category
        cat_labels = labels[mask]
        positive = (cat_labels == 1).sum(axis=1) >= 2
        ones = (cat_labels == 1).sum(axis=1)
        counts = np.column_stack([3 - ones, ones])  # -1 counts as 0 (SPEC.md)
        kappa = fleiss_kappa(counts)
        figures.append({
            "category": category, "prompts": len(set(np.array(table["prompt_ids"])[mask].tolist())),
            "images": int(mask.sum()), "labels_missing": int((cat_labels == -1).sum()),
            "majority_positive_images": int(positive.sum()), "majority_positive_rate": float(positive.mean()),
            "fleiss_kappa": kappa.to_dict()["value"],
        })
    models = []
    columns = _score_columns()
    for ensemble in ensembles:
        columns[ensemble.name] = _ensemble_column(columns, ensemble)
    for name, by_image in columns.items():
        scored = np.array([i in by_image for i in table["image_ids"].tolist()])
        keep, unscored = _fully_scored(table["prompt_ids"], categories, scored)
        ids = table["image_ids"][keep]
        prompts = [p for p, k in zip(table["prompt_ids"], keep) if k]
        result = evaluate(prompts, categories[keep].tolist(), labels[keep],
                          {name: np.array([by_image[i] for i in ids.tolist()])}, tiebreak=ids)
        out = result.to_dict(per_prompt=per_prompt)
        out["categories"] = _with_unscored(out["categories"], unscored, figures)
        out["score"] = name
        out["images_scored"] = int(scored.sum())
        out["images_total"] = int(scored.size)
        if per_prompt:
            for prompt in out["prompts"]:
                prompt["text"] = table["texts"][prompt["prompt"]]
        models.append(out)
    return {"categories": figures, "reward_models": models,
            "protocol": "SPEC.md section 1: positive = at least 2 of 3 labels equal 1; per prompt AUROC "
                        "(ties one half), AUPRC, AP@5/10/25, Spearman and Kendall tau-b against the number "
                        "of positive labels; prompts whose images are all positive or all negative are "
                        "dropped, and so are prompts not all of whose images have the score ('not scored', "
                        "'partly scored'); means over kept prompts. Score ties are ordered by image id."}
