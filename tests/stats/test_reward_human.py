import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from workers.stats.reward_human import (
    DROP_ALL_NEGATIVE,
    DROP_ALL_POSITIVE,
    ap_at_k,
    auroc,
    average_precision,
    evaluate,
    positives_from_labels,
    prompt_metrics,
)

REPO = Path(__file__).resolve().parents[2]


def test_positive_rule_minus_one_is_not_one():
    labels = [[1, 1, 0], [1, 1, -1], [1, -1, -1], [1, 0, 0], [1, 1, 1], [-1, -1, -1]]
    assert positives_from_labels(labels).tolist() == [True, True, False, False, True, False]


# ---------------------------------------------------------------- AUROC


@pytest.mark.parametrize("seed", range(8))
def test_auroc_equals_mann_whitney_u_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = rng.integers(4, 60)
    scores = rng.integers(0, 5, n).astype(float)  # many ties
    positive = rng.random(n) < 0.4
    positive[0], positive[1] = True, False
    u = stats.mannwhitneyu(scores[positive], scores[~positive]).statistic
    assert auroc(scores, positive) == pytest.approx(u / (positive.sum() * (~positive).sum()))
    # and the pairwise definition: P(pos > neg) + 1/2 P(tie)
    diff = scores[positive][:, None] - scores[~positive][None, :]
    assert auroc(scores, positive) == pytest.approx(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auroc_undefined_with_one_class():
    assert math.isnan(auroc([1, 2, 3], [True, True, True]))


# ---------------------------------------------------------------- AP@k, AUPRC


def test_ap_at_k_and_auprc_hand_computed():
    scores = [10, 9, 8, 7, 6, 5]
    positive = [1, 0, 1, 0, 0, 1]
    # top 5: hits at 1 and 3 -> (1 + 2/3) / 2
    assert ap_at_k(scores, positive, 5) == pytest.approx(5 / 6)
    # k > n: all six: (1 + 2/3 + 3/6) / 3
    assert ap_at_k(scores, positive, 10) == pytest.approx(13 / 18)
    assert ap_at_k(scores, positive, 2) == pytest.approx(1.0)
    assert average_precision(scores, positive) == pytest.approx(13 / 18)
    # no positive in the top k -> 0
    assert ap_at_k([3, 2, 1], [0, 0, 1], 2) == 0.0
    # positions are by score, not input order
    perm = [3, 0, 5, 2, 4, 1]
    shuffled_scores = [scores[i] for i in perm]
    shuffled_positive = [positive[i] for i in perm]
    assert ap_at_k(shuffled_scores, shuffled_positive, 5) == pytest.approx(5 / 6)
    assert average_precision(shuffled_scores, shuffled_positive) == pytest.approx(13 / 18)


def test_ap_at_k_tie_order_is_by_tiebreak():
    scores, positive = [1, 1, 0], [0, 1, 0]
    assert ap_at_k(scores, positive, 1) == 0.0  # default: input order among ties
    assert ap_at_k(scores, positive, 1, tiebreak=[1, 0, 2]) == 1.0


def test_auprc_with_ties_is_threshold_based():
    # thresholds 3: P=1, R=.5; 2: P=2/3, R=1 -> .5 * 1 + .5 * 2/3
    assert average_precision([3, 2, 2, 1], [1, 1, 0, 0]) == pytest.approx(5 / 6)
    assert average_precision([2, 2, 2, 1], [0, 1, 0, 0]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(6))
def test_auprc_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 50
    positive = rng.random(n) < 0.4
    positive[0] = True
    for scores in (rng.random(n), rng.integers(0, 6, n).astype(float)):
        # mean over positives of precision among images scoring >= that positive's score
        brute = np.mean([(positive & (scores >= s)).sum() / (scores >= s).sum() for s in scores[positive]])
        assert average_precision(scores, positive) == pytest.approx(brute)
    distinct = rng.permutation(n).astype(float)  # no ties: AUPRC = positional AP over all images
    assert average_precision(distinct, positive) == pytest.approx(ap_at_k(distinct, positive, n))


def test_rank_correlations_are_scipy_on_number_of_ones():
    rng = np.random.default_rng(3)
    labels = rng.choice([1, 0, -1], size=(50, 3), p=[0.5, 0.4, 0.1])
    scores = rng.random(50)
    m = prompt_metrics(scores, labels)
    ones = (labels == 1).sum(axis=1)
    assert m["spearman"] == pytest.approx(stats.spearmanr(scores, ones).statistic)
    assert m["kendall"] == pytest.approx(stats.kendalltau(scores, ones, variant="b").statistic)


# ---------------------------------------------------------------- whole protocol


def _synthetic(rng, n_prompts=6, per_prompt=20):
    prompts, cats, labels = [], [], []
    for p in range(n_prompts):
        for _ in range(per_prompt):
            prompts.append(f"p{p}")
            cats.append("a" if p < 3 else "b")
            labels.append(rng.choice([1, 0, -1], 3, p=[0.5, 0.45, 0.05]))
    labels = np.array(labels)
    labels[::per_prompt] = [1, 1, 1]  # each prompt holds a positive and a negative
    labels[1::per_prompt] = [0, 0, 0]
    return prompts, cats, labels


def test_perfect_score_gives_auroc_and_ap_one_constant_gives_half():
    rng = np.random.default_rng(0)
    prompts, cats, labels = _synthetic(rng)
    positive = positives_from_labels(labels)
    scores = {"perfect": positive.astype(float), "const": np.zeros(len(prompts))}
    rep = evaluate(prompts, cats, labels, scores)
    for summary in rep.categories.values():
        assert summary.n_kept == 3
        for metric in ("auroc", "auprc", "ap@5", "ap@10", "ap@25"):
            assert summary.means["perfect"][metric] == pytest.approx(1.0)
        assert summary.means["const"]["auroc"] == pytest.approx(0.5)
        # constant score: rank correlations undefined, counted, not averaged in
        assert math.isnan(summary.means["const"]["spearman"])
        assert summary.n_undefined["const"]["spearman"] == 3
        assert summary.n_undefined["perfect"]["spearman"] == 0
    json.dumps(rep.to_dict(per_prompt=True), allow_nan=False)


def test_matrix_and_mapping_scores_agree_and_prompts_group_by_category():
    rng = np.random.default_rng(1)
    prompts, cats, labels = _synthetic(rng)
    prompts = ["same"] * len(prompts)  # same text in two categories: two prompts
    s = rng.random((len(prompts), 2))
    a = evaluate(prompts, cats, labels, s)
    b = evaluate(prompts, cats, labels, {0: s[:, 0], 1: s[:, 1]})
    assert a.to_dict(per_prompt=True) == b.to_dict(per_prompt=True)
    assert [(p.category, p.prompt, p.n_images) for p in a.prompts] == [("a", "same", 60), ("b", "same", 60)]


def test_dropped_prompts_have_reasons():
    labels = np.array([[1, 1, 1]] * 3 + [[0, -1, 1]] * 3 + [[1, 1, 0], [0, 0, 0], [1, 1, -1]])
    rep = evaluate(["x"] * 3 + ["y"] * 3 + ["z"] * 3, ["c"] * 9, labels, np.arange(9.0))
    s = rep.categories["c"]
    assert (s.n_prompts, s.n_kept, s.n_dropped) == (3, 1, 2)
    assert s.dropped == {DROP_ALL_POSITIVE: 1, DROP_ALL_NEGATIVE: 1}
    assert [p.drop_reason for p in rep.prompts] == [DROP_ALL_POSITIVE, DROP_ALL_NEGATIVE, None]
    assert rep.prompts[0].metrics == {}


TIA2_EXPECTED = {
    # category: (prompts, images, majority-positive images (SPEC table), kept, dropped by reason)
    "comprehensive": (100, 5000, 2361, 84, {DROP_ALL_NEGATIVE: 9, DROP_ALL_POSITIVE: 7}),
    "counting": (150, 7500, 3245, 146, {DROP_ALL_POSITIVE: 3, DROP_ALL_NEGATIVE: 1}),
    "composition": (300, 15000, 5845, 295, {DROP_ALL_NEGATIVE: 5}),
}


@pytest.mark.parametrize("category", list(TIA2_EXPECTED))
def test_tia2_kept_and_dropped_prompt_counts(tia2_root, category):
    data = json.loads((tia2_root / f"human_annotations/human_labels_{category}.json").read_text())
    prompts = [v["caption"] for v in data.values()]
    labels = np.array([v["human_labels"] for v in data.values()])
    scores = np.random.default_rng(2024).random(len(prompts))
    rep = evaluate(prompts, [category] * len(prompts), labels, {"random": scores}, tiebreak=list(data))
    s = rep.categories[category]
    n_prompts, n_images, n_pos, kept, dropped = TIA2_EXPECTED[category]
    assert (s.n_prompts, s.n_images, s.n_positive_images, s.n_kept) == (n_prompts, n_images, n_pos, kept)
    assert s.dropped == dropped and s.n_dropped == n_prompts - kept
    # independent count straight from the file
    pos_by_prompt = defaultdict(list)
    for v in data.values():
        pos_by_prompt[v["caption"]].append(sum(x == 1 for x in v["human_labels"]) >= 2)
    assert sum(0 < sum(v) < len(v) for v in pos_by_prompt.values()) == kept
    # a random score is near chance
    assert abs(s.means["random"]["auroc"] - 0.5) < 0.05
    assert s.n_undefined["random"]["auroc"] == 0


def test_modules_import_without_django_or_torch():
    code = (
        "import sys; import workers.stats.agreement, workers.stats.reward_human; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'torch', 'celery')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={"PATH": "/usr/bin:/bin"})
