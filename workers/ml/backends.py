"""Image generators behind one interface, cached per worker process by fingerprint.

Nothing is loaded at import time: a backend is built on first use inside the worker
process that needs it and kept for the next task with the same fingerprint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from workers.ml import procedural


class UnsupportedBackend(ValueError):
    pass


@dataclass(frozen=True)
class GenerationParams:
    width: int = 512
    height: int = 512
    num_inference_steps: int = 25
    guidance_scale: float = 7.5


@dataclass(frozen=True)
class BackendSpec:
    backend: str
    location: str = ""
    base_model: str = ""
    config: dict = field(default_factory=dict, hash=False, compare=False)
    fingerprint: str = ""


@dataclass(frozen=True)
class Generated:
    image: Image.Image
    metadata: dict = field(default_factory=dict)


class GeneratorBackend(Protocol):
    def generate(self, prompts: list[str], seeds: list[int], params: GenerationParams) -> list[Generated]:
        """One image per (prompt, seed), each reproducible from its seed alone."""


class ProceduralBackend:
    def __init__(self, error_rate: float = 0.0):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"config.error_rate must be within [0, 1], not {error_rate}")
        self.error_rate = error_rate

    def generate(self, prompts, seeds, params):
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            r = procedural.render(prompt, seed=seed, size=(params.width, params.height), error_rate=self.error_rate)
            meta = {} if r.asked is None else {"matches_prompt": r.matches_prompt, "drawn": r.drawn.describe()}
            out.append(Generated(r.image, meta))
        return out


_cache: dict[tuple, GeneratorBackend] = {}


def get_backend(spec: BackendSpec) -> GeneratorBackend:
    key = (spec.backend, spec.location, spec.base_model, spec.fingerprint, repr(sorted(spec.config.items())))
    if key not in _cache:
        _cache[key] = _build(spec)
    return _cache[key]


def _build(spec: BackendSpec) -> GeneratorBackend:
    if spec.backend == "procedural":
        return ProceduralBackend(error_rate=float(spec.config.get("error_rate", 0.0)))
    raise UnsupportedBackend(f"backend {spec.backend!r} is not available in this worker")
