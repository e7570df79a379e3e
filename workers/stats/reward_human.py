"""Reward model vs. human labels: SPEC.md section 1, "Evaluation protocol".

Pure numpy/scipy; no Django, no torch.

Protocol
--------
1. An image is positive when at least 2 of its 3 labels equal 1 (-1, "no label recorded",
   counts as not 1). ``min_positive`` generalises the 2.
2. Per prompt (grouped by (category, prompt)), for each score column:
   * AUROC: P(score of a positive > score of a negative) + 1/2 P(tie), i.e. the
     Mann-Whitney U of the positives over (positives x negatives), with average ranks.
   * AUPRC: average precision over all the prompt's images, computed over distinct score
     thresholds (tied scores form one threshold step): AP = sum_t (R_t - R_{t-1}) P_t.
     This is tie-invariant (the scikit-learn ``average_precision_score`` definition); with no
     tied scores it equals AP@n of the positional definition below.
   * AP@k, k in (5, 10, 25): over the top-k images by score,
     (1 / positives in the top k) * sum over positive positions i <= k of precision@i;
     0 when the top k holds no positive. k larger than the prompt's image count means all
     images. **Score ties** are ordered by ``tiebreak`` ascending (default: input order),
     i.e. images are sorted by (score descending, tiebreak ascending), a stable total order.
   * Spearman and Kendall tau-b (``scipy.stats``) between the score and the number of labels
     equal to 1. NaN when the score is constant within the prompt (rank correlation
     undefined); such prompts are counted in ``n_undefined`` and left out of that metric's
     mean.
3. Prompts whose images are all positive or all negative are dropped (AUROC undefined),
   with reasons ``"all images positive"`` / ``"all images negative"``.
4. Per category: the mean of each metric over kept prompts, the kept count and the dropped
   counts by reason.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

AP_KS = (5, 10, 25)
METRICS = ("auroc", "auprc", "ap@5", "ap@10", "ap@25", "spearman", "kendall")
DROP_ALL_POSITIVE = "all images positive"
DROP_ALL_NEGATIVE = "all images negative"


# --------------------------------------------------------------------------- metrics


def positives_from_labels(labels, min_positive: int = 2) -> np.ndarray:
    """(n x L) labels in {1, 0, -1} -> bool positive (at least ``min_positive`` labels == 1)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError("labels must be 2-D (images x label slots)")
    return (labels == 1).sum(axis=1) >= min_positive


