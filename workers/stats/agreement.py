"""Inter-annotator agreement (SPEC.md section 3, "Agreement").

Pure numpy; no Django, no torch.

Data layouts
------------
* ``counts``: an (items x categories) matrix; ``counts[i, c]`` is how many ratings item i
  received in category c (Fleiss' kappa, Krippendorff's alpha).
* ``codes``: an (annotators x items) integer matrix of category codes ``0..C-1`` with
  ``MISSING`` (-1) where an annotator did not rate an item. Build it from long-format
  judgments with :func:`rating_matrix`.

Conventions (explicit, so reports can state them)
-------------------------------------------------
* Items with fewer than 2 ratings are left out of every agreement statistic (they hold no
  pair of ratings).
* Chance-corrected coefficients are **undefined** when the expected (chance) disagreement is
  zero, i.e. every rating used falls in one category. They are then returned as ``NaN``
  with a ``reason``; they are never silently set to 1.0. The same holds when there are no
  usable items or pairs. Raw observed agreement is still reported where it exists.
* Fleiss' kappa with unequal numbers of raters per item uses the usual generalisation:
  per-item agreement ``P_i = sum_c n_ic (n_ic - 1) / (n_i (n_i - 1))``, ``P_bar`` is the
  unweighted mean of ``P_i`` over items, category proportions ``p_c`` are pooled over all
  ratings (``sum_i n_ic / sum_i n_i``) and ``P_e = sum_c p_c^2``. With equal ``n_i`` this
  is exactly Fleiss (1971).
* Leave-one-out majority: for annotator a on item i, the majority label among the *other*
  annotators' ratings of i. If the top count is shared by two or more labels, the item is a
  **tie**: it is left out of a's agreement rate and counted in ``n_ties``. Items with fewer
  than ``min_others`` other ratings are left out and counted in ``n_too_few_others``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

MISSING = -1

UNDEFINED_ONE_CATEGORY = "all ratings fall in one category: chance agreement is 1, coefficient undefined"
UNDEFINED_NO_ITEMS = "no item with at least 2 ratings"
UNDEFINED_NO_SHARED = "no item rated by both annotators"


@dataclass(frozen=True)
class Coefficient:
    """A chance-corrected agreement coefficient. ``value`` is NaN when undefined (see reason)."""

    value: float
    n_items: int  # items that entered the computation
    n_ratings: int  # ratings that entered the computation
    observed_agreement: float  # raw agreement (NaN when there are no pairs)
    expected_agreement: float  # chance agreement (NaN when there are no pairs)
    reason: str | None = None  # why value is NaN; None when defined

    @property
    def defined(self) -> bool:
        return self.reason is None

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict:
        return {
            "value": _json_float(self.value),
            "n_items": self.n_items,
            "n_ratings": self.n_ratings,
            "observed_agreement": _json_float(self.observed_agreement),
            "expected_agreement": _json_float(self.expected_agreement),
            "reason": self.reason,
        }


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class RatingMatrix:
    codes: np.ndarray  # (annotators x items) int, MISSING where not rated
    annotators: list
    items: list
    categories: list

    def counts(self) -> np.ndarray:
        return counts_from_codes(self.codes, len(self.categories))


def rating_matrix(
    items: Sequence[Hashable],
    annotators: Sequence[Hashable],
    labels: Sequence[Hashable],
    categories: Sequence[Hashable] | None = None,
) -> RatingMatrix:
    """Long-format judgments (one row per rating) -> annotators x items code matrix.

    ``categories`` fixes the category order (and lets categories that never occur count);
    by default the sorted distinct labels. An annotator rating the same item twice is an
    error (deduplicate upstream, e.g. keep the latest judgment).
    """
    if not (len(items) == len(annotators) == len(labels)):
        raise ValueError("items, annotators and labels must have the same length")
    if categories is None:
        categories = sorted(set(labels), key=lambda v: (str(type(v)), v))
    cat_index = {c: k for k, c in enumerate(categories)}
    item_list, item_pos = _first_seen(items)
    ann_list, ann_pos = _first_seen(annotators)
    label_list, label_pos = _first_seen(labels)
    unknown = [lab for lab in label_list if lab not in cat_index]
    if unknown:
        raise ValueError(f"label {unknown[0]!r} is not among the categories {list(categories)!r}")
    code_of = np.array([cat_index[lab] for lab in label_list], dtype=np.int64)
    cells = ann_pos * len(item_list) + item_pos
    seen, first, times = np.unique(cells, return_index=True, return_counts=True)
    if (times > 1).any():
        k = int(first[np.argmax(times > 1)])
        raise ValueError(f"annotator {annotators[k]!r} rated item {items[k]!r} more than once")
    codes = np.full((len(ann_list), len(item_list)), MISSING, dtype=np.int64)
    codes[ann_pos, item_pos] = code_of[label_pos]
    return RatingMatrix(codes=codes, annotators=ann_list, items=item_list, categories=list(categories))


def _first_seen(values: Sequence[Hashable]) -> tuple[list, np.ndarray]:
    """The distinct values in first-seen order, and each value's position among them."""
    index: dict = {}
    positions = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return list(index), positions


