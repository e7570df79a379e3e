"""Pairwise (side-by-side) statistics: each test checks against a hand value or an independent method."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import expit, log_expit

from workers.stats import pairwise as pw
from workers.stats.pairwise import A_WINS, B_WINS, TIE

ROOT = Path(__file__).resolve().parents[2]


def battles(rows, K=None):
    """rows: (a, b, outcome[, prompt, annotator, a_on_left])."""
    rows = [tuple(r) + (0, 0, True)[len(r) - 3:] for r in rows]
    a, b, o, p, an, left = (np.array(c) for c in zip(*rows))
    return a, b, o, p, an, left


def report(rows, K, rounds=200, seed=0):
    a, b, o, p, an, left = battles(rows)
    r = pw.pairwise_report([f"m{i}" for i in range(K)], a, b, o, p, an, left, rounds=rounds, seed=seed)
    json.dumps(r, allow_nan=False)  # always valid JSON: no NaN / inf
    return r


def synthetic(K=5, n=4000, n_prompts=100, n_ann=20, seed=3, tie_p=0.0):
    rng = np.random.default_rng(seed)
    true = np.linspace(-1.2, 1.2, K)
    a = rng.integers(0, K, n)
    b = (a + rng.integers(1, K, n)) % K
    o = np.where(rng.random(n) < expit(true[a] - true[b]), A_WINS, B_WINS)
    if tie_p:
        o = np.where(rng.random(n) < tie_p, TIE, o)
    return true, a, b, o, rng.integers(0, n_prompts, n), rng.integers(0, n_ann, n), rng.random(n) < 0.5


def scipy_bt(W):
    """Independent BT MLE: scipy.optimize on the same log-likelihood (theta_0 pinned to 0)."""
    K = W.shape[0]

    def nll(x):
        t = np.concatenate([[0.0], x])
        return -(W * log_expit(t[:, None] - t[None, :])).sum()

    x = optimize.minimize(nll, np.zeros(K - 1), method="BFGS", options={"gtol": 1e-10}).x
    t = np.concatenate([[0.0], x])
    return t - t.mean()


# ---------------------------------------------------------------- Wilson, win rates, ties


def test_wilson_hand_value():
    # 7 of 10, z = 1.959964: centre (0.7 + z^2/20) / (1 + z^2/10), hand-computed to 4 d.p.
    lo, hi = pw.wilson_interval(7, 10)
    assert lo == pytest.approx(0.39677, abs=1e-4) and hi == pytest.approx(0.89222, abs=1e-4)
    lo, hi = pw.wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)
    lo, hi = pw.wilson_interval(0, 5)  # closed form at s = 0: [0, z^2 / (n + z^2)]
    z2 = stats.norm.ppf(0.975) ** 2
    assert lo == 0 and hi == pytest.approx(z2 / (5 + z2))


def test_win_rate_with_ties():
    # m0 vs m1: 3 wins, 1 loss, 2 ties -> (3 + 1) / 6; sides swapped in some rows
    rows = [(0, 1, A_WINS), (1, 0, B_WINS), (0, 1, A_WINS), (0, 1, B_WINS), (0, 1, TIE), (1, 0, TIE)]
    r = report(rows, 2)
    (p,) = r["pairs"]
    assert (p["wins_a"], p["wins_b"], p["ties"], p["n"]) == (3, 1, 2, 6)
    assert p["win_rate_a"] == pytest.approx(4 / 6)
    lo, hi = pw.wilson_interval(4.0, 6)
    assert p["wilson"] == pytest.approx([lo, hi])
    assert r["win_rate_matrix"][0][1] == pytest.approx(4 / 6)
    assert r["win_rate_matrix"][1][0] == pytest.approx(2 / 6)
    assert p["sign_test_p"] == pytest.approx(stats.binomtest(3, 4).pvalue)  # ties excluded


# ---------------------------------------------------------------- Bradley-Terry


def test_bt_matches_scipy_optimize():
    W = np.array([[0, 5, 3, 7.5], [2, 0, 4, 3], [6.5, 1, 0, 2], [1, 3, 5, 0]], dtype=float)
    fit = pw.fit_bt_matrix(W)
    assert not fit["separated"] and fit["converged"]
    np.testing.assert_allclose(fit["theta"], scipy_bt(W), atol=1e-5)


def test_bt_two_players_closed_form():
    # 2 players: p = wins / (wins + losses); ties add half to each side
    rows = [(0, 1, A_WINS)] * 7 + [(0, 1, B_WINS)] * 2 + [(1, 0, TIE)] * 2
    r = report(rows, 2)
    t = [x["theta"] for x in r["bradley_terry"]["ratings"]]
    assert t[0] - t[1] == pytest.approx(math.log(8 / 3))
    assert sum(t) == pytest.approx(0)
    elo = [x["elo"] for x in r["bradley_terry"]["ratings"]]
    assert elo[0] - elo[1] == pytest.approx(400 * math.log10(8 / 3))


def test_bt_invariant_to_order_and_sides():
    _, a, b, o, p, an, left = synthetic(K=4, n=600, tie_p=0.2)
    models = list("abcd")
    r1 = pw.pairwise_report(models, a, b, o, p, an, left, rounds=100, seed=1)
    rng = np.random.default_rng(0)
    perm = rng.permutation(a.size)
    swap = rng.random(a.size) < 0.5  # present half the battles as (b, a) with the outcome mirrored
    a2, b2 = np.where(swap, b, a)[perm], np.where(swap, a, b)[perm]
    o2 = np.where(swap & (o != TIE), 1 - o, o)[perm]
    r2 = pw.pairwise_report(models, a2, b2, o2, p[perm], an[perm], left[perm], rounds=100, seed=1)
    t1 = [x["theta"] for x in r1["bradley_terry"]["ratings"]]
    t2 = [x["theta"] for x in r2["bradley_terry"]["ratings"]]
    np.testing.assert_allclose(t1, t2, atol=1e-9)
    assert [x["win_rate_a"] for x in r1["pairs"]] == pytest.approx([x["win_rate_a"] for x in r2["pairs"]])


def test_never_wins_and_never_loses_are_flagged_with_bounds():
    rows = [(0, 1, A_WINS), (0, 1, B_WINS), (1, 2, A_WINS), (2, 1, A_WINS), (0, 2, TIE)]
    rows += [(3, 0, B_WINS), (1, 3, A_WINS), (3, 2, B_WINS)]  # m3 never wins
    rows += [(4, 0, A_WINS), (2, 4, B_WINS)]  # m4 never loses
    r = report(rows, 5, rounds=100)
    rat = {x["model"]: x for x in r["bradley_terry"]["ratings"]}
    assert r["bradley_terry"]["separated"] is True
    assert rat["m3"]["status"] == "below" and rat["m4"]["status"] == "above"
    core = [rat[m]["theta"] for m in ("m0", "m1", "m2")]
    assert all(rat[m]["status"] == "ok" for m in ("m0", "m1", "m2"))
    assert sum(core) == pytest.approx(0)  # anchor: the identified core
    W = pw.Battles(*battles(rows)[:3], n_models=5).win_matrix()
    np.testing.assert_allclose(core, scipy_bt(W[:3, :3]), atol=1e-5)
    assert rat["m3"]["theta"] == pytest.approx(min(core) - pw.SEPARATION_GAP)
    assert rat["m4"]["theta"] == pytest.approx(max(core) + pw.SEPARATION_GAP)
    assert rat["m4"]["rank"] == 1 and rat["m3"]["rank"] == 5
    for x in rat.values():  # finite everywhere, including the bootstrap intervals
        assert all(v is not None and math.isfinite(v) for v in x["theta_ci_vote"] + x["rank_interval_prompt"])


def test_separated_layers_keep_order_and_within_group_ratings():
    # core {m0, m1} (mixed); {m2, m3} mixed among themselves and never lose to the core;
    # m4 beats only m2 -> two layers above the core; m5 loses only to the core -> one layer below
    rows = [(0, 1, A_WINS), (0, 1, A_WINS), (1, 0, A_WINS)]
    rows += [(2, 3, A_WINS)] * 3 + [(3, 2, A_WINS), (2, 0, A_WINS), (3, 1, A_WINS), (3, 1, A_WINS)]
    rows += [(0, 1, A_WINS), (1, 0, A_WINS), (4, 2, A_WINS), (0, 5, A_WINS)]
    r = report(rows, 6, rounds=50)
    rat = r["bradley_terry"]["ratings"]
    assert [x["status"] for x in rat] == ["ok", "ok", "above", "above", "above", "below"]
    t = [x["theta"] for x in rat]
    top, bottom = max(t[:2]), min(t[:2])
    assert t[0] - t[1] == pytest.approx(math.log(3 / 2)) and t[0] + t[1] == pytest.approx(0)
    assert t[2] - t[3] == pytest.approx(math.log(3)) and min(t[2:4]) == pytest.approx(top + pw.SEPARATION_GAP)
    assert t[4] == pytest.approx(top + 2 * pw.SEPARATION_GAP)
    assert t[5] == pytest.approx(bottom - pw.SEPARATION_GAP)
    assert [x["rank"] for x in rat] == [4, 5, 2, 3, 1, 6]


def test_unidentified_and_uncompared_checkpoints():
    # m0 and m1 both beat m2 only: both are placed one gap above m2 (the most compared: the core)
    r = report([(0, 2, A_WINS), (1, 2, A_WINS), (0, 2, A_WINS)], 3, rounds=50)
    st = [(x["status"], x["theta"]) for x in r["bradley_terry"]["ratings"]]
    assert [s for s, _ in st] == ["above", "above", "ok"]
    assert st[0][1] == st[1][1] == pytest.approx(pw.SEPARATION_GAP)
    # m0/m1 mixed (the core); m2 beats m3 but neither met the core: unidentified; m4 never plays
    rows = [(0, 1, A_WINS), (1, 0, A_WINS), (0, 1, TIE), (2, 3, A_WINS)]
    r = report(rows, 5, rounds=50)
    st = [(x["status"], x["theta"]) for x in r["bradley_terry"]["ratings"]]
    assert st[0] == ("ok", 0.0) and st[1] == ("ok", 0.0)
    assert st[2:] == [("unidentified", None), ("unidentified", None), ("no_comparisons", None)]
    assert r["bradley_terry"]["ratings"][4]["theta_ci_vote"] == [None, None]


def test_all_ties():
    rows = [(i, j, TIE, k, k % 3, k % 2 == 0) for k, (i, j) in enumerate([(0, 1), (1, 2), (0, 2)] * 4)]
    r = report(rows, 3, rounds=100)
    assert [x["theta"] for x in r["bradley_terry"]["ratings"]] == pytest.approx([0, 0, 0])
    # Only ties: nothing decisive to test, so no sign test and no Holm p (not a p of 1).
    assert all(p["win_rate_a"] == 0.5 and p["sign_test_p"] is None and p["holm_p"] is None for p in r["pairs"])
    assert r["position_bias"]["left_win_rate"] == 0.5
    assert r["bradley_terry"]["ratings"][0]["rank_interval_vote"] == [1, 1]  # equal for sure: all share rank 1


def test_one_item():
    r = report([(1, 0, A_WINS)], 2, rounds=50)
    rat = r["bradley_terry"]["ratings"]
    assert rat[1]["theta"] - rat[0]["theta"] == pytest.approx(pw.SEPARATION_GAP)
    assert rat[1]["rank"] == 1 and r["pairs"][0]["win_rate_a"] == 0.0
    assert r["pairs"][0]["sign_test_p"] == 1.0 and r["inputs"]["judgments"] == 1


def test_empty_and_invalid_input():
    r = pw.pairwise_report(["x", "y"], [], [], [], [], [], [], rounds=10)
    assert r["inputs"]["judgments"] == 0 and r["pairs"][0]["n"] == 0
    with pytest.raises(ValueError):
        pw.Battles([0], [0], [A_WINS])
    with pytest.raises(ValueError):
        pw.Battles([0], [1], [3])


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_reproducible_and_recovers_known_strengths():
    true, a, b, o, p, an, left = synthetic(K=5, n=6000)
    models = [f"m{i}" for i in range(5)]
    r1 = pw.pairwise_report(models, a, b, o, p, an, left, rounds=1000, seed=7)
    r2 = pw.pairwise_report(models, a, b, o, p, an, left, rounds=1000, seed=7)
    r3 = pw.pairwise_report(models, a, b, o, p, an, left, rounds=1000, seed=8)
    assert r1 == r2 and r1 != r3
    rat = r1["bradley_terry"]["ratings"]
    theta = np.array([x["theta"] for x in rat])
    assert list(np.argsort(theta)) == list(np.argsort(true))  # true ordering recovered
    assert [x["rank"] for x in rat] == [5, 4, 3, 2, 1]
    for x, t in zip(rat, true - true.mean()):
        for key in ("theta_ci_prompt", "theta_ci_vote"):
            lo, hi = x[key]
            assert lo <= x["theta"] <= hi
            assert lo - 0.05 <= t <= hi + 0.05  # truth inside (with a small margin for 5 x 2 checks)
        for key in ("rank_interval_prompt", "rank_interval_vote"):
            assert x[key][0] <= x["rank"] <= x[key][1]
    for pr in r1["pairs"]:
        for key in ("wilson", "bootstrap_prompt", "bootstrap_annotator"):
            assert pr[key][0] <= pr["win_rate_a"] <= pr[key][1]


def _naive_W(a, b, o, idx, K):
    W = np.zeros((K, K))
    aa, bb, oo = a[idx], b[idx], o[idx]
    np.add.at(W, (aa, bb), (oo == A_WINS) + 0.5 * (oo == TIE))
    np.add.at(W, (bb, aa), (oo == B_WINS) + 0.5 * (oo == TIE))
    return W


def test_collapsed_bootstrap_matches_naive_resampling_in_distribution():
    true, a, b, o, p, an, left = synthetic(K=3, n=600, n_prompts=30, tie_p=0.2, seed=11)
    # a strong prompt effect on m0 (so clustering matters): logit shifted by f[prompt] when m0 plays
    rng = np.random.default_rng(5)
    f = rng.normal(0, 3.0, 30)[p] * ((a == 0).astype(float) - (b == 0))
    o = np.where(rng.random(a.size) < expit(true[a] - true[b] + f), A_WINS, B_WINS)
    o = np.where(rng.random(a.size) < 0.2, TIE, o)
    K, R = 3, 2000
    bt = pw.Battles(a, b, o, p, an, left, n_models=K)
    rng = np.random.default_rng(0)
    # vote level: naive = draw vote indices one by one
    naive_v = np.stack([_naive_W(a, b, o, rng.integers(0, a.size, a.size), K) for _ in range(R)])
    fast_v = bt.win_matrix(pw.bootstrap_cell_counts_votes(bt, R, np.random.default_rng(1)))
    # cluster by prompt: naive = draw prompts, concatenate their votes
    by_prompt = [np.flatnonzero(p == g) for g in np.unique(p)]
    G = len(by_prompt)
    naive_p = np.stack([
        _naive_W(a, b, o, np.concatenate([by_prompt[g] for g in rng.integers(0, G, G)]), K)
        for _ in range(R)])
    fast_p = np.concatenate([bt.win_matrix(c) for c in
                             pw.bootstrap_cell_counts_clusters(bt, p, R, np.random.default_rng(2))])
    sd = {}
    for name, naive, fast in (("vote", naive_v, fast_v), ("prompt", naive_p, fast_p)):
        tn, tf = pw.fit_bt_batch(naive)[0], pw.fit_bt_batch(fast)[0]
        np.testing.assert_allclose(tf.mean(0), tn.mean(0), atol=0.02)
        np.testing.assert_allclose(tf.std(0), tn.std(0), rtol=0.1)
        np.testing.assert_allclose(fast.sum((1, 2)).std(), naive.sum((1, 2)).std(), rtol=0.1, atol=1e-9)
        sd[name] = tf.std(0)
    assert fast_v.sum((1, 2)).std() == 0  # vote level keeps n fixed
    assert sd["prompt"][0] > 1.5 * sd["vote"][0]  # and the check above can tell the two apart


# ---------------------------------------------------------------- tests and corrections


def test_holm_worked_example():
    # p sorted: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    np.testing.assert_allclose(pw.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(pw.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    assert pw.holm([]).size == 0


def test_sign_test_against_scipy_and_hand_value():
    assert pw.sign_test(9, 1) == pytest.approx(2 * 11 / 1024)  # P(X>=9)+P(X<=1) for Bin(10, 1/2)
    for w, l in [(3, 7), (0, 5), (20, 14), (50, 50)]:
        assert pw.sign_test(w, l) == pytest.approx(stats.binomtest(w, w + l, 0.5).pvalue)
    assert pw.sign_test(0, 0) == 1.0
    _, a, b, o, p, an, left = synthetic(K=4, n=500, tie_p=0.3)
    r = pw.pairwise_report(list("abcd"), a, b, o, p, an, left, rounds=20)
    ps = [x["sign_test_p"] for x in r["pairs"]]
    for x in r["pairs"]:
        assert x["sign_test_p"] == pytest.approx(
            stats.binomtest(int(x["wins_a"]), int(x["wins_a"] + x["wins_b"])).pvalue)
    np.testing.assert_allclose([x["holm_p"] for x in r["pairs"]], pw.holm(ps))


def test_position_bias():
    # a on the left: 3 a wins (left), 1 b win (right), 1 tie; a on the right: 2 a wins (right), 1 b win (left)
    # -> left 3 + 1 = 4, right 1 + 2 = 3, 1 tie, n = 8
    rows = [(0, 1, A_WINS, 0, 0, True)] * 3 + [(0, 1, B_WINS, 0, 0, True), (0, 1, TIE, 0, 0, True)]
    rows += [(0, 1, A_WINS, 1, 0, False)] * 2 + [(0, 1, B_WINS, 1, 0, False)]
    pb = report(rows, 2)["position_bias"]
    assert (pb["left_wins"], pb["right_wins"], pb["ties"], pb["n"]) == (4, 3, 1, 8)
    assert pb["left_win_rate"] == pytest.approx(4.5 / 8)
    assert pb["wilson"] == pytest.approx(list(pw.wilson_interval(4.5, 8)))
    assert pb["sign_test_p"] == 1.0


def test_import_pulls_in_neither_django_nor_torch():
    code = ("import sys, workers.stats.pairwise; bad = [m for m in sys.modules "
            "if m.split('.')[0] in ('django', 'torch')]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_holm_counts_only_the_pairs_that_were_tested():
    """Three checkpoints; m0-m1 and m1-m2 each 9-1, m0 and m2 never shown together. The family
    is the two tested pairs (Holm p = 2 x 0.0215 = 0.043), not three (0.0645, which would hide
    a result significant at 0.05); the untested pair has no p-values at all."""
    rows = ([(0, 1, A_WINS, k, k % 4, True) for k in range(9)] + [(0, 1, B_WINS, 9, 0, True)]
            + [(1, 2, A_WINS, 10 + k, k % 4, False) for k in range(9)] + [(1, 2, B_WINS, 19, 1, False)])
    r = report(rows, 3, rounds=50)
    by = {(x["a"], x["b"]): x for x in r["pairs"]}
    raw = stats.binomtest(9, 10, 0.5).pvalue
    assert by[("m0", "m1")]["sign_test_p"] == pytest.approx(raw)
    assert by[("m0", "m1")]["holm_p"] == pytest.approx(2 * raw) == by[("m1", "m2")]["holm_p"]
    assert 2 * raw < 0.05 < 3 * raw
    assert by[("m0", "m2")]["n"] == 0 and by[("m0", "m2")]["sign_test_p"] is None and by[("m0", "m2")]["holm_p"] is None


def test_rank_interval_is_what_the_rating_intervals_allow():
    # a wholly above b and c; b and c overlap; d has no interval (unidentified)
    lo = [1.0, -0.5, -0.2, np.nan]
    hi = [2.0, 0.1, 0.4, np.nan]
    best, worst = pw.rank_interval_from_intervals(lo, hi)
    np.testing.assert_array_equal(best[:3], [1, 2, 2])
    np.testing.assert_array_equal(worst[:3], [1, 3, 3])
    assert np.isnan(best[3]) and np.isnan(worst[3])
    # an interval that overlaps every other one can hold any rank
    best, worst = pw.rank_interval_from_intervals([-0.48, -0.3, 0.0, 0.1], [0.2, 0.3, 0.5, 0.6])
    assert (best[0], worst[0]) == (1, 4)
    # in a report: the rank interval comes from the checkpoint's own rating intervals
    _, a, b, o, p, an, left = synthetic(K=4, n=800, tie_p=0.2)
    r = pw.pairwise_report(list("abcd"), a, b, o, p, an, left, rounds=200)
    rat = r["bradley_terry"]["ratings"]
    for key, ci in (("rank_interval_prompt", "theta_ci_prompt"), ("rank_interval_vote", "theta_ci_vote")):
        best, worst = pw.rank_interval_from_intervals([x[ci][0] for x in rat], [x[ci][1] for x in rat])
        assert [x[key] for x in rat] == [[bb, ww] for bb, ww in zip(best, worst)]
        assert all(float(v).is_integer() for x in rat for v in x[key])  # whole ranks


def test_bootstrap_p_by_hand():
    # 9 rounds: 2 at or below 0.5 (one exactly), 8 at or above -> 2 x (2 + 1) / 10
    s = np.array([[0.4], [0.5], [0.6], [0.6], [0.7], [0.7], [0.8], [0.9], [0.55]])
    assert pw.bootstrap_p(s)[0] == pytest.approx(2 * 3 / 10)
    assert pw.bootstrap_p(np.full((5, 1), 0.5))[0] == 1.0  # all on the null: capped at 1
    assert pw.bootstrap_p(np.full((99, 1), 0.9))[0] == pytest.approx(2 / 100)  # never 0
    assert np.isnan(pw.bootstrap_p(np.full((4, 1), np.nan))[0])
    with_nan = np.array([[0.9], [np.nan], [0.8]])  # NaN rounds are left out: R = 2
    assert pw.bootstrap_p(with_nan)[0] == pytest.approx(2 / 3)


def clustered(prompts_for_a: int, prompts_for_b: int, votes: int, annotators: int = 12):
    """Each prompt swept by one side: A wins every vote on the first prompts, B on the rest."""
    rows, k = [], 0
    for prompt in range(prompts_for_a + prompts_for_b):
        for _ in range(votes):
            rows.append((0, 1, A_WINS if prompt < prompts_for_a else B_WINS, prompt, k % annotators, k % 2 == 0))
            k += 1
    return rows


def test_verdict_follows_the_prompt_bootstrap_not_the_vote_count():
    """8 prompts swept by A and 4 by B, 10 votes each: 80-40 makes the sign test tiny (p < 0.001)
    though only 12 prompts decide; the prompt bootstrap says not distinguishable. 40 prompts
    for A and 2 for B is a clear result either way."""
    r = report(clustered(8, 4, 10), 2, rounds=1000)
    (pair,) = r["pairs"]
    assert pair["sign_test_p"] < 0.001 and (pair["prompts"], pair["annotators"]) == (12, 12)
    assert pair["bootstrap_p"] > 0.05 and pair["bootstrap_holm_p"] == pair["bootstrap_p"]
    lo, hi = pair["bootstrap_prompt"]
    assert lo < 0.5 < hi and pair["verdict"] == "not distinguishable"
    clear = report(clustered(40, 2, 3), 2, rounds=1000)["pairs"][0]
    assert clear["bootstrap_p"] <= 2 / 1001 and clear["verdict"] == "a better"
    assert clear["bootstrap_prompt"][0] > 0.5
    flipped = report([(1, 0, o, p, a, left) for (_, _, o, p, a, left) in clustered(40, 2, 3)], 2, rounds=1000)
    assert flipped["pairs"][0]["verdict"] == "b better"


def test_few_clusters_give_no_cluster_interval_and_no_verdict():
    """A pilot: 8 prompts, 3 annotators. Wilson is shown; the cluster intervals and the
    bootstrap test are not (null), and the verdict says why."""
    r = report(clustered(6, 2, 12, annotators=3), 2, rounds=1000)
    (pair,) = r["pairs"]
    assert (pair["prompts"], pair["annotators"]) == (8, 3)
    assert pair["bootstrap_prompt"] == [None, None] and pair["bootstrap_annotator"] == [None, None]
    assert pair["bootstrap_p"] is None and pair["bootstrap_holm_p"] is None
    assert pair["verdict"] == "too few prompts" and None not in pair["wilson"]
    untested = report([(0, 1, A_WINS, 0, 0, True)], 3, rounds=100)
    assert [p["verdict"] for p in untested["pairs"]] == ["too few prompts", "not compared", "not compared"]


def test_bootstrap_holm_is_over_the_pairs_it_can_test():
    rows = clustered(30, 5, 2) + [(1, 2, o, 100 + p, a, left) for (_, _, o, p, a, left) in clustered(25, 10, 2)]
    r = report(rows, 3, rounds=1000)
    by = {(x["a"], x["b"]): x for x in r["pairs"]}
    tested = [by[("m0", "m1")], by[("m1", "m2")]]
    np.testing.assert_allclose([x["bootstrap_holm_p"] for x in tested], pw.holm([x["bootstrap_p"] for x in tested]))
    assert by[("m0", "m2")]["bootstrap_holm_p"] is None and by[("m0", "m2")]["verdict"] == "not compared"


def test_win_odds_say_how_many_wins_per_loss_with_the_prompt_interval_mapped():
    """The paper's headline, "won about twice as many comparisons": the odds of the win rate."""
    r = report(clustered(20, 10, 2), 2, rounds=1000)
    (pair,) = r["pairs"]
    assert pair["win_rate_a"] == pytest.approx(2 / 3) and pair["win_odds"] == pytest.approx(2.0)
    lo, hi = pair["bootstrap_prompt"]
    assert pair["win_odds_bootstrap_prompt"] == [pytest.approx(lo / (1 - lo)), pytest.approx(hi / (1 - hi))]
    swept = report(clustered(12, 0, 1), 2, rounds=200)["pairs"][0]
    assert swept["win_odds"] is None  # every comparison won: no finite odds (JSON has no infinity)