def auroc(scores, positive) -> float:
    """AUROC with ties counting one half. NaN unless both classes are present."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(scores)  # average ranks for ties
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def rank_order(scores, tiebreak=None) -> np.ndarray:
    """Indices sorted by score descending, ties by ``tiebreak`` ascending (default: index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.any(np.isnan(scores)):
        raise ValueError("scores must not be NaN")
    if tiebreak is None:
        tiebreak = np.arange(scores.size)
    return np.lexsort((np.asarray(tiebreak), -scores))


def ap_at_k(scores, positive, k: int, tiebreak=None) -> float:
    """AP@k: (1/positives in top k) * sum_{positive i <= k} precision@i; 0 if none in top k."""
    if k < 1:
        raise ValueError("k must be >= 1")
    positive = np.asarray(positive, dtype=bool)
    rel = positive[rank_order(scores, tiebreak)][:k]
    hits = int(rel.sum())
    if hits == 0:
        return 0.0
    precision = np.cumsum(rel) / np.arange(1, rel.size + 1)
    return float(precision[rel].sum() / hits)


def average_precision(scores, positive) -> float:
    """AUPRC as average precision over distinct score thresholds (tie-invariant)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    s, rel = scores[order], positive[order]
    # last index of each run of equal scores = one threshold
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(rel)[last]
    seen = last + 1
    precision = tp / seen
    recall_step = np.diff(np.r_[0, tp]) / n_pos
    return float((recall_step * precision).sum())


def _rank_correlations(scores: np.ndarray, n_ones: np.ndarray) -> tuple[float, float]:
    if np.all(scores == scores[0]) or np.all(n_ones == n_ones[0]):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(scores, n_ones).statistic
        tau = stats.kendalltau(scores, n_ones, variant="b").statistic
    return float(rho), float(tau)


def prompt_metrics(scores, labels, tiebreak=None, min_positive: int = 2,
                   ks: Sequence[int] = AP_KS) -> dict:
    """All metrics for one prompt and one score vector (the prompt must hold both classes)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    positive = positives_from_labels(labels, min_positive)
    n_ones = (labels == 1).sum(axis=1)
    out = {"auroc": auroc(scores, positive), "auprc": average_precision(scores, positive)}
    for k in ks:
        out[f"ap@{k}"] = ap_at_k(scores, positive, k, tiebreak)
    out["spearman"], out["kendall"] = _rank_correlations(scores, n_ones)
    return out


# --------------------------------------------------------------------------- tables


@dataclass
class PromptResult:
    category: Hashable
    prompt: Hashable
    n_images: int
    n_positive: int
    drop_reason: str | None  # None when kept
    metrics: dict = field(default_factory=dict)  # {score column: {metric: value}}; empty if dropped

    @property
    def kept(self) -> bool:
        return self.drop_reason is None

    @property
    def positive_rate(self) -> float:
        return self.n_positive / self.n_images

    def to_dict(self) -> dict:
        return {
            "category": self.category, "prompt": self.prompt, "n_images": self.n_images,
            "n_positive": self.n_positive, "positive_rate": self.positive_rate, "kept": self.kept,
            "drop_reason": self.drop_reason,
            "metrics": {m: {k: _json_float(v) for k, v in d.items()} for m, d in self.metrics.items()},
        }


@dataclass
class CategorySummary:
    category: Hashable
    n_prompts: int
    n_kept: int
    n_images: int
    n_positive_images: int
    dropped: dict  # {reason: count}
    means: dict  # {score column: {metric: mean over kept prompts where defined}}
    n_undefined: dict  # {score column: {metric: kept prompts where the metric is NaN}}

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {
            "category": self.category, "n_prompts": self.n_prompts, "n_kept": self.n_kept,
            "n_dropped": self.n_dropped, "dropped": dict(self.dropped), "n_images": self.n_images,
            "n_positive_images": self.n_positive_images,
            "means": {m: {k: _json_float(v) for k, v in d.items()} for m, d in self.means.items()},
            "n_undefined": self.n_undefined,
        }


@dataclass
class RewardHumanReport:
    score_names: list
    prompts: list  # [PromptResult], categories in first-seen order, prompts in first-seen order
    categories: dict  # {category: CategorySummary}

    def to_dict(self, per_prompt: bool = False) -> dict:
        out = {"score_names": list(self.score_names),
               "categories": [c.to_dict() for c in self.categories.values()]}
        if per_prompt:
            out["prompts"] = [p.to_dict() for p in self.prompts]
        return out


def _json_float(x):
    return None if x is None or not math.isfinite(x) else float(x)


def _score_columns(scores, n: int) -> tuple[list, np.ndarray]:
    if isinstance(scores, Mapping):
        names = list(scores)
        mat = np.column_stack([np.asarray(scores[k], dtype=np.float64) for k in names]) if names \
            else np.empty((n, 0))
    else:
        mat = np.asarray(scores, dtype=np.float64)
        if mat.ndim == 1:
            mat = mat[:, None]
        names = list(range(mat.shape[1]))
    if mat.shape[0] != n:
        raise ValueError("scores must have one row per image")
    if np.any(np.isnan(mat)):
        raise ValueError("scores must not be NaN (score every image, or leave the image out)")
    return names, mat


def _group(keys: Sequence[Hashable]) -> dict:
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups


def evaluate(prompts: Sequence[Hashable], categories: Sequence[Hashable], labels, scores,
             tiebreak=None, min_positive: int = 2, ks: Sequence[int] = AP_KS) -> RewardHumanReport:
    """Run the SPEC protocol.

    prompts, categories: one entry per image. labels: (n x 3) in {1, 0, -1}.
    scores: a mapping {name: (n,) array} or an (n x m) / (n,) array; any number of reward
    models or variants (raw, TextNorm, ...) as columns. tiebreak: optional (n,) sortable keys
    ordering tied scores for AP@k (ascending; default input order).
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if len(prompts) != n or len(categories) != n:
        raise ValueError("prompts, categories and labels must have one entry per image")
    names, mat = _score_columns(scores, n)
    tb = None if tiebreak is None else np.asarray(tiebreak)
    if tb is not None and tb.shape[0] != n:
        raise ValueError("tiebreak must have one entry per image")
    positive = positives_from_labels(labels, min_positive)
    metric_names = ["auroc", "auprc", *[f"ap@{k}" for k in ks], "spearman", "kendall"]

    results: list[PromptResult] = []
    for (cat, prompt), idx in _group(list(zip(categories, prompts))).items():
        idx = np.asarray(idx)
        pos = positive[idx]
        n_pos = int(pos.sum())
        reason = DROP_ALL_POSITIVE if n_pos == idx.size else DROP_ALL_NEGATIVE if n_pos == 0 else None
        res = PromptResult(cat, prompt, int(idx.size), n_pos, reason)
        if reason is None:
            sub_tb = None if tb is None else tb[idx]
            for j, name in enumerate(names):
                res.metrics[name] = prompt_metrics(mat[idx, j], labels[idx], sub_tb, min_positive, ks)
        results.append(res)

    summaries: dict = {}
    for cat, members in _group([r.category for r in results]).items():
        rs = [results[i] for i in members]
        kept = [r for r in rs if r.kept]
        dropped: dict = {}
        for r in rs:
            if not r.kept:
                dropped[r.drop_reason] = dropped.get(r.drop_reason, 0) + 1
        means, undefined = {}, {}
        for name in names:
            means[name], undefined[name] = {}, {}
            for m in metric_names:
                vals = np.array([r.metrics[name][m] for r in kept], dtype=np.float64)
                ok = ~np.isnan(vals)
                means[name][m] = float(vals[ok].mean()) if ok.any() else math.nan
                undefined[name][m] = int((~ok).sum())
        summaries[cat] = CategorySummary(
            category=cat, n_prompts=len(rs), n_kept=len(kept),
            n_images=sum(r.n_images for r in rs), n_positive_images=sum(r.n_positive for r in rs),
            dropped=dropped, means=means, n_undefined=undefined,
        )
    return RewardHumanReport(score_names=names, prompts=results, categories=summaries)
