"""Side-by-side (pairwise) study statistics: win rates, Bradley-Terry, tests (SPEC.md section 3).

Pure numpy/scipy. Input is a table of battles as parallel arrays:

* ``model_a``, ``model_b``: int indices into ``models`` (the two checkpoints of the item);
* ``outcome``: ``A_WINS`` (0), ``B_WINS`` (1) or ``TIE`` (2);
* ``prompt``, ``annotator``: int cluster ids (any non-negative ints);
* ``a_on_left``: bool, whether ``model_a``'s image was shown on the left.

Method notes (also returned in the report under ``"methods"``):

* Win rate of A over B = (wins + ties/2) / comparisons.  Wilson score interval with the effective
  number of successes s = wins + ties/2 and n = all comparisons including ties.  A tie contributes
  0.5 with zero variance, so the Bernoulli variance p(1-p)/n used by Wilson is an upper bound:
  the interval is conservative when ties are frequent.
* Cluster bootstrap (prompts, and separately annotators): votes are first collapsed to a
  cluster x cell count matrix (a cell is a distinct (pair, outcome)); each round draws cluster
  multiplicities (multinomial over clusters, i.e. sampling clusters with replacement) and forms
  weighted cell counts by a matrix product.  No loop over votes.
* Vote-level bootstrap: multinomial counts over the distinct outcome cells with the observed
  cell frequencies (equivalent in distribution to resampling battles one by one).
* Bradley-Terry: unregularised MLE, P(i beats j) = 1 / (1 + exp(theta_j - theta_i)), a tie is
  half a win for each side, fitted on the collapsed K x K win matrix by Newton's method (batched
  over bootstrap rounds).  theta has mean 0 over all checkpoints (over the core component when
  separated, see below); ``elo`` is 1000 + 400/ln(10) * theta (anchor: that mean is 1000).
* Separation: the MLE is finite iff the directed "has some win mass over" graph (ties count both
  ways) is strongly connected.  Otherwise the largest strongly connected component is the core;
  the other components are fitted within themselves and placed above/below the core by
  ``SEPARATION_GAP`` (log-odds) per layer of the condensation graph instead of +/-inf, flagged
  ``"above"`` / ``"below"``; a component with no order relative to the core is ``"unidentified"``
  with rating NaN (None in the report).
* Exact two-sided sign test per pair (ties excluded), Holm step-down correction across pairs.
* Position bias: the left side's win rate (ties half) with a Wilson interval and a sign test.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Sequence

import numpy as np
from scipy import sparse, stats
from scipy.sparse.csgraph import connected_components
from scipy.special import expit

A_WINS, B_WINS, TIE = 0, 1, 2
ELO_SCALE = 400.0 / math.log(10.0)
ELO_ANCHOR = 1000.0
# Distance (log-odds) between a separated component and the core: 100:1 odds, 800 Elo points.
SEPARATION_GAP = math.log(100.0)
# A cluster bootstrap over fewer clusters than this is not reported: with a handful of prompts
# or annotators the percentile interval is narrow for lack of clusters, not for certainty.
MIN_CLUSTERS = 10
_NEWTON_MAX_STEP = 2.0


# ----------------------------------------------------------------------------------------------
# Elementary pieces
# ----------------------------------------------------------------------------------------------


def wilson_interval(successes, n, confidence: float = 0.95):
    """Wilson score interval; ``successes`` may be fractional (wins + ties/2). n == 0 -> NaN."""
    s = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z = stats.norm.ppf(0.5 + confidence / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / n
        denom = 1.0 + z * z / n
        center = (p + z * z / (2.0 * n)) / denom
        half = z / denom * np.sqrt(np.maximum(p * (1.0 - p), 0.0) / n + z * z / (4.0 * n * n))
        lo = np.where(n > 0, np.clip(center - half, 0.0, 1.0), np.nan)
        hi = np.where(n > 0, np.clip(center + half, 0.0, 1.0), np.nan)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control), same order as the input."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adj_sorted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj_sorted = np.maximum.accumulate(adj_sorted)
    out = np.empty(m)
    out[order] = adj_sorted
    return out


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial sign test of wins vs losses (ties already excluded)."""
    n = int(wins) + int(losses)
    if n == 0:
        return 1.0
    return float(stats.binomtest(int(wins), n, 0.5, alternative="two-sided").pvalue)


