"""Diffusers pipelines as generation backends: a diffusers folder, a single-file checkpoint,
or a base model plus LoRA weights.

Every image gets its own CPU ``torch.Generator`` seeded with its image seed, so its initial
noise (and any noise a stochastic scheduler draws) is the same whatever batch it lands in
and whichever device runs the denoising: an image can be regenerated on its own.
Nothing here imports Django; devices and dtypes are chosen by the caller at run time.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from workers.ml.backends import SCHEDULERS, CheckpointError, Generated, scheduler_check

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")




def device_pick(requested: str | None = None) -> torch.device:
    """The device named, or CUDA when the machine has one, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype_pick(name: str, device: torch.device) -> torch.dtype:
    """The job's dtype on CUDA; float32 on the CPU, where half precision is slow or missing."""
    if name and name not in DTYPES:
        raise CheckpointError(f"dtype {name!r} is not one of {', '.join(DTYPES)} (field: dtype)")
    if device.type == "cpu":
        return torch.float32
    return DTYPES[name or "float16"]


def _existing(path: str, field: str) -> Path:
    if not path:
        raise CheckpointError(f"checkpoint {field} is empty")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {field} {path} does not exist")
    return p


def _no_safety_checker(folder: Path, config: dict) -> dict:
    """Evaluation needs the model's raw output: drop the safety checker unless asked for."""
    index = folder / "model_index.json"
    if config.get("safety_checker") or not index.is_file():
        return {}
    if "safety_checker" in json.loads(index.read_text()):
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def _load_folder(folder: Path, dtype: torch.dtype, config: dict):
    from diffusers import DiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"checkpoint location {folder} is not a diffusers folder (no model_index.json)")
    return DiffusionPipeline.from_pretrained(folder, dtype=dtype, **_no_safety_checker(folder, config))


def _load_single_file(file: Path, dtype: torch.dtype, config_folder: str, config: dict):
    import diffusers

    kwargs = {"dtype": dtype}
    class_name = config.get("pipeline_class", "StableDiffusionPipeline")
    if config_folder:
        folder = _existing(config_folder, "base_model (the diffusers config folder of a single-file checkpoint)")
        kwargs["config"] = str(folder)
        index = folder / "model_index.json"
        if index.is_file():
            class_name = json.loads(index.read_text()).get("_class_name", class_name)
        kwargs.update(_no_safety_checker(folder, config))
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_single_file"):
        raise CheckpointError(f"config.pipeline_class {class_name!r} cannot load a single-file checkpoint")
    return cls.from_single_file(str(file), **kwargs)


def pipeline_load(*, backend: str, location: str, base_model: str = "", config: dict | None = None,
                  dtype: torch.dtype = torch.float32):
    """A diffusers pipeline for one checkpoint, on the CPU in ``dtype`` (the caller moves it)."""
    config = config or {}
    if backend == "diffusers":
        pipe = _load_folder(_existing(location, "location"), dtype, config)
    elif backend == "single_file":
        pipe = _load_single_file(_existing(location, "location"), dtype, base_model, config)
    elif backend == "lora":
        base = _existing(base_model, "base_model")
        lora = _existing(location, "location")
        if base.is_file() and base.suffix in SINGLE_FILE_SUFFIXES:
            pipe = _load_single_file(base, dtype, config.get("base_config", ""), config)
        else:
            pipe = _load_folder(base, dtype, config)
        kwargs = {"weight_name": lora.name} if lora.is_file() else {}
        pipe.load_lora_weights(str(lora.parent if lora.is_file() else lora), adapter_name="checkpoint", **kwargs)
        # Fused into the base weights: no adapter overhead per step, and torch.compile sees a plain UNet.
        pipe.fuse_lora(lora_scale=float(config.get("lora_scale", 1.0)))
        pipe.unload_lora_weights()
    else:
        raise CheckpointError(f"backend {backend!r} is not a diffusers backend")
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersBackend:
    """One loaded pipeline on one device; ``generate`` makes one image per (prompt, seed)."""

    def __init__(self, pipe, *, device: torch.device, dtype: torch.dtype, compile_unet: bool = False,
                 compile_mode: str = "default", compile_backend: str = "inductor"):
        self.pipe = pipe.to(device)
        self.device, self.dtype = device, dtype
        self.compiled = compile_unet
        # Seconds of the first call at each (batch, height, width) while compiled: the one-time cost.
        self.compile_seconds: dict[tuple, float] = {}
        self._own_scheduler = pipe.scheduler
        self._schedulers: dict[str, object] = {}
        self._batch = 0  # largest batch seen while compiled: shorter ones are padded to it
        if compile_unet:
            self.pipe.unet = torch.compile(self.pipe.unet, backend=compile_backend,
                                           mode=None if compile_mode == "default" else compile_mode)

    def _scheduler(self, name: str):
        scheduler_check(name)
        if not name:
            return self._own_scheduler
        if name not in self._schedulers:
            import diffusers

            class_name, overrides = SCHEDULERS[name]
            self._schedulers[name] = getattr(diffusers, class_name).from_config(
                self._own_scheduler.config, **overrides)
        return self._schedulers[name]

    def warm_up(self, params, batch_size: int) -> float:
        """Compile for this batch shape now (a two-step run), so a job's timing excludes it."""
        key = (batch_size, params.height, params.width)
        if not self.compiled or key in self.compile_seconds:
            return 0.0
        from dataclasses import replace

        self.generate(["warm-up"] * batch_size, list(range(batch_size)), replace(params, num_inference_steps=2))
        return self.compile_seconds.get(key, 0.0)

    def generate(self, prompts, seeds, params):
        n = len(prompts)
        if self.compiled and n < self._batch:  # one compiled shape per job: pad the last batch
            prompts = list(prompts) + [prompts[-1]] * (self._batch - n)
            seeds = list(seeds) + [seeds[-1]] * (self._batch - n)
        self._batch = max(self._batch, len(prompts))
        self.pipe.scheduler = self._scheduler(params.scheduler)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        key = (len(prompts), params.height, params.width)
        first = self.compiled and key not in self.compile_seconds
        start = time.perf_counter()
        out = self.pipe(
            prompt=list(prompts), generator=generators, num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale, height=params.height, width=params.width, output_type="pt",
        ).images
        # Quantised on the device (as diffusers' numpy_to_pil does on the host): 4x fewer bytes to copy.
        pixels = (out.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if first:
            self.compile_seconds[key] = time.perf_counter() - start
            log.info("compiled the UNet for batch %d at %dx%d in %.1f s", *key, self.compile_seconds[key])
        meta = {"scheduler": params.scheduler or type(self.pipe.scheduler).__name__,
                "dtype": str(self.dtype).removeprefix("torch."), "steps": params.num_inference_steps}
        return [Generated(Image.fromarray(np.ascontiguousarray(pixels[i])), dict(meta, generator_seed=int(seeds[i])))
                for i in range(n)]
