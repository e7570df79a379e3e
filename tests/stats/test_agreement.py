import itertools
import json
import math

import numpy as np
import pytest

from workers.stats.agreement import (
    MISSING,
    UNDEFINED_NO_ITEMS,
    UNDEFINED_NO_SHARED,
    UNDEFINED_ONE_CATEGORY,
    agreement_report,
    coincidence_matrix,
    cohen_kappa,
    counts_from_codes,
    fleiss_kappa,
    gold_accuracy,
    krippendorff_alpha_nominal,
    krippendorff_alpha_nominal_counts,
    leave_one_out_majority,
    pairwise_cohen_kappa,
    rating_matrix,
)

nan = np.nan


# ---------------------------------------------------------------- Fleiss


@pytest.mark.parametrize("category,expected", [
    ("comprehensive", 0.614), ("counting", 0.684), ("composition", 0.221),
])
def test_fleiss_kappa_tia2_matches_spec_table(tia2_root, category, expected):
    data = json.loads((tia2_root / f"human_annotations/human_labels_{category}.json").read_text())
    labels = np.array([v["human_labels"] for v in data.values()])
    ones = (labels == 1).sum(axis=1)  # -1 counted as 0
    result = fleiss_kappa(np.column_stack([labels.shape[1] - ones, ones]))
    assert result.defined
    assert round(result.value, 3) == expected
    assert result.n_items == len(data)


def test_fleiss_kappa_worked_example_wikipedia():
    # Fleiss (1971)-style worked example, 10 items x 14 raters x 5 categories: kappa = 0.210.
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    r = fleiss_kappa(counts)
    assert round(r.value, 3) == 0.210
    assert r.observed_agreement == pytest.approx(0.378, abs=5e-4)
    assert r.expected_agreement == pytest.approx(0.213, abs=5e-4)


def test_fleiss_kappa_unequal_raters_generalisation_and_single_ratings_dropped():
    # P_i: (2,0) -> 1, (1,1) -> 0, (2,1) -> 1/3; P_bar = 4/9; p = (5/7, 2/7); P_e = 29/49.
    expected = (4 / 9 - 29 / 49) / (1 - 29 / 49)
    assert fleiss_kappa([[2, 0], [1, 1], [2, 1]]).value == pytest.approx(expected)
    # an item with a single rating holds no pair: it is left out
    r = fleiss_kappa([[2, 0], [1, 1], [2, 1], [0, 1], [0, 0]])
    assert r.value == pytest.approx(expected)
    assert r.n_items == 3 and r.n_ratings == 7


def test_fleiss_perfect_agreement_two_categories_is_one():
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]).value == pytest.approx(1.0)


# ---------------------------------------------------------------- Krippendorff


