"""Image generators behind one interface, cached per worker process.

Nothing is loaded at import time: a backend is built on first use inside the worker
process that needs it (never in the Celery parent) and kept for the next task with the
same checkpoint fingerprint, dtype and compile setting. torch and diffusers are imported
only when a diffusers-based backend is built.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from workers.ml import procedural


class UnsupportedBackend(ValueError):
    pass


class CheckpointError(ValueError):
    """A checkpoint or job setting that cannot be used as given; the message names the field."""


# Name -> (diffusers scheduler class, config overrides). "" keeps the checkpoint's own.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def scheduler_check(name: str) -> str:
    if name and name not in SCHEDULERS:
        raise CheckpointError(f"scheduler {name!r} is not one of {', '.join(sorted(SCHEDULERS))} (field: scheduler)")
    return name


@dataclass(frozen=True)
class GenerationParams:
    width: int = 512
    height: int = 512
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    scheduler: str = ""  # a name in SCHEDULERS; "" keeps the checkpoint's


@dataclass(frozen=True)
class BackendSpec:
    backend: str
    location: str = ""
    base_model: str = ""
    config: dict = field(default_factory=dict, hash=False, compare=False)
    fingerprint: str = ""

    @property
    def cache_key(self) -> tuple:
        # The fingerprint covers weights and config; without one, the location and config stand in.
        return (self.backend, self.fingerprint or (self.location, self.base_model,
                                                   repr(sorted(self.config.items()))))


@dataclass(frozen=True)
class Generated:
    image: Image.Image
    metadata: dict = field(default_factory=dict)


class GeneratorBackend(Protocol):
    def generate(self, prompts: list[str], seeds: list[int], params: GenerationParams) -> list[Generated]:
        """One image per (prompt, seed), each reproducible from its seed alone."""


class ProceduralBackend:
    compiled = False

    def __init__(self, error_rate: float = 0.0, salt: str = ""):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"config.error_rate must be within [0, 1], not {error_rate}")
        self.error_rate = error_rate
        self.salt = salt  # the checkpoint's: which of its images are drawn wrong (procedural.render)

    def warm_up(self, params, batch_size: int) -> float:
        return 0.0

    def generate(self, prompts, seeds, params):
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            r = procedural.render(prompt, seed=seed, size=(params.width, params.height), error_rate=self.error_rate,
                                  salt=self.salt)
            meta = {} if r.asked is None else {"matches_prompt": r.matches_prompt, "drawn": r.drawn.describe()}
            out.append(Generated(r.image, meta))
        return out


DIFFUSERS_BACKENDS = ("diffusers", "single_file", "lora")
# Pipelines held per process; the least recently used is dropped (and its GPU memory freed).
CACHE_SIZE = 2
_cache: OrderedDict[tuple, GeneratorBackend] = OrderedDict()


def get_backend(spec: BackendSpec, *, dtype: str = "float32", device: str | None = None,
                compile_unet: bool | None = None) -> GeneratorBackend:
    """The process's backend for ``spec``, built on first use.

    ``compile_unet`` None follows ``spec.config["compile"]``; ``device`` None picks CUDA when
    present. On the CPU the dtype is float32 whatever the job asks.
    """
    if spec.backend == "procedural":
        key = (spec.cache_key, repr(sorted(spec.config.items())))
    elif spec.backend in DIFFUSERS_BACKENDS:
        from workers.ml.diffusion import device_pick, dtype_pick

        dev = device_pick(device)
        compile_unet = bool(spec.config.get("compile", False)) if compile_unet is None else compile_unet
        key = (spec.cache_key, str(dev), str(dtype_pick(dtype, dev)), compile_unet)
    else:
        raise UnsupportedBackend(f"backend {spec.backend!r} is not available in this worker")
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    while len(_cache) >= CACHE_SIZE:
        _cache.popitem(last=False)
        _free_device_memory()
    backend = _build(spec, dtype=dtype, device=device, compile_unet=bool(compile_unet))
    _cache[key] = backend
    return backend


def cache_clear() -> None:
    _cache.clear()
    _free_device_memory()


def _free_device_memory() -> None:
    import sys

    torch = sys.modules.get("torch")  # never import torch just to free nothing
    if torch is not None and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _build(spec: BackendSpec, *, dtype: str, device: str | None, compile_unet: bool) -> GeneratorBackend:
    if spec.backend == "procedural":
        return ProceduralBackend(error_rate=float(spec.config.get("error_rate", 0.0)),
                                 salt=spec.fingerprint or repr(sorted(spec.config.items())))
    from workers.ml.diffusion import DiffusersBackend, device_pick, dtype_pick, pipeline_load

    dev = device_pick(device)
    torch_dtype = dtype_pick(dtype, dev)
    pipe = pipeline_load(backend=spec.backend, location=spec.location, base_model=spec.base_model,
                         config=spec.config, dtype=torch_dtype)
    return DiffusersBackend(pipe, device=dev, dtype=torch_dtype, compile_unet=compile_unet,
                            compile_mode=str(spec.config.get("compile_mode", "default")),
                            compile_backend=str(spec.config.get("compile_backend", "inductor")))
