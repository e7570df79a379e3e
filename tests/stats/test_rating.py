"""workers.stats.rating: aligned rates with Wilson and prompt-bootstrap intervals, and the
difference between two checkpoints with its paired prompt bootstrap, Holm and verdict."""
import numpy as np
import pytest

from workers.stats import pairwise as pw
from workers.stats.rating import rating_report


def answers(per_prompt: dict[int, tuple[list[bool], list[bool]]]):
    """{prompt: (checkpoint 0's answers, checkpoint 1's answers)} -> model, aligned, prompt arrays."""
    model, aligned, prompt = [], [], []
    for p, sides in per_prompt.items():
        for k, side in enumerate(sides):
            model += [k] * len(side)
            aligned += side
            prompt += [p] * len(side)
    return model, aligned, prompt


def test_rates_wilson_and_counts_by_hand():
    model, aligned, prompt = answers({0: ([True, True, False], [False]), 1: ([True], [True, False])})
    r = rating_report(["a", "b"], model, aligned, prompt, rounds=200)
    a, b = r["checkpoints"]
    assert (a["n"], a["aligned"], a["aligned_rate"], a["prompts"]) == (4, 3, 0.75, 2)
    assert (b["n"], b["aligned"], b["aligned_rate"]) == (3, 1, pytest.approx(1 / 3))
    assert a["wilson"] == list(pw.wilson_interval(3.0, 4.0))
    # 2 prompts: too few for a cluster interval or a verdict
    assert np.isnan(a["bootstrap_prompt"]).all() and r["pairs"][0]["verdict"] == "too few prompts"
    assert r["pairs"][0]["difference"] == pytest.approx(0.75 - 1 / 3)


def test_a_clustered_difference_is_not_called_from_the_answer_count():
    """12 prompts, 20 answers per prompt and checkpoint: a is aligned on 8 prompts, b on 6.
    480 answers make the difference look precise; 12 prompts do not, and the verdict follows
    the prompts."""
    per_prompt = {}
    for p in range(12):
        a_ok = p < 8
        b_ok = p < 4 or p >= 10
        per_prompt[p] = ([a_ok] * 20, [b_ok] * 20)
    model, aligned, prompt = answers(per_prompt)
    r = rating_report(["a", "b"], model, aligned, prompt, rounds=1000)
    (pair,) = r["pairs"]
    assert pair["difference"] == pytest.approx(8 / 12 - 6 / 12)
    lo, hi = pair["bootstrap_prompt"]
    assert lo < 0 < hi and pair["verdict"] == "not distinguishable" and pair["bootstrap_p"] > 0.05
    # Wilson over 240 answers each would not overlap much: it is the wrong unit here
    a, b = r["checkpoints"]
    assert a["bootstrap_prompt"][1] - a["bootstrap_prompt"][0] > 2 * (a["wilson"][1] - a["wilson"][0])


def test_a_clear_difference_gets_a_verdict_and_holm_is_over_testable_pairs():
    per_prompt = {p: ([True] * 3, [p % 5 == 0] * 3) for p in range(30)}
    model, aligned, prompt = answers(per_prompt)
    model += [2] * 3  # a third checkpoint on one prompt only
    aligned += [True] * 3
    prompt += [0] * 3
    r = rating_report(["a", "b", "c"], model, aligned, prompt, rounds=1000, seed=4)
    by = {(p["a"], p["b"]): p for p in r["pairs"]}
    assert by[("a", "b")]["verdict"] == "a better" and by[("a", "b")]["bootstrap_prompt"][0] > 0
    assert by[("a", "b")]["bootstrap_holm_p"] == by[("a", "b")]["bootstrap_p"]  # the only testable pair
    assert by[("a", "c")]["verdict"] == "too few prompts" and np.isnan(by[("a", "c")]["bootstrap_holm_p"])
    flipped = rating_report(["b", "a"], [1 - m if m < 2 else m for m in model[:-3]], aligned[:-3], prompt[:-3],
                            rounds=1000)
    assert flipped["pairs"][0]["verdict"] == "b better"
    again = rating_report(["a", "b", "c"], model, aligned, prompt, rounds=1000, seed=4)
    assert repr(again) == repr(r)  # same seed, same figures


def test_bad_input():
    with pytest.raises(ValueError):
        rating_report(["a"], [0, 1], [True, False], [0, 0])
    with pytest.raises(ValueError):
        rating_report(["a"], [0], [True, False], [0])
    empty = rating_report(["a", "b"], [], [], [], rounds=10)
    assert empty["checkpoints"][0]["n"] == 0 and empty["pairs"][0]["verdict"] == "not compared"
