"""TextNorm (SPEC section 2): a reward calibrated against contrastive prompts.

Pure Python and numpy: importable without Django or torch. Every function works on a batch
of images at once: ``logits`` has one row per image and one column per prompt of the
prompt set P, with the original prompt in column 0.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

MINMAX = "minmax"
NONE = "none"
NORMALIZE_CHOICES = (MINMAX, NONE)


def prompt_set(prompt: str, contrastive: Iterable[str]) -> list[str]:
    """P = [x] + de-duplicated C(x) without x: the original is always index 0."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    return [prompt, *(t for t in dict.fromkeys(contrastive) if t != prompt)]


def _as_logits(logits) -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"logits must have shape (images, prompts) with at least one prompt, not {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("logits must be finite")
    return arr


def normalized_logits(logits, *, normalize: str = MINMAX, scale: float = 1.0,
                      temperature: float = 1.0) -> np.ndarray:
    """l~ per image. Min-max (authors' code): s * (l - min) / (max - min), all equal (zero)
    when max == min. ``normalize="none"`` (paper): l / tau."""
    arr = _as_logits(logits)
    if normalize == MINMAX:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, not {scale}")
        low = arr.min(axis=1, keepdims=True)
        span = arr.max(axis=1, keepdims=True) - low
        safe = np.where(span > 0, span, 1.0)
        return np.where(span > 0, scale * (arr - low) / safe, 0.0)
    if normalize == NONE:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        return arr / temperature
    raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, not {normalize!r}")


def textnorm(logits, *, normalize: str = MINMAX, scale: float = 1.0, temperature: float = 1.0) -> np.ndarray:
    """p_m(x, y) = softmax(l~)_0 for every image (row): shape (images,)."""
    z = normalized_logits(logits, normalize=normalize, scale=scale, temperature=temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 0] / e.sum(axis=1)


def _stack_models(probabilities: Sequence) -> np.ndarray:
    arr = np.asarray(probabilities, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError("probabilities must have shape (models, images) with at least one model")
    return arr


def ensemble_mean(probabilities: Sequence) -> np.ndarray:
    """R = mean_m p_m, per image. ``probabilities``: one row per reward model."""
    return _stack_models(probabilities).mean(axis=0)


def ensemble_uncertainty(probabilities: Sequence, *, lam: float) -> np.ndarray:
    """R = mean_m p_m - lambda * mean_m (p_m - mean_m p_m)^2 (population variance), per image."""
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, not {lam}")
    arr = _stack_models(probabilities)
    return arr.mean(axis=0) - lam * arr.var(axis=0, ddof=0)