KRIPPENDORFF_EXAMPLE = np.array([  # Krippendorff (2011), 4 coders x 12 units, missing values
    [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
    [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
])


def test_krippendorff_alpha_nominal_worked_example():
    r = krippendorff_alpha_nominal(KRIPPENDORFF_EXAMPLE)
    assert round(r.value, 3) == 0.743
    assert r.n_items == 11  # unit 12 has one value: not pairable
    assert r.n_ratings == 40
    # same with integer codes and MISSING
    codes = np.where(np.isnan(KRIPPENDORFF_EXAMPLE), MISSING, KRIPPENDORFF_EXAMPLE).astype(int)
    assert krippendorff_alpha_nominal(codes).value == pytest.approx(r.value)
    # coincidence matrix is symmetric and sums to the number of pairable values
    o = coincidence_matrix(counts_from_codes(codes))
    assert np.allclose(o, o.T) and o.sum() == pytest.approx(40)


def _alpha_brute_force(codes):
    """Independent nominal alpha: explicit loops over value pairs (Krippendorff's definition)."""
    units = []
    for u in range(codes.shape[1]):
        vals = [v for v in codes[:, u] if v != MISSING]
        if len(vals) >= 2:
            units.append(vals)
    pooled = [v for vals in units for v in vals]
    n = len(pooled)
    d_o = sum(
        sum(1 for i, j in itertools.permutations(range(len(vals)), 2) if vals[i] != vals[j]) / (len(vals) - 1)
        for vals in units
    ) / n
    d_e = sum(1 for i, j in itertools.permutations(range(n), 2) if pooled[i] != pooled[j]) / (n * (n - 1))
    return 1 - d_o / d_e


@pytest.mark.parametrize("seed", range(6))
def test_krippendorff_alpha_against_brute_force_random(seed):
    rng = np.random.default_rng(seed)
    n_coders, n_units, n_cat = rng.integers(2, 6), rng.integers(5, 25), rng.integers(2, 5)
    # correlated ratings so alpha is not always ~0
    truth = rng.integers(0, n_cat, n_units)
    noise = rng.integers(0, n_cat, (n_coders, n_units))
    codes = np.where(rng.random((n_coders, n_units)) < 0.6, truth, noise)
    codes[rng.random(codes.shape) < 0.25] = MISSING
    r = krippendorff_alpha_nominal(codes)
    assert r.value == pytest.approx(_alpha_brute_force(codes), abs=1e-12)


# ---------------------------------------------------------------- Cohen


def test_cohen_kappa_hand_computed_2x2():
    # table [[20, 5], [10, 15]]: p_o = 0.7, p_e = (25*30 + 25*20) / 50^2 = 0.5 -> kappa 0.4
    a = np.array([0] * 25 + [1] * 25)
    b = np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    r = cohen_kappa(a, b)
    assert r.value == pytest.approx(0.4)
    assert r.observed_agreement == pytest.approx(0.7) and r.expected_agreement == pytest.approx(0.5)


def test_cohen_kappa_uses_only_items_both_rated():
    a = np.array([0] * 25 + [1] * 25 + [1, MISSING, MISSING])
    b = np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15 + [MISSING, 0, 1])
    r = cohen_kappa(a, b)
    assert r.value == pytest.approx(0.4) and r.n_items == 50


def test_pairwise_cohen_kappa():
    codes = np.array([[0, 1, 0, 1], [0, 1, 1, 1], [MISSING, MISSING, MISSING, 0]])
    out = pairwise_cohen_kappa(codes, ["x", "y", "z"])
    assert set(out) == {("x", "y"), ("x", "z"), ("y", "z")}
    # x vs y: table [[1,1],[0,2]]: p_o = 3/4, p_e = (2*1 + 2*3)/16 = 1/2 -> 0.5
    assert out[("x", "y")].value == pytest.approx(0.5)
    # x vs z: one shared item with both 1 / 0 -> disagreement, p_e = 0 -> kappa 0
    assert out[("x", "z")].value == pytest.approx(0.0)
    assert out[("y", "z")].n_items == 1
    assert pairwise_cohen_kappa(np.array([[0, 1], [MISSING, MISSING]]))[(0, 1)].reason == UNDEFINED_NO_SHARED


# ---------------------------------------------------------------- leave-one-out majority


LOO_CODES = np.array([
    [0, 1, 1, 0],
    [0, 1, 0, MISSING],
    [0, 0, 1, 1],
    [1, MISSING, 0, MISSING],
])


def test_leave_one_out_majority_hand_example():
    # item 0: A,B,C agree with others' majority 0; D (1) does not.
    # item 1: A and B see others {1,0} -> tie (left out); C sees {1,1} -> disagrees.
    # item 2: everybody disagrees with the others' majority.
    # item 3: A sees {1}, C sees {0}: both disagree.
    out = {r.annotator: r for r in leave_one_out_majority(LOO_CODES, list("ABCD"))}
    got = {k: (r.n_rated, r.n_compared, r.n_agree, r.n_ties, r.n_too_few_others) for k, r in out.items()}
    assert got == {"A": (4, 3, 1, 1, 0), "B": (3, 2, 1, 1, 0), "C": (4, 4, 1, 0, 0), "D": (2, 2, 0, 0, 0)}
    assert out["A"].rate == pytest.approx(1 / 3)
    out2 = {r.annotator: r for r in leave_one_out_majority(LOO_CODES, list("ABCD"), min_others=2)}
    assert (out2["A"].n_compared, out2["A"].n_agree, out2["A"].n_too_few_others) == (2, 1, 1)
    assert (out2["C"].n_compared, out2["C"].n_agree, out2["C"].n_too_few_others) == (3, 1, 1)


def test_leave_one_out_majority_brute_force_random():
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 3, (6, 40))
    codes[rng.random(codes.shape) < 0.3] = MISSING
    for a, r in enumerate(leave_one_out_majority(codes)):
        agree = compared = ties = 0
        for i in range(codes.shape[1]):
            if codes[a, i] == MISSING:
                continue
            others = [codes[b, i] for b in range(codes.shape[0]) if b != a and codes[b, i] != MISSING]
            if not others:
                continue
            counts = {v: others.count(v) for v in set(others)}
            top = max(counts.values())
            winners = [v for v, c in counts.items() if c == top]
            if len(winners) > 1:
                ties += 1
                continue
            compared += 1
            agree += winners[0] == codes[a, i]
        assert (r.n_compared, r.n_agree, r.n_ties) == (compared, agree, ties)


# ---------------------------------------------------------------- gold, layouts


def test_gold_accuracy():
    items = ["g1", "g2", "x", "g1", "g2", "g3"]
    anns = ["a", "a", "a", "b", "b", "b"]
    labels = ["left", "tie", "left", "right", "right", "left"]
    gold = {"g1": "left", "g2": {"tie", "right"}, "g3": "right"}
    out = gold_accuracy(items, anns, labels, gold)
    assert (out["a"].n_gold, out["a"].n_correct, out["a"].accuracy) == (2, 2, 1.0)
    assert (out["b"].n_gold, out["b"].n_correct) == (3, 1)
    assert gold_accuracy(["x"], ["c"], ["left"], gold) == {}