def counts_from_codes(codes: np.ndarray, n_categories: int | None = None) -> np.ndarray:
    """(annotators x items) codes -> (items x categories) counts."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError("codes must be 2-D (annotators x items)")
    if n_categories is None:
        n_categories = int(codes.max()) + 1 if codes.size and codes.max() >= 0 else 0
    n_items = codes.shape[1]
    rated = codes != MISSING
    if np.any(codes[rated] >= n_categories) or np.any(codes < MISSING):
        raise ValueError("codes out of range")
    item_idx = np.broadcast_to(np.arange(n_items), codes.shape)[rated]
    flat = item_idx * n_categories + codes[rated]
    return np.bincount(flat, minlength=n_items * n_categories).reshape(n_items, n_categories)


def _check_counts(counts) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError("counts must be 2-D (items x categories)")
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative")
    if not np.all(np.equal(np.mod(counts, 1), 0)):
        raise ValueError("counts must be whole numbers")
    return counts.astype(np.float64)


# --------------------------------------------------------------------------- Fleiss


def fleiss_kappa(counts) -> Coefficient:
    """Fleiss' kappa from an (items x categories) count matrix.

    Items with fewer than 2 ratings are dropped; unequal numbers of raters per item follow
    the generalisation stated in the module docstring.
    """
    counts = _check_counts(counts)
    n_i = counts.sum(axis=1)
    keep = n_i >= 2
    counts, n_i = counts[keep], n_i[keep]
    n_items = int(counts.shape[0])
    n_ratings = int(n_i.sum())
    if n_items == 0:
        return Coefficient(math.nan, 0, 0, math.nan, math.nan, UNDEFINED_NO_ITEMS)
    p_i = (counts * (counts - 1)).sum(axis=1) / (n_i * (n_i - 1))
    p_bar = float(p_i.mean())
    p_c = counts.sum(axis=0) / n_ratings
    p_e = float((p_c**2).sum())
    if math.isclose(p_e, 1.0, rel_tol=0, abs_tol=1e-12):
        return Coefficient(math.nan, n_items, n_ratings, p_bar, p_e, UNDEFINED_ONE_CATEGORY)
    return Coefficient((p_bar - p_e) / (1 - p_e), n_items, n_ratings, p_bar, p_e)


# --------------------------------------------------------------------------- Krippendorff


def coincidence_matrix(counts) -> np.ndarray:
    """Krippendorff's coincidence matrix o_ck from (items x categories) counts.

    o_ck = sum_u (n_uc n_uk - [c == k] n_uc) / (m_u - 1) over units with m_u >= 2 values.
    """
    counts = _check_counts(counts)
    m_u = counts.sum(axis=1)
    counts = counts[m_u >= 2]
    w = 1.0 / (counts.sum(axis=1) - 1.0)
    return counts.T @ (counts * w[:, None]) - np.diag((counts * w[:, None]).sum(axis=0))


def krippendorff_alpha_nominal_counts(counts) -> Coefficient:
    """Nominal Krippendorff's alpha from (items x categories) counts (missing = not counted)."""
    counts = _check_counts(counts)
    m_u = counts.sum(axis=1)
    pairable = m_u >= 2
    n_items = int(pairable.sum())
    if n_items == 0:
        return Coefficient(math.nan, 0, 0, math.nan, math.nan, UNDEFINED_NO_ITEMS)
    o = coincidence_matrix(counts)
    n_c = o.sum(axis=1)
    n = float(n_c.sum())  # = number of pairable values
    observed_agree = float(np.trace(o)) / n
    expected_agree = float((n_c * (n_c - 1)).sum()) / (n * (n - 1))
    d_o = 1.0 - observed_agree
    d_e = 1.0 - expected_agree
    if math.isclose(d_e, 0.0, abs_tol=1e-12):
        return Coefficient(math.nan, n_items, int(round(n)), observed_agree, expected_agree,
                           UNDEFINED_ONE_CATEGORY)
    return Coefficient(1.0 - d_o / d_e, n_items, int(round(n)), observed_agree, expected_agree)


