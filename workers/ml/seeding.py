"""Deterministic per-image seeds: image (seed, index) can be regenerated on its own."""
import numpy as np


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of ``seed``, independent of batch composition."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)