def test_rating_matrix_from_long_format_and_report():
    m = rating_matrix(["i1", "i1", "i2", "i2", "i2"], ["a", "b", "a", "b", "c"],
                      ["left", "left", "tie", "right", "tie"])
    assert m.categories == ["left", "right", "tie"]
    assert m.codes.tolist() == [[0, 2], [0, 1], [MISSING, 2]]
    assert m.counts().tolist() == [[2, 0, 0], [0, 1, 2]]
    rep = agreement_report(m)
    assert rep.fleiss.value == pytest.approx(fleiss_kappa([[2, 0, 0], [0, 1, 2]]).value)
    json.dumps(rep.to_dict(), allow_nan=False)
    with pytest.raises(ValueError):
        rating_matrix(["i1", "i1"], ["a", "a"], [1, 0])


# ---------------------------------------------------------------- degenerate cases


def test_all_raters_one_category_is_undefined_not_one():
    counts = [[3, 0], [3, 0], [3, 0]]
    for r in (fleiss_kappa(counts), krippendorff_alpha_nominal_counts(counts)):
        assert math.isnan(r.value) and r.reason == UNDEFINED_ONE_CATEGORY
        assert r.observed_agreement == pytest.approx(1.0)
    c = cohen_kappa([1, 1, 1], [1, 1, 1])
    assert math.isnan(c.value) and c.reason == UNDEFINED_ONE_CATEGORY and c.observed_agreement == 1.0
    assert json.loads(json.dumps(c.to_dict()))["value"] is None


def test_one_annotator():
    codes = np.array([[0, 1, 1, 0]])
    for r in (fleiss_kappa(counts_from_codes(codes, 2)), krippendorff_alpha_nominal(codes)):
        assert math.isnan(r.value) and r.reason == UNDEFINED_NO_ITEMS and r.n_items == 0
    assert pairwise_cohen_kappa(codes) == {}
    (r,) = leave_one_out_majority(codes)
    assert (r.n_rated, r.n_compared, r.n_too_few_others) == (4, 0, 4) and math.isnan(r.rate)


def test_one_item():
    # three ratings 0, 0, 1 of one item.
    # Fleiss: P = 2/6, P_e = 5/9 -> (1/3 - 5/9) / (4/9) = -0.5
    assert fleiss_kappa([[2, 1]]).value == pytest.approx(-0.5)
    # Krippendorff: o_00 = 1, o_01 = o_10 = 1, n = 3 -> 1 - (n-1) * 2 / (2 * 2 * 1) = 0
    assert krippendorff_alpha_nominal_counts([[2, 1]]).value == pytest.approx(0.0)
    assert krippendorff_alpha_nominal(np.array([[0], [0], [1]])).value == pytest.approx(0.0)
    # one item, all agree: undefined
    assert fleiss_kappa([[3, 0]]).reason == UNDEFINED_ONE_CATEGORY
    assert krippendorff_alpha_nominal_counts([[3, 0]]).reason == UNDEFINED_ONE_CATEGORY


def test_empty_inputs():
    assert fleiss_kappa(np.zeros((0, 2))).reason == UNDEFINED_NO_ITEMS
    assert krippendorff_alpha_nominal_counts(np.zeros((0, 2))).reason == UNDEFINED_NO_ITEMS
    assert cohen_kappa([], []).reason == UNDEFINED_NO_SHARED
    with pytest.raises(ValueError):
        fleiss_kappa([[1, -1]])


def test_all_pairs_cohen_and_leave_one_out_equal_their_one_pair_definitions_on_random_data():
    import math

    import numpy as np

    from workers.stats import agreement as ag

    rng = np.random.default_rng(5)
    codes = rng.integers(0, 3, (7, 40))
    codes[rng.random(codes.shape) < 0.4] = ag.MISSING
    pairs = ag.pairwise_cohen_kappa(codes)
    for (x, y), coef in pairs.items():
        one = ag.cohen_kappa(codes[x], codes[y], 3)
        assert coef.n_items == one.n_items
        assert (math.isnan(coef.value) and math.isnan(one.value)) or math.isclose(coef.value, one.value, abs_tol=1e-12)
    for a, row in enumerate(ag.leave_one_out_majority(codes)):
        rated = np.nonzero(codes[a] != ag.MISSING)[0]
        agree = compared = 0
        for i in rated:
            others = np.bincount(np.delete(codes[:, i], a)[np.delete(codes[:, i], a) != ag.MISSING], minlength=3)
            if others.sum() >= 1 and (others == others.max()).sum() == 1:
                compared += 1
                agree += int(others.argmax() == codes[a, i])
        assert (row.n_rated, row.n_compared, row.n_agree) == (len(rated), compared, agree)