def krippendorff_alpha_nominal(codes) -> Coefficient:
    """Nominal Krippendorff's alpha from an (annotators x items) code matrix.

    ``MISSING`` (-1) marks a missing value; NaN in a float matrix is accepted as missing
    too (the other values must then be whole numbers >= 0).
    """
    codes = _codes(codes)
    return krippendorff_alpha_nominal_counts(counts_from_codes(codes))


def _codes(codes) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.dtype.kind == "f":
        missing = np.isnan(arr)
        arr = np.where(missing, MISSING, arr)
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError("codes must be whole numbers")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- Cohen


def cohen_kappa(a, b, n_categories: int | None = None) -> Coefficient:
    """Cohen's kappa between two annotators on the items both rated.

    ``a`` and ``b`` are code vectors of equal length with ``MISSING`` (-1) or NaN where an
    annotator did not rate the item.
    """
    a = _codes(np.asarray(a)).ravel()
    b = _codes(np.asarray(b)).ravel()
    if a.shape != b.shape:
        raise ValueError("a and b must have the same length")
    both = (a != MISSING) & (b != MISSING)
    a, b = a[both], b[both]
    n = int(a.size)
    if n == 0:
        return Coefficient(math.nan, 0, 0, math.nan, math.nan, UNDEFINED_NO_SHARED)
    if n_categories is None:
        n_categories = int(max(a.max(), b.max())) + 1
    table = np.bincount(a * n_categories + b, minlength=n_categories**2).reshape(n_categories, n_categories)
    p_o = float(np.trace(table)) / n
    p_e = float((table.sum(axis=1) * table.sum(axis=0)).sum()) / n**2
    if math.isclose(p_e, 1.0, rel_tol=0, abs_tol=1e-12):
        return Coefficient(math.nan, n, 2 * n, p_o, p_e, UNDEFINED_ONE_CATEGORY)
    return Coefficient((p_o - p_e) / (1 - p_e), n, 2 * n, p_o, p_e)


def pairwise_cohen_kappa(codes, annotators: Sequence[Hashable] | None = None) -> dict:
    """Cohen's kappa for every pair of annotators: {(annotator_a, annotator_b): Coefficient}.

    Pairs are ordered as the annotators are listed (a before b). Pairs with no shared item
    are included with value NaN and reason UNDEFINED_NO_SHARED. All pairs' contingency
    tables come from sparse products of per-category indicator matrices (one per pair of
    categories), never a loop over pairs and items: 200 annotators over 90,000 items take
    well under a second.
    """
    from scipy import sparse

    codes = _codes(codes)
    n_ann = codes.shape[0]
    if annotators is None:
        annotators = list(range(n_ann))
    n_cat = int(codes.max()) + 1 if codes.size and codes.max() >= 0 else 1
    rows, cols = np.nonzero(codes != MISSING)
    values = codes[rows, cols]
    indicator = [sparse.csr_matrix((np.ones(int((values == c).sum())), (rows[values == c], cols[values == c])),
                                   shape=codes.shape) for c in range(n_cat)]
    # table[c1, c2][x, y]: items both rated where x said c1 and y said c2
    table = np.stack([np.stack([(indicator[c1] @ indicator[c2].T).toarray() for c2 in range(n_cat)])
                      for c1 in range(n_cat)])
    xs, ys = np.triu_indices(n_ann, k=1)
    t = table[:, :, xs, ys]  # (cat, cat, pairs)
    n = t.sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_o = np.trace(t) / n
        p_e = (t.sum(axis=1) * t.sum(axis=0)).sum(axis=0) / n**2
    out = {}
    for k, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
        nk = int(n[k])
        if nk == 0:
            coef = Coefficient(math.nan, 0, 0, math.nan, math.nan, UNDEFINED_NO_SHARED)
        elif math.isclose(p_e[k], 1.0, rel_tol=0, abs_tol=1e-12):
            coef = Coefficient(math.nan, nk, 2 * nk, float(p_o[k]), float(p_e[k]), UNDEFINED_ONE_CATEGORY)
        else:
            coef = Coefficient(float((p_o[k] - p_e[k]) / (1 - p_e[k])), nk, 2 * nk, float(p_o[k]), float(p_e[k]))
        out[(annotators[x], annotators[y])] = coef
    return out


# --------------------------------------------------------------------------- leave-one-out


