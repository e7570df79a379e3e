"""TextNorm (SPEC section 2) against values computed by hand."""
import math
import subprocess
import sys

import numpy as np
import pytest

from workers.ml.textnorm import (
    ensemble_mean, ensemble_uncertainty, normalized_logits, prompt_set, textnorm,
)


def test_prompt_set_puts_the_original_first_and_deduplicates():
    assert prompt_set("x", ["y", "x", "z", "y"]) == ["x", "y", "z"]
    assert prompt_set("x", []) == ["x"]
    with pytest.raises(ValueError, match="prompt"):
        prompt_set("  ", ["y"])


def test_minmax_by_hand():
    # l = [1, 2, 3] -> l~ = [0, 0.5, 1]; p = 1 / (1 + e^0.5 + e^1)
    assert textnorm([1.0, 2.0, 3.0])[0] == pytest.approx(1 / (1 + math.exp(0.5) + math.e))
    # scale s = 3: [0, 1] -> [0, 3]; original is the minimum
    assert textnorm([0.2, 0.7], scale=3.0)[0] == pytest.approx(1 / (1 + math.exp(3)))
    # the original is the maximum: [5, 1, 3] -> [1, 0, 0.5] (s = 1)
    assert textnorm([5.0, 1.0, 3.0])[0] == pytest.approx(math.e / (math.e + 1 + math.exp(0.5)))
    np.testing.assert_allclose(normalized_logits([[1.0, 3.0, 2.0]], scale=2.0), [[0.0, 2.0, 1.0]])


def test_max_equals_min_gives_one_over_the_set_size():
    assert textnorm([0.3, 0.3, 0.3, 0.3])[0] == pytest.approx(0.25)
    np.testing.assert_allclose(normalized_logits([[2.0, 2.0]], scale=5.0), [[0.0, 0.0]])


def test_a_one_prompt_set_scores_one():
    assert textnorm([0.42])[0] == pytest.approx(1.0)
    assert textnorm([[0.42]], normalize="none", temperature=0.1)[0] == pytest.approx(1.0)


def test_temperature_variant_by_hand():
    # l / tau = [2, 4]: p = 1 / (1 + e^2)
    assert textnorm([1.0, 2.0], normalize="none", temperature=0.5)[0] == pytest.approx(1 / (1 + math.exp(2)))
    # large logits stay finite (softmax is shifted)
    assert textnorm([1000.0, 999.0], normalize="none")[0] == pytest.approx(math.e / (math.e + 1))


def test_batch_rows_are_independent():
    batch = np.array([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [3.0, 1.0, 2.0]])
    out = textnorm(batch, scale=2.0)
    assert out.shape == (3,)
    for row, value in zip(batch, out, strict=True):
        assert value == pytest.approx(textnorm(row, scale=2.0)[0])
    assert out[1] == pytest.approx(1 / 3)


def test_ensembles_by_hand():
    p = [[0.2, 0.6], [0.4, 0.6]]  # two models, two images
    np.testing.assert_allclose(ensemble_mean(p), [0.3, 0.6])
    # population variance: ((0.2-0.3)^2 + (0.4-0.3)^2) / 2 = 0.01
    np.testing.assert_allclose(ensemble_uncertainty(p, lam=0.5), [0.3 - 0.005, 0.6])
    np.testing.assert_allclose(ensemble_uncertainty([[0.1, 0.2, 0.9]], lam=1.0), [0.1, 0.2, 0.9])
    three = [[0.1], [0.5], [0.9]]  # variance ((0.4)^2 + 0 + (0.4)^2) / 3
    np.testing.assert_allclose(ensemble_uncertainty(three, lam=0.1), [0.5 - 0.1 * 0.32 / 3])


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="normalize"):
        textnorm([1.0, 2.0], normalize="softmax")
    with pytest.raises(ValueError, match="scale"):
        textnorm([1.0, 2.0], scale=0)
    with pytest.raises(ValueError, match="temperature"):
        textnorm([1.0, 2.0], normalize="none", temperature=-1)
    with pytest.raises(ValueError, match="finite"):
        textnorm([1.0, float("nan")])
    with pytest.raises(ValueError, match="lambda"):
        ensemble_uncertainty([[0.5]], lam=-0.1)


def test_textnorm_imports_without_django_or_torch_and_ml_never_imports_django():
    code = ("import sys, workers.ml.textnorm, workers.ml.contrastive; "
            "bad = [m for m in ('torch', 'django', 'annotate') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    from pathlib import Path

    ml = Path(__file__).resolve().parents[2] / "workers" / "ml"
    for path in ml.glob("*.py"):
        text = path.read_text()
        assert "import django" not in text and "from django" not in text, path
        assert "from annotate" not in text and "import annotate" not in text, path
