"""The TIA2 report: the human labels' figures per category (SPEC.md section 1's table) and,
for every reward model with scores on TIA2's images, the reward-vs-human protocol with raw
and TextNorm rows. Reads the database; the statistics are workers.stats (pure numpy)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from annotate.models import Dataset, HumanLabel, RewardScore
from workers.stats.agreement import fleiss_kappa
from workers.stats.reward_human import evaluate


class Tia2ReportError(Exception):
    pass


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


def _score_columns(image_ids: np.ndarray) -> dict[str, dict[int, float]]:
    """{column name: {image id: score}}: a raw column per reward model, and a TextNorm
    column per reward model and parameter set (prompt-set source, normalisation: each prompt's
    set has a version of its own)."""
    columns: dict[str, dict[int, float]] = defaultdict(dict)
    scores = (RewardScore.objects.filter(image_id__in=image_ids.tolist())
              .values_list("reward_model__name", "variant", "prompt_set__source", "normalize", "scale",
                           "temperature", "image_id", "value"))
    for model, variant, source, normalize, scale, temperature, image_id, value in scores.iterator(5000):
        if variant == RewardScore.Variant.RAW:
            name = f"{model} raw"
        else:
            knob = f"s={scale:g}" if normalize == RewardScore.Normalize.MINMAX else f"tau={temperature:g}"
            name = f"{model} textnorm ({source} prompt sets, {normalize} {knob})"
        columns[name][image_id] = value
    return dict(sorted(columns.items()))


def tia2_report(*, per_prompt: bool = False) -> dict:
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
    for name, by_image in _score_columns(table["image_ids"]).items():
        keep = np.array([i in by_image for i in table["image_ids"].tolist()])
        ids = table["image_ids"][keep]
        prompts = [p for p, k in zip(table["prompt_ids"], keep) if k]
        result = evaluate(prompts, categories[keep].tolist(), labels[keep],
                          {name: np.array([by_image[i] for i in ids.tolist()])}, tiebreak=ids)
        out = result.to_dict(per_prompt=per_prompt)
        out["score"] = name
        out["images_scored"] = int(keep.sum())
        if per_prompt:
            for prompt in out["prompts"]:
                prompt["text"] = table["texts"][prompt["prompt"]]
        models.append(out)
    return {"categories": figures, "reward_models": models,
            "protocol": "SPEC.md section 1: positive = at least 2 of 3 labels equal 1; per prompt AUROC "
                        "(ties one half), AUPRC, AP@5/10/25, Spearman and Kendall tau-b against the number "
                        "of positive labels; prompts whose images are all positive or all negative are "
                        "dropped; means over kept prompts. Score ties are ordered by image id."}
