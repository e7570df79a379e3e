#!/usr/bin/env python
"""Benchmark of the pairwise statistics (workers/stats/pairwise.py), one BLAS thread.

Synthetic side-by-side study: 1,000,000 judgments, 10 checkpoints, 2,000 prompts, 200
annotators, drawn from a Bradley-Terry model with a per-prompt effect and 15% ties. Reports:

- bt_fit_s: Bradley-Terry fit from the judgment arrays (collapse to cells + Newton), target <= 1 s;
- bootstrap_prompt_s: 1,000 rounds clustered by prompt (multiplicities -> cell counts -> K x K
  -> batched fits), target <= 3 s;
- bootstrap_vote_s: 1,000 vote-level rounds (multinomial over distinct cells);
- report_s: the whole ``pairwise_report`` (win rates, Wilson, prompt and annotator bootstraps,
  BT with both bootstraps and rank intervals, sign tests + Holm, position bias);
- agreement_s: Fleiss, Krippendorff, pairwise Cohen (19,900 annotator pairs) and each
  annotator against the leave-one-out majority, over the same judgments (items: a prompt and a
  pair of checkpoints; one answer per annotator and item); whole_report_statistics_s =
  report_s + agreement_s, target <= 5 s;
- peak_rss_mb: resource.getrusage maxrss, target <= 1024;
- a straightforward reference on a slice (100,000 votes, 50 rounds): votes resampled one by one
  with numpy choice, a per-vote BT refit (scipy L-BFGS on the per-vote log-likelihood) per round;
  speed-up = reference seconds per (round x vote) / ours (prompt bootstrap) per (round x vote).

    .venv/bin/python scripts/bench_stats.py [--n 1000000] [--rounds 1000]

stdout gets exactly one JSON line.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import optimize  # noqa: E402
from scipy.special import expit, log_expit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.stats import agreement as ag  # noqa: E402
from workers.stats import pairwise as pw  # noqa: E402


def synthetic(n, K, n_prompts, n_ann, seed=0):
    rng = np.random.default_rng(seed)
    true = np.linspace(-1.0, 1.0, K)
    a = rng.integers(0, K, n)
    b = (a + rng.integers(1, K, n)) % K
    prompt = rng.integers(0, n_prompts, n)
    shift = rng.normal(0, 0.3, (n_prompts, K))  # prompt x checkpoint effect
    logit = true[a] - true[b] + shift[prompt, a] - shift[prompt, b]
    o = np.where(rng.random(n) < expit(logit), pw.A_WINS, pw.B_WINS)
    o = np.where(rng.random(n) < 0.15, pw.TIE, o)
    return true, a, b, o, prompt, rng.integers(0, n_ann, n), rng.random(n) < 0.5


def reference_fit(a, b, o, K):
    """Per-vote BT MLE: scipy L-BFGS on the per-vote log-likelihood (ties as two half rows)."""
    wa = (o == pw.A_WINS) + 0.5 * (o == pw.TIE)
    wb = (o == pw.B_WINS) + 0.5 * (o == pw.TIE)

    def f(t):
        d = t[a] - t[b]
        nll = -(wa * log_expit(d) + wb * log_expit(-d)).sum()
        r = wa - (wa + wb) * expit(d)  # d nll / d d = -r
        g = -(np.bincount(a, r, K) - np.bincount(b, r, K))
        return nll, g

    t = optimize.minimize(f, np.zeros(K), jac=True, method="L-BFGS-B", options={"gtol": 1e-8}).x
    return t - t.mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--annotators", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--ref-n", type=int, default=100_000)
    ap.add_argument("--ref-rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    K, R = args.models, args.rounds
    true, a, b, o, prompt, ann, left = synthetic(args.n, K, args.prompts, args.annotators, args.seed)
    models = [f"ckpt{i}" for i in range(K)]

    t0 = time.perf_counter()
    bt = pw.Battles(a, b, o, prompt, ann, left, n_models=K)
    fit = pw.fit_bt_matrix(bt.win_matrix())
    bt_fit_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    th_p = np.concatenate([pw.fit_bt_batch(bt.win_matrix(c))[0]
                           for c in pw.bootstrap_cell_counts_clusters(bt, prompt, R, rng)])
    ranks = pw.ranks_from_theta(th_p)
    np.quantile(th_p, [0.025, 0.975], axis=0), np.quantile(ranks, [0.025, 0.975], axis=0)
    boot_prompt_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    th_v = pw.fit_bt_batch(bt.win_matrix(pw.bootstrap_cell_counts_votes(bt, R, rng)))[0]
    np.quantile(th_v, [0.025, 0.975], axis=0)
    boot_vote_s = time.perf_counter() - t0

    timings = {}
    t0 = time.perf_counter()
    rep = pw.pairwise_report(models, a, b, o, prompt, ann, left, rounds=R, seed=args.seed, timings=timings)
    report_s = time.perf_counter() - t0
    json.dumps(rep, allow_nan=False)

    # agreement over the same judgments: an item is a prompt and an unordered pair of
    # checkpoints, an answer is A, B or tie in the item's terms; one answer per annotator and item
    t0 = time.perf_counter()
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    item = (prompt.astype(np.int64) * K + lo) * K + hi
    answer = np.where(o == pw.TIE, 2, np.where((o == pw.A_WINS) == (a == lo), 0, 1))
    _, once = np.unique(item * args.annotators + ann, return_index=True)
    once.sort()
    matrix = ag.rating_matrix(item[once].tolist(), ann[once].tolist(), answer[once].tolist(), categories=[0, 1, 2])
    agreement = ag.agreement_report(matrix).to_dict()
    agreement_s = time.perf_counter() - t0
    json.dumps(agreement, allow_nan=False)

    # straightforward reference on a slice
    m = args.ref_n
    sa, sb, so = a[:m], b[:m], o[:m]
    rrng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    ref = []
    for _ in range(args.ref_rounds):
        idx = rrng.choice(m, size=m, replace=True)
        ref.append(reference_fit(sa[idx], sb[idx], so[idx], K))
    ref_s = time.perf_counter() - t0
    ref_point = reference_fit(sa, sb, so, K)
    ours_point = pw.fit_bt_matrix(pw.Battles(sa, sb, so, n_models=K).win_matrix())["theta"]

    per_ref = ref_s / (args.ref_rounds * m)
    per_ours = boot_prompt_s / (R * args.n)
    per_ours_vote = boot_vote_s / (R * args.n)
    theta = fit["theta"]
    out = {
        "bench": "pairwise_stats", "judgments": args.n, "checkpoints": K, "prompts": args.prompts,
        "annotators": args.annotators, "rounds": R, "seed": args.seed, "blas_threads": 1,
        "bt_fit_s": round(bt_fit_s, 4),
        "bootstrap_prompt_s": round(boot_prompt_s, 4),
        "bootstrap_vote_s": round(boot_vote_s, 4),
        "report_s": round(report_s, 4),
        "report_breakdown_s": {k: round(v, 4) for k, v in timings.items()},
        "agreement_s": round(agreement_s, 4),
        "agreement_judgments": int(once.size),
        "whole_report_statistics_s": round(report_s + agreement_s, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "true_order_recovered": bool((np.argsort(theta) == np.argsort(true)).all()),
        "reference": {"votes": m, "rounds": args.ref_rounds, "seconds": round(ref_s, 3),
                      "method": "numpy choice per vote + scipy L-BFGS per-vote BT refit per round",
                      "point_fit_max_abs_diff_vs_ours": float(np.abs(ref_point - ours_point).max())},
        "speedup_per_round_per_vote_prompt_bootstrap": round(per_ref / per_ours, 1),
        "speedup_per_round_per_vote_vote_bootstrap": round(per_ref / per_ours_vote, 1),
        "targets": {"bt_fit_s": 1.0, "bootstrap_prompt_s": 3.0, "bootstrap_vote_s": 1.4,
                    "whole_report_statistics_s": 5.0, "peak_rss_mb": 1024},
    }
    out["targets_met"] = bool(out["bt_fit_s"] <= 1 and boot_prompt_s <= 3 and boot_vote_s <= 1.4
                              and report_s + agreement_s <= 5 and out["peak_rss_mb"] <= 1024)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
