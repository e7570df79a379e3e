"""Image preprocessing as tensor ops on the model's device (no per-image PIL processor).

uint8 RGB pixels -> float on the device -> resize (bicubic, antialiased) -> centre crop ->
normalise with the model's mean and std, all read from its ``preprocessor_config.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects: resize to ``resize`` (an int: the shortest edge; a pair: exact
    height and width), then centre-crop to ``crop`` (None: no crop), then normalise."""

    resize: int | tuple[int, int]
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: dict, *, default_size: int) -> PreprocessSpec:
        size = config.get("size", default_size)
        if isinstance(size, dict):
            if "shortest_edge" in size:
                resize: int | tuple[int, int] = int(size["shortest_edge"])
            else:
                resize = (int(size["height"]), int(size["width"]))
        else:
            resize = int(size)
        crop = None
        if config.get("do_center_crop", False):
            c = config.get("crop_size", resize)
            if isinstance(c, dict):
                crop = (int(c["height"]), int(c["width"]))
            else:
                crop = (int(c), int(c))
        if config.get("do_resize", True) is False:
            raise ValueError("preprocessor_config.json: do_resize=false is not supported")
        mean = tuple(float(v) for v in config.get("image_mean", CLIP_MEAN))
        std = tuple(float(v) for v in config.get("image_std", CLIP_STD))
        return cls(resize=resize, crop=crop, mean=mean, std=std)

    @classmethod
    def from_folder(cls, folder: str | Path, *, default_size: int) -> PreprocessSpec:
        """Read ``preprocessor_config.json``, or the image processor inside
        ``processor_config.json`` (how newer transformers save a processor)."""
        for name in ("preprocessor_config.json", "processor_config.json"):
            path = Path(folder) / name
            if not path.is_file():
                continue
            try:
                config = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}: cannot read: {exc}") from exc
            config = config.get("image_processor", config)
            if "image_mean" in config or "size" in config:
                return cls.from_config(config, default_size=default_size)
        return cls.from_config({}, default_size=default_size)


def _target_size(spec: PreprocessSpec, height: int, width: int) -> tuple[int, int]:
    if isinstance(spec.resize, tuple):
        return spec.resize
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(spec.resize * long / short)
    return (spec.resize, new_long) if height <= width else (new_long, spec.resize)


def to_uint8_batch(images: list) -> list[np.ndarray]:
    """PIL images or HxWx3 uint8 arrays -> HxWx3 uint8 arrays."""
    out = []
    for img in images:
        arr = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 image, not {arr.dtype} {arr.shape}")
        out.append(arr)
    return out


def preprocess(images, spec: PreprocessSpec, *, device, dtype) -> torch.Tensor:
    """A batch of HxWx3 uint8 images (sizes may differ), or one (N, H, W, 3) uint8 tensor ->
    normalised (N, 3, H, W) pixels on ``device``. Images of one size are resized together;
    the order is kept."""
    if len(images) == 0:
        raise ValueError("no images to preprocess")
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    by_shape: dict[tuple[int, int], list[int]] = {}
    if isinstance(images, torch.Tensor):
        by_shape[tuple(images.shape[1:3])] = list(range(images.shape[0]))
    else:
        for i, img in enumerate(images):
            by_shape.setdefault(img.shape[:2], []).append(i)
    out: list[torch.Tensor | None] = [None] * len(images)
    for (h, w), idx in by_shape.items():
        if isinstance(images, torch.Tensor):
            u8 = images.to(device, non_blocking=True)
        else:
            u8 = torch.from_numpy(np.stack([images[i] for i in idx])).to(device, non_blocking=True)
        x = u8.permute(0, 3, 1, 2).float() / 255.0
        th, tw = _target_size(spec, h, w)
        if (th, tw) != (h, w):
            x = F.interpolate(x, size=(th, tw), mode="bicubic", antialias=True, align_corners=False)
            # PIL clips bicubic overshoot to [0, 255]; so do we.
            x = x.clamp_(0.0, 1.0)
        if spec.crop is not None:
            ch, cw = spec.crop
            top, left = max(0, (th - ch) // 2), max(0, (tw - cw) // 2)
            x = x[:, :, top:top + ch, left:left + cw]
        x = ((x - mean) / std).to(dtype)
        if len(by_shape) == 1:
            return x
        for j, i in enumerate(idx):
            out[i] = x[j]
    return torch.stack(out)  # type: ignore[arg-type]
