"""Rating (per-image) study statistics: each checkpoint's aligned rate, and the difference
between two checkpoints, with intervals that respect the prompts.

Pure numpy/scipy. Input: parallel arrays, one entry per counted yes/no answer (on the 1-5
scale 4-5 is yes, 1-2 no; 3 is left out before this point):

* ``model``: int index into ``models`` (the checkpoint that made the image);
* ``aligned``: bool;
* ``prompt``: int cluster id.

* Aligned rate = aligned / answers, with a Wilson interval over the answers (it treats every
  answer as independent: a few images per prompt and a few answers per image are not).
* Prompt bootstrap: prompts resampled with replacement, each with all of its answers for every
  checkpoint (the checkpoints share the prompts, so the difference between two is paired);
  percentile intervals, ``rounds`` rounds from ``seed``. Not reported over fewer than
  ``MIN_CLUSTERS`` prompts.
* Difference of two checkpoints' rates: the percentile-bootstrap p of a difference of 0
  (``pairwise.bootstrap_p``), Holm-corrected across the pairs it can test, and a verdict.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from workers.stats.pairwise import MIN_CLUSTERS, _interval, bootstrap_p, holm, wilson_interval


def rating_report(models: Sequence[str], model, aligned, prompt, rounds: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> dict:
    """Per checkpoint and per pair of checkpoints, as a plain dict (NaN where undefined)."""
    model = np.asarray(model, dtype=np.int64).ravel()
    aligned = np.asarray(aligned, dtype=bool).ravel()
    prompt = np.asarray(prompt, dtype=np.int64).ravel()
    if not (model.size == aligned.size == prompt.size):
        raise ValueError("model, aligned and prompt must have the same length")
    k = len(models)
    if model.size and (model.min() < 0 or model.max() >= k):
        raise ValueError("model index out of range")
    _, cluster = np.unique(prompt, return_inverse=True)
    g = int(cluster.max()) + 1 if cluster.size else 0
    yes = np.zeros((g, k))
    n = np.zeros((g, k))
    np.add.at(n, (cluster, model), 1.0)
    np.add.at(yes, (cluster, model), aligned.astype(float))
    total_yes, total_n = yes.sum(axis=0), n.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(total_n > 0, total_yes / np.where(total_n > 0, total_n, 1), np.nan)
    w_lo, w_hi = wilson_interval(total_yes, total_n, confidence)
    prompts_of = (n > 0).sum(axis=0)

    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    weights = rng.multinomial(g, np.full(g, 1.0 / g), size=rounds).astype(float) if g else np.zeros((rounds, 0))
    boot_yes, boot_n = weights @ yes, weights @ n  # rounds x k
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_rate = np.where(boot_n > 0, boot_yes / np.where(boot_n > 0, boot_n, 1), np.nan)
    b_lo, b_hi = _interval(boot_rate, confidence)
    enough = prompts_of >= MIN_CLUSTERS
    b_lo, b_hi = np.where(enough, b_lo, np.nan), np.where(enough, b_hi, np.nan)

    checkpoints = [{"model": models[i], "n": int(total_n[i]), "aligned": int(total_yes[i]), "aligned_rate": rate[i],
                    "prompts": int(prompts_of[i]), "wilson": [w_lo[i], w_hi[i]], "bootstrap_prompt": [b_lo[i], b_hi[i]]}
                   for i in range(k)]
    pairs = _pairs(models, yes, n, rate, boot_rate, confidence)
    return {"checkpoints": checkpoints, "pairs": pairs,
            "inputs": {"answers": int(model.size), "prompts": g, "rounds": rounds, "seed": seed,
                       "confidence": confidence}}


def _pairs(models, yes, n, rate, boot_rate, confidence: float) -> list[dict]:
    """Every pair of checkpoints: the difference of their rates (each over all of its answers),
    its interval from the same resampled prompts for both; tested when they share at least
    MIN_CLUSTERS prompts."""
    k = len(models)
    iu, ju = np.triu_indices(k, k=1)
    shared = ((n[:, iu] > 0) & (n[:, ju] > 0)).sum(axis=0)
    diff = rate[iu] - rate[ju]
    boot_diff = boot_rate[:, iu] - boot_rate[:, ju]
    d_lo, d_hi = _interval(boot_diff, confidence)
    testable = (shared >= MIN_CLUSTERS) & ~np.isnan(diff)
    p = np.where(testable, bootstrap_p(boot_diff, null=0.0), np.nan)
    p_holm = np.full(p.size, np.nan)
    p_holm[testable] = holm(p[testable])
    out = []
    for q in range(iu.size):
        if np.isnan(diff[q]):
            verdict = "not compared"
        elif not testable[q]:
            verdict = "too few prompts"
        elif p_holm[q] <= 1.0 - confidence:
            verdict = "a better" if diff[q] > 0 else "b better"
        else:
            verdict = "not distinguishable"
        out.append({"a": models[iu[q]], "b": models[ju[q]], "shared_prompts": int(shared[q]),
                    "difference": diff[q],
                    "bootstrap_prompt": [d_lo[q], d_hi[q]] if testable[q] else [np.nan, np.nan],
                    "bootstrap_p": p[q], "bootstrap_holm_p": p_holm[q], "verdict": verdict})
    return out