# ----------------------------------------------------------------------------------------------
# Collapsing battles
# ----------------------------------------------------------------------------------------------


class Battles:
    """Validated battle arrays plus the distinct outcome cells.

    A cell is (lo, hi, o) with lo < hi the two checkpoints and o in {lo wins, hi wins, tie}.
    ``cell_W`` (C x K*K) maps cell counts to the K x K win matrix (ties half each way).
    """

    def __init__(self, model_a, model_b, outcome, prompt=None, annotator=None, a_on_left=None,
                 n_models: int | None = None):
        a = np.asarray(model_a, dtype=np.int64).ravel()
        b = np.asarray(model_b, dtype=np.int64).ravel()
        o = np.asarray(outcome, dtype=np.int64).ravel()
        n = a.size
        if b.size != n or o.size != n:
            raise ValueError("model_a, model_b and outcome must have the same length")
        K = int(n_models if n_models is not None else (max(a.max(), b.max()) + 1 if n else 0))
        if n and (a.min() < 0 or b.min() < 0 or a.max() >= K or b.max() >= K):
            raise ValueError("model index out of range")
        if np.any(a == b):
            raise ValueError("a battle must compare two different checkpoints")
        if n and not np.all((o >= 0) & (o <= 2)):
            raise ValueError("outcome must be 0 (a wins), 1 (b wins) or 2 (tie)")
        self.n, self.K = n, K
        self.a, self.b, self.o = a, b, o
        self.prompt = None if prompt is None else np.asarray(prompt, dtype=np.int64).ravel()
        self.annotator = None if annotator is None else np.asarray(annotator, dtype=np.int64).ravel()
        self.a_on_left = None if a_on_left is None else np.asarray(a_on_left, dtype=bool).ravel()
        for name in ("prompt", "annotator", "a_on_left"):
            v = getattr(self, name)
            if v is not None and v.size != n:
                raise ValueError(f"{name} must have the same length as model_a")

        swap = a > b
        lo = np.where(swap, b, a)
        hi = np.where(swap, a, b)
        # canonical outcome: 0 lo wins, 1 hi wins, 2 tie
        oc = np.where((o == TIE), 2, np.where((o == A_WINS) ^ swap, 0, 1))
        full = (lo * K + hi) * 3 + oc
        cells, inverse = np.unique(full, return_inverse=True)
        self.cell_of_vote = inverse.astype(np.int64)
        self.cells = cells
        self.cell_counts = np.bincount(self.cell_of_vote, minlength=cells.size).astype(float)
        c_lo, c_hi, c_o = (cells // 3) // K, (cells // 3) % K, cells % 3
        C = cells.size
        M = np.zeros((C, K * K))
        idx = np.arange(C)
        M[idx, c_lo * K + c_hi] += np.where(c_o == 0, 1.0, np.where(c_o == 2, 0.5, 0.0))
        M[idx, c_hi * K + c_lo] += np.where(c_o == 1, 1.0, np.where(c_o == 2, 0.5, 0.0))
        self.cell_W = M
        self.cell_lo, self.cell_hi, self.cell_o = c_lo, c_hi, c_o

    def win_matrix(self, cell_counts=None) -> np.ndarray:
        """K x K (or R x K x K for stacked counts) wins of row over column, ties half."""
        c = self.cell_counts if cell_counts is None else np.asarray(cell_counts, dtype=float)
        W = c @ self.cell_W
        return W.reshape(c.shape[:-1] + (self.K, self.K))

    def cluster_cell_matrix(self, cluster_ids) -> sparse.csr_matrix:
        """Sparse (clusters x cells) count matrix; clusters are the distinct ids, in sorted order."""
        _, cl = np.unique(cluster_ids, return_inverse=True)
        G = int(cl.max()) + 1 if cl.size else 0
        return sparse.csr_matrix(
            (np.ones(self.n), (cl.ravel(), self.cell_of_vote)), shape=(G, self.cells.size)
        )


# ----------------------------------------------------------------------------------------------
# Bradley-Terry
# ----------------------------------------------------------------------------------------------


def _bt_newton(W: np.ndarray, tol: float = 1e-10, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Batched Newton MLE for BT on win matrices W (R x K x K). Assumes strong connectivity.

    Returns theta (R x K, mean 0) and a converged flag per round.
    """
    W = np.asarray(W, dtype=float)
    R, K, _ = W.shape
    theta = np.zeros((R, K))
    if K == 1:
        return theta, np.ones(R, dtype=bool)
    N = W + W.transpose(0, 2, 1)
    w = W.sum(axis=2)
    ones = np.full((K, K), 1.0 / K)
    active = np.ones(R, dtype=bool)
    eye = np.eye(K, dtype=bool)
    for _ in range(max_iter):
        ia = np.flatnonzero(active)
        if ia.size == 0:
            break
        th = theta[ia]
        P = expit(th[:, :, None] - th[:, None, :])
        Na = N[ia]
        g = w[ia] - (Na * P).sum(axis=2)
        V = Na * P * (1.0 - P)
        H = -V
        H[:, eye] += V.sum(axis=2)
        H += ones  # fixes the gauge: solution has sum(delta) = 0 since sum(g) = 0
        delta = np.linalg.solve(H, g[:, :, None])[:, :, 0]
        step = np.abs(delta).max(axis=1)
        scale = np.minimum(1.0, _NEWTON_MAX_STEP / np.maximum(step, 1e-300))
        th = th + delta * scale[:, None]
        theta[ia] = th - th.mean(axis=1, keepdims=True)
        done = step < tol
        active[ia[done]] = False
    return theta, ~active


def _strongly_connected_batch(W: np.ndarray) -> np.ndarray:
    """For R x K x K win matrices: is the 'has win mass over' digraph strongly connected?"""
    R, K, _ = W.shape
    reach = (W > 0) | np.eye(K, dtype=bool)
    steps = max(1, math.ceil(math.log2(max(K, 2))))
    r = reach.astype(np.float64)
    for _ in range(steps):
        r = ((r @ r) > 0).astype(np.float64)
    return r.reshape(R, -1).all(axis=1)


def fit_bt_matrix(W: np.ndarray) -> dict:
    """Bradley-Terry MLE on one K x K win matrix (ties already counted half each way).

    Returns ``theta`` (log-strengths, mean 0 over the core component, separated ones placed by
    ``SEPARATION_GAP``, unidentified ones NaN), ``status`` per checkpoint ("ok", "above",
    "below", "unidentified", "no_comparisons") and ``separated`` (bool).
    """
    W = np.asarray(W, dtype=float)
    K = W.shape[0]
    status = np.array(["ok"] * K, dtype=object)
    if K == 0:
        return {"theta": np.zeros(0), "status": status, "separated": False, "converged": True}
    beats = W > 0
    ncomp, labels = connected_components(sparse.csr_matrix(beats), directed=True, connection="strong")
    if ncomp == 1:
        theta, conv = _bt_newton(W[None])
        return {"theta": theta[0], "status": status, "separated": False, "converged": bool(conv[0])}

    N = W + W.T
    compared = N.sum(axis=1) > 0
    members = [np.flatnonzero(labels == c) for c in range(ncomp)]
    sizes = np.array([m.size if compared[m].any() else 0 for m in members])
    weight = np.array([N[np.ix_(m, m)].sum() for m in members])
    total = np.array([N[m].sum() for m in members])
    # core: the largest component, then most comparisons within it, then most comparisons overall
    core = int(np.lexsort((-total, -weight, -sizes))[0])
    # condensation DAG: edge c -> d if some member of c has win mass over some member of d
    D = np.zeros((ncomp, ncomp), dtype=bool)
    ii, jj = np.nonzero(beats)
    D[labels[ii], labels[jj]] = True
    np.fill_diagonal(D, False)
    reach = D | np.eye(ncomp, dtype=bool)
    for _ in range(max(1, math.ceil(math.log2(ncomp)))):
        reach = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0

    def layer(c: int, forward: bool, memo: dict) -> int:
        # longest path (in condensation edges) from c to core (forward) or core to c (backward)
        if c == core:
            return 0
        if c in memo:
            return memo[c]
        nxt = np.flatnonzero(D[c] if forward else D[:, c])
        ok = [d for d in nxt if (reach[d, core] if forward else reach[core, d])]
        memo[c] = 1 + max(layer(int(d), forward, memo) for d in ok)
        return memo[c]

    theta = np.full(K, np.nan)
    conv_all = True
    sub_theta = {}
    for c, m in enumerate(members):
        if m.size > 1:
            t, conv = _bt_newton(W[np.ix_(m, m)][None])
            sub_theta[c] = t[0]
            conv_all &= bool(conv[0])
        else:
            sub_theta[c] = np.zeros(1)
    theta[members[core]] = sub_theta[core]
    if sizes[core] == 0:
        status[members[core]] = "no_comparisons"
    top = float(np.max(sub_theta[core]))
    bottom = float(np.min(sub_theta[core]))
    memo_up, memo_down = {}, {}
    for c, m in enumerate(members):
        if c == core:
            continue
        if not compared[m].any():
            status[m] = "no_comparisons"
            continue
        st = sub_theta[c]
        if reach[c, core] and not reach[core, c]:
            k = layer(c, True, memo_up)
            theta[m] = top + k * SEPARATION_GAP + (st - st.min())
            status[m] = "above"
        elif reach[core, c] and not reach[c, core]:
            k = layer(c, False, memo_down)
            theta[m] = bottom - k * SEPARATION_GAP - (st.max() - st)
            status[m] = "below"
        else:
            status[m] = "unidentified"
    theta[status == "no_comparisons"] = np.nan
    if np.isfinite(theta[members[core]]).any():
        theta = theta - np.nanmean(theta[members[core]])
    return {"theta": theta, "status": status, "separated": True, "converged": conv_all}


def fit_bt_batch(Ws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit R win matrices (R x K x K). Returns theta (R x K) and a per-round 'separated' flag.

    Strongly connected rounds are fitted together by batched Newton; separated rounds (rare) are
    refitted one by one with :func:`fit_bt_matrix`.
    """
    Ws = np.asarray(Ws, dtype=float)
    ok = _strongly_connected_batch(Ws)
    theta = np.full(Ws.shape[:2], np.nan)
    if ok.any():
        theta[ok] = _bt_newton(Ws[ok])[0]
    for r in np.flatnonzero(~ok):
        theta[r] = fit_bt_matrix(Ws[r])["theta"]
    return theta, ~ok


def ranks_from_theta(theta: np.ndarray) -> np.ndarray:
    """Rank 1 = strongest; equal ratings share the best rank; NaN ratings get NaN rank."""
    t = np.asarray(theta, dtype=float)
    tt = np.where(np.isnan(t), -np.inf, t)
    r = 1.0 + (tt[..., None, :] > tt[..., :, None]).sum(axis=-1)
    return np.where(np.isnan(t), np.nan, r)


def rank_interval_from_intervals(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """The ranks each checkpoint can hold given the rating intervals [lo, hi], with ranks as in
    ``ranks_from_theta`` (1 + the number of checkpoints rated strictly higher): at best 1 + the
    number whose interval lies wholly above its own (surely higher), at worst 1 + the number
    whose upper end is above its lower end (possibly higher). A checkpoint without an interval
    (unidentified) gets NaN, and is not counted as higher than anyone."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    known = np.isfinite(lo) & np.isfinite(hi)
    others = ~np.eye(lo.size, dtype=bool) & known[None, :]  # [k, j]: j is another checkpoint with an interval
    with np.errstate(invalid="ignore"):
        surely = (lo[None, :] > hi[:, None]) & others
        possibly = (hi[None, :] > lo[:, None]) & others
    best = 1.0 + surely.sum(axis=1)
    worst = 1.0 + possibly.sum(axis=1)
    return np.where(known, best, np.nan), np.where(known, worst, np.nan)


# ----------------------------------------------------------------------------------------------
# Bootstraps
# ----------------------------------------------------------------------------------------------


def bootstrap_cell_counts_votes(battles: Battles, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """R x C cell counts: battles resampled with replacement (multinomial over distinct cells)."""
    if battles.n == 0:
        return np.zeros((rounds, battles.cells.size))
    p = battles.cell_counts / battles.cell_counts.sum()
    return rng.multinomial(battles.n, p, size=rounds).astype(float)


def bootstrap_cell_counts_clusters(battles: Battles, cluster_ids, rounds: int, rng: np.random.Generator,
                                   chunk: int = 250):
    """Yields chunks of R x C cell counts from resampling clusters with replacement."""
    G_C = battles.cluster_cell_matrix(cluster_ids)
    G = G_C.shape[0]
    GT = G_C.T.tocsr()
    if G == 0:
        yield np.zeros((rounds, battles.cells.size))
        return
    done = 0
    while done < rounds:
        r = min(chunk, rounds - done)
        mult = rng.multinomial(G, np.full(G, 1.0 / G), size=r).astype(float)  # r x G
        yield np.asarray((GT @ mult.T).T)
        done += r


def _pair_index(K: int):
    iu, ju = np.triu_indices(K, k=1)
    return iu, ju


def _winrate_from_W(W: np.ndarray, iu, ju):
    """Win rate of iu over ju for stacked W (... x K x K) -> (..., P)."""
    wins = W[..., iu, ju]
    tot = wins + W[..., ju, iu]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, wins / np.where(tot > 0, tot, 1.0), np.nan)


def bootstrap_p(samples: np.ndarray, null: float = 0.5) -> np.ndarray:
    """Two-sided percentile-bootstrap p-values of ``null`` per column (rounds on axis 0, NaN
    rounds left out): twice the smaller share of rounds on either side of it, each share
    counted (k + 1) / (R + 1) so that no p is 0; at most 1. The smallest p at which the
    percentile interval excludes ``null``: p <= alpha exactly when the (1 - alpha) interval
    lies on one side of it (up to the +1)."""
    s = np.asarray(samples, dtype=float)
    valid = ~np.isnan(s)
    rounds = valid.sum(axis=0)
    with np.errstate(invalid="ignore"):
        below = ((s <= null) & valid).sum(axis=0)
        above = ((s >= null) & valid).sum(axis=0)
    p = np.minimum(1.0, 2.0 * (np.minimum(below, above) + 1.0) / (rounds + 1.0))
    return np.where(rounds > 0, p, np.nan)


def _odds(rate: float) -> float:
    """rate / (1 - rate): how many of A's wins per one of B's (ties split); inf at 1, NaN undefined."""
    if rate is None or np.isnan(rate):
        return np.nan
    return np.inf if rate >= 1.0 else float(rate / (1.0 - rate))


def _distinct_per_pair(pair_of_vote: np.ndarray, ids, n_pairs: int):
    """How many distinct ids (prompts, annotators) each pair's comparisons come from."""
    if ids is None:
        return np.full(n_pairs, np.nan)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros(n_pairs)
    _, dense = np.unique(ids, return_inverse=True)  # 0..G-1: the key below stays small
    width = int(dense.max()) + 1
    combos = np.unique(pair_of_vote * width + dense.ravel())
    return np.bincount(combos // width, minlength=n_pairs).astype(float)


def _interval(samples: np.ndarray, confidence: float):
    """Percentile interval over rounds (axis 0), ignoring NaN rounds (all-NaN -> NaN)."""
    q = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        lo = np.nanquantile(samples, q, axis=0)
        hi = np.nanquantile(samples, 1.0 - q, axis=0)
    return lo, hi


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def json_ready(x):
    """Numpy -> plain Python, NaN/inf -> None (valid JSON)."""
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def pairwise_report(models: Sequence[str], model_a, model_b, outcome, prompt, annotator, a_on_left,
                    rounds: int = 1000, seed: int = 0, confidence: float = 0.95,
                    annotator_bootstrap: bool = True, timings: dict | None = None) -> dict:
    """All pairwise statistics of a side-by-side study as a plain (JSON-ready) dict."""
    t0 = time.perf_counter()
    K = len(models)
    bt = Battles(model_a, model_b, outcome, prompt, annotator, a_on_left, n_models=K)
    iu, ju = _pair_index(K)
    W = bt.win_matrix()
    t_collapse = time.perf_counter()

    # --- point estimates
    fit = fit_bt_matrix(W)
    theta = fit["theta"]
    t_fit = time.perf_counter()

    # counts per pair (lo < hi): lo wins, hi wins, ties
    cnt = np.zeros((K, K, 3))
    np.add.at(cnt, (bt.cell_lo, bt.cell_hi, bt.cell_o), bt.cell_counts)
    wins_i, wins_j, ties = cnt[iu, ju, 0], cnt[iu, ju, 1], cnt[iu, ju, 2]
    n_pair = wins_i + wins_j + ties
    s_pair = wins_i + ties / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        wr = np.where(n_pair > 0, s_pair / np.where(n_pair > 0, n_pair, 1), np.nan)
    w_lo, w_hi = wilson_interval(s_pair, n_pair, confidence)
    # Only pairs with a decisive comparison are tested: a pair never compared, or only tied,
    # has no sign test (None) and is not in Holm's family (it would only make it larger).
    tested = (wins_i + wins_j) > 0
    p_sign = np.array([sign_test(a, b) if t else np.nan for a, b, t in zip(wins_i, wins_j, tested)])
    p_holm = np.full(p_sign.size, np.nan)
    p_holm[tested] = holm(p_sign[tested])

    # --- bootstraps (independent child streams of one seed)
    ss = np.random.SeedSequence(seed)
    rng_prompt, rng_ann, rng_vote = (np.random.Generator(np.random.PCG64(s)) for s in ss.spawn(3))

    theta_p, wr_p, sep_p = [], [], 0
    for counts in bootstrap_cell_counts_clusters(bt, bt.prompt, rounds, rng_prompt):
        Wr = bt.win_matrix(counts)
        th, sep = fit_bt_batch(Wr)
        theta_p.append(th)
        wr_p.append(_winrate_from_W(Wr, iu, ju))
        sep_p += int(sep.sum())
    theta_p, wr_p = np.concatenate(theta_p), np.concatenate(wr_p)
    t_prompt = time.perf_counter()

    wr_a = None
    if annotator_bootstrap and bt.annotator is not None:
        wr_a = np.concatenate([
            _winrate_from_W(bt.win_matrix(c), iu, ju)
            for c in bootstrap_cell_counts_clusters(bt, bt.annotator, rounds, rng_ann)
        ])
    t_ann = time.perf_counter()

    theta_v, sep_v = fit_bt_batch(bt.win_matrix(bootstrap_cell_counts_votes(bt, rounds, rng_vote)))
    t_vote = time.perf_counter()

    tp_lo, tp_hi = _interval(theta_p, confidence)
    tv_lo, tv_hi = _interval(theta_v, confidence)
    rkp_lo, rkp_hi = rank_interval_from_intervals(tp_lo, tp_hi)
    rkv_lo, rkv_hi = rank_interval_from_intervals(tv_lo, tv_hi)
    wrp_lo, wrp_hi = _interval(wr_p, confidence)
    if wr_a is not None:
        wra_lo, wra_hi = _interval(wr_a, confidence)
    else:
        wra_lo = wra_hi = np.full(iu.size, np.nan)

    # Clusters behind each pair, and the significance that respects them: the paired bootstrap
    # over prompts (SPEC 3), Holm-corrected across the pairs it can test. A cluster interval
    # over fewer than MIN_CLUSTERS clusters is left out (None), and so is its test.
    pair_id = np.full((K, K), -1, dtype=np.int64)
    pair_id[iu, ju] = np.arange(iu.size)
    pair_of_vote = pair_id[np.minimum(bt.a, bt.b), np.maximum(bt.a, bt.b)]
    n_prompts = _distinct_per_pair(pair_of_vote, bt.prompt, iu.size)
    n_annotators = _distinct_per_pair(pair_of_vote, bt.annotator, iu.size)
    enough_prompts = n_prompts >= MIN_CLUSTERS
    enough_annotators = n_annotators >= MIN_CLUSTERS
    wrp_lo, wrp_hi = np.where(enough_prompts, wrp_lo, np.nan), np.where(enough_prompts, wrp_hi, np.nan)
    wra_lo, wra_hi = np.where(enough_annotators, wra_lo, np.nan), np.where(enough_annotators, wra_hi, np.nan)
    p_boot = np.where(enough_prompts & (n_pair > 0), bootstrap_p(wr_p), np.nan)
    boot_tested = ~np.isnan(p_boot)
    p_boot_holm = np.full(p_boot.size, np.nan)
    p_boot_holm[boot_tested] = holm(p_boot[boot_tested])
    alpha = 1.0 - confidence

    def verdict(p: int) -> str:
        if n_pair[p] == 0:
            return "not compared"
        if not enough_prompts[p]:
            return "too few prompts"
        if p_boot_holm[p] <= alpha:
            return "a better" if wr[p] > 0.5 else "b better"
        return "not distinguishable"
    rank = ranks_from_theta(theta)

    def elo(t):
        return ELO_ANCHOR + ELO_SCALE * np.asarray(t)

    ratings = []
    for k in range(K):
        ratings.append({
            "model": models[k], "theta": theta[k], "elo": elo(theta[k]), "rank": rank[k],
            "status": fit["status"][k],
            "wins": float(W[k].sum()), "losses": float(W[:, k].sum()),
            "theta_ci_prompt": [tp_lo[k], tp_hi[k]], "elo_ci_prompt": [elo(tp_lo[k]), elo(tp_hi[k])],
            "theta_ci_vote": [tv_lo[k], tv_hi[k]], "elo_ci_vote": [elo(tv_lo[k]), elo(tv_hi[k])],
            "rank_interval_prompt": [rkp_lo[k], rkp_hi[k]], "rank_interval_vote": [rkv_lo[k], rkv_hi[k]],
        })

    pairs = []
    for p in range(iu.size):
        i, j = int(iu[p]), int(ju[p])
        pairs.append({
            "a": models[i], "b": models[j], "n": n_pair[p], "wins_a": wins_i[p], "wins_b": wins_j[p],
            "ties": ties[p], "win_rate_a": wr[p], "wilson": [w_lo[p], w_hi[p]],
            "bootstrap_prompt": [wrp_lo[p], wrp_hi[p]], "bootstrap_annotator": [wra_lo[p], wra_hi[p]],
            # "A won k times as many comparisons as B" (the paper's headline), ties split: the
            # odds of the win rate; its interval is the prompt-bootstrap one, mapped (monotone).
            "win_odds": _odds(wr[p]), "win_odds_bootstrap_prompt": [_odds(wrp_lo[p]), _odds(wrp_hi[p])],
            "prompts": n_prompts[p], "annotators": n_annotators[p],
            "sign_test_p": p_sign[p], "holm_p": p_holm[p],
            "bootstrap_p": p_boot[p], "bootstrap_holm_p": p_boot_holm[p], "verdict": verdict(p),
        })
    with np.errstate(invalid="ignore", divide="ignore"):
        N = W + W.T
        matrix = np.where(N > 0, W / np.where(N > 0, N, 1), np.nan)
    np.fill_diagonal(matrix, np.nan)

    position = None
    if bt.a_on_left is not None:
        left_won = np.where(bt.a_on_left, bt.o == A_WINS, bt.o == B_WINS)
        n_tie = int((bt.o == TIE).sum())
        n_left = int((left_won & (bt.o != TIE)).sum())
        n_right = bt.n - n_tie - n_left
        s = n_left + n_tie / 2.0
        lo, hi = wilson_interval(s, bt.n, confidence)
        position = {"n": bt.n, "left_wins": n_left, "right_wins": n_right, "ties": n_tie,
                    "left_win_rate": s / bt.n if bt.n else None, "wilson": [lo, hi],
                    "sign_test_p": sign_test(n_left, n_right)}
    t_end = time.perf_counter()
    if timings is not None:
        timings.update(collapse_s=t_collapse - t0, bt_fit_s=t_fit - t_collapse,
                       bootstrap_prompt_s=t_prompt - t_fit, bootstrap_annotator_s=t_ann - t_prompt,
                       bootstrap_vote_s=t_vote - t_ann, total_s=t_end - t0)

    return json_ready({
        "inputs": {"judgments": bt.n, "models": list(models), "rounds": rounds, "seed": seed,
                   "confidence": confidence,
                   "prompts": int(np.unique(bt.prompt).size) if bt.prompt is not None else None,
                   "annotators": int(np.unique(bt.annotator).size) if bt.annotator is not None else None},
        "bradley_terry": {"ratings": ratings, "separated": fit["separated"], "converged": fit["converged"],
                          "separated_rounds_prompt": sep_p, "separated_rounds_vote": int(sep_v.sum())},
        "pairs": pairs,
        "win_rate_matrix": matrix,
        "position_bias": position,
        "methods": {
            "win_rate": "(wins + ties/2) / comparisons",
            "win_odds": "win rate / (1 - win rate): A's wins per one of B's, ties split (2 = twice as many); "
                        "its interval maps the prompt-bootstrap interval of the win rate",
            "wilson": "Wilson score interval, successes = wins + ties/2, n = comparisons incl. ties",
            "cluster_bootstrap": "clusters (prompts; annotators) resampled with replacement, percentile",
            "vote_bootstrap": "multinomial over distinct (pair, outcome) cells, percentile",
            "bradley_terry": "unregularised MLE, tie = half win each side, Newton on collapsed counts",
            "scale": "theta mean 0 over all checkpoints (the core component if separated); "
                     f"elo = {ELO_ANCHOR:g} + 400/ln10 * theta",
            "separation": f"non-core strongly connected components placed {SEPARATION_GAP:.4g} log-odds "
                          "per layer above/below the core (status above/below), else unidentified (null)",
            "rank_interval": "the ranks a checkpoint can hold given the rating intervals: from 1 + the number "
                             "of checkpoints whose interval lies wholly above its own (surely higher) to 1 + "
                             "the number whose upper end is above its lower end (possibly higher)",
            "sign_test": "exact two-sided binomial over single votes, ties excluded (votes on one prompt are "
                         "not independent: descriptive); Holm step-down across the pairs with at least one "
                         "decisive comparison (a pair never compared, or only tied, is not tested)",
            "bootstrap_test": "paired bootstrap over prompts: two-sided percentile-bootstrap p of win rate 0.5, "
                              "(k + 1) / (R + 1) per side; Holm step-down across the pairs with at least "
                              f"{MIN_CLUSTERS} prompts",
            "verdict": f"'a better' or 'b better' when the Holm-corrected prompt-bootstrap p is at most "
                       f"1 - confidence; 'not distinguishable' otherwise; 'too few prompts' under {MIN_CLUSTERS}",
            "min_clusters": f"cluster intervals over fewer than {MIN_CLUSTERS} prompts or annotators are not "
                            "reported (null)",
            "position_bias": "left side's win rate, ties half, Wilson interval",
        },
    })