@dataclass(frozen=True)
class AnnotatorAgreement:
    annotator: Hashable
    n_rated: int  # items the annotator rated
    n_compared: int  # items with a unique leave-one-out majority
    n_agree: int
    n_ties: int  # items where the other annotators' majority was tied (left out)
    n_too_few_others: int  # items with fewer than min_others other ratings (left out)

    @property
    def rate(self) -> float:
        return self.n_agree / self.n_compared if self.n_compared else math.nan

    def to_dict(self) -> dict:
        return {
            "annotator": self.annotator, "n_rated": self.n_rated, "n_compared": self.n_compared,
            "n_agree": self.n_agree, "n_ties": self.n_ties, "n_too_few_others": self.n_too_few_others,
            "rate": _json_float(self.rate),
        }


def leave_one_out_majority(codes, annotators: Sequence[Hashable] | None = None,
                           min_others: int = 1) -> list[AnnotatorAgreement]:
    """Each annotator's agreement with the majority of the *other* annotators, per item.

    Ties in the others' majority are left out (counted in ``n_ties``); see module docstring.
    """
    if min_others < 1:
        raise ValueError("min_others must be >= 1")
    codes = _codes(codes)
    n_ann = codes.shape[0]
    if annotators is None:
        annotators = list(range(n_ann))
    n_cat = int(codes.max()) + 1 if codes.size and codes.max() >= 0 else 1
    counts = counts_from_codes(codes, n_cat)  # items x categories
    # One row per rating, all at once: the other annotators' counts on that rating's item.
    rater, item = np.nonzero(codes != MISSING)
    own = codes[rater, item]
    others = counts[item]
    others[np.arange(own.size), own] -= 1
    enough = others.sum(axis=1) >= min_others
    top = others.max(axis=1)
    n_top = (others == top[:, None]).sum(axis=1)
    unique = enough & (n_top == 1)
    agree = unique & (others.argmax(axis=1) == own)

    def per_annotator(mask):
        return np.bincount(rater[mask], minlength=n_ann)

    rated, compared, agreed = per_annotator(np.ones(own.size, bool)), per_annotator(unique), per_annotator(agree)
    ties, too_few = per_annotator(enough & (n_top > 1)), per_annotator(~enough)
    return [AnnotatorAgreement(annotator=annotators[a], n_rated=int(rated[a]), n_compared=int(compared[a]),
                               n_agree=int(agreed[a]), n_ties=int(ties[a]), n_too_few_others=int(too_few[a]))
            for a in range(n_ann)]


# --------------------------------------------------------------------------- gold


@dataclass(frozen=True)
class GoldAccuracy:
    annotator: Hashable
    n_gold: int  # gold items the annotator answered
    n_correct: int

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_gold if self.n_gold else math.nan

    def to_dict(self) -> dict:
        return {"annotator": self.annotator, "n_gold": self.n_gold, "n_correct": self.n_correct,
                "accuracy": _json_float(self.accuracy)}


def gold_accuracy(items: Iterable[Hashable], annotators: Iterable[Hashable], labels: Iterable[Hashable],
                  gold: Mapping[Hashable, Hashable | frozenset | set]) -> dict:
    """Per-annotator accuracy on gold items: {annotator: GoldAccuracy}.

    ``gold`` maps item -> expected label, or -> a set of accepted labels. Judgments on
    non-gold items are ignored; annotators with no gold judgment are absent.
    """
    n_gold: dict = {}
    n_correct: dict = {}
    for it, an, lab in zip(items, annotators, labels):
        if it not in gold:
            continue
        expected = gold[it]
        ok = lab in expected if isinstance(expected, (set, frozenset)) else lab == expected
        n_gold[an] = n_gold.get(an, 0) + 1
        n_correct[an] = n_correct.get(an, 0) + int(ok)
    return {an: GoldAccuracy(an, n_gold[an], n_correct[an]) for an in n_gold}


@dataclass
class AgreementReport:
    fleiss: Coefficient
    krippendorff: Coefficient
    cohen: dict = field(default_factory=dict)
    loo_majority: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "fleiss_kappa": self.fleiss.to_dict(),
            "krippendorff_alpha_nominal": self.krippendorff.to_dict(),
            "cohen_kappa": [{"a": a, "b": b, **c.to_dict()} for (a, b), c in self.cohen.items()],
            "loo_majority": [x.to_dict() for x in self.loo_majority],
        }


def agreement_report(matrix: RatingMatrix, min_others: int = 1) -> AgreementReport:
    """All annotator-level agreement statistics for one rating matrix."""
    counts = matrix.counts()
    return AgreementReport(
        fleiss=fleiss_kappa(counts),
        krippendorff=krippendorff_alpha_nominal_counts(counts),
        cohen=pairwise_cohen_kappa(matrix.codes, matrix.annotators),
        loo_majority=leave_one_out_majority(matrix.codes, matrix.annotators, min_others),
    )
