"""Tiny checkpoints in every form the workers load, for tests: a diffusers folder (from
``workers.ml.diffusion_random``), a LoRA made with peft and saved with ``save_lora_weights``,
and an original-layout (LDM) single file, so that the code under test goes through the real
``from_pretrained`` / ``load_lora_weights`` / ``from_single_file`` paths. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from workers.ml.diffusion_random import save_random_pipeline


def save_tiny_pipeline(folder: Path, *, seed: int = 0) -> Path:
    return save_random_pipeline(folder, size="tiny", seed=seed)


def save_tiny_lora(pipe_folder: Path, lora_folder: Path, *, rank: int = 4, seed: int = 1) -> Path:
    """A random LoRA on the tiny UNet's attention projections, saved with ``save_lora_weights``."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(pipe_folder)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(seed)
    with torch.no_grad():  # non-zero B matrices so that the adapter changes the output
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    StableDiffusionPipeline.save_lora_weights(lora_folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                              safe_serialization=True)
    return Path(lora_folder)


# ---- diffusers -> original (LDM) layout, the inverse of diffusers' single-file conversion.
# diffusers ships only the original -> diffusers direction; this writes the original key
# names for any SD 1.x-shaped UNet/VAE (any block count and layers per block).

_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


def _unet_key(key: str, layers: int) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    static = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in static:
        return static[key]
    parts = key.split(".")
    rest = ".".join(parts[4:])
    if parts[0] in ("down_blocks", "up_blocks") and parts[2] == "resnets":
        for new, old in _UNET_RESNET:
            rest = rest.replace(new, old)
    if parts[0] == "down_blocks":
        b, kind, j = int(parts[1]), parts[2], parts[3]
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.w
            return f"input_blocks.{b * (layers + 1) + layers + 1}.0.op.{parts[-1]}"
        i = b * (layers + 1) + int(j) + 1
        return f"input_blocks.{i}.{0 if kind == 'resnets' else 1}.{rest}"
    if parts[0] == "up_blocks":
        b, kind, j = int(parts[1]), parts[2], parts[3]
        if kind == "upsamplers":  # placed after the block's last layer: .1 without attention, .2 with
            i = b * (layers + 1) + layers
            return f"output_blocks.{i}.UPSAMPLE.conv.{parts[-1]}"
        i = b * (layers + 1) + int(j)
        return f"output_blocks.{i}.{0 if kind == 'resnets' else 1}.{rest}"
    if parts[0] == "mid_block":
        kind, j = parts[1], int(parts[2])
        rest = ".".join(parts[3:])
        if kind == "resnets":
            for new, old in _UNET_RESNET:
                rest = rest.replace(new, old)
            return f"middle_block.{0 if j == 0 else 2}.{rest}"
        return f"middle_block.1.{rest}"
    raise KeyError(f"no original-layout name for UNet key {key}")


def _vae_key(key: str, n_blocks: int) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    static = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in static:
        return static[key]
    side, parts = key.split(".", 1)[0], key.split(".")[1:]
    if parts[0] == "down_blocks":
        i = parts[1]
        if parts[2] == "downsamplers":
            return f"{side}.down.{i}.downsample.conv.{parts[-1]}"
        rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
        return f"{side}.down.{i}.block.{parts[3]}.{rest}"
    if parts[0] == "up_blocks":
        i = n_blocks - 1 - int(parts[1])
        if parts[2] == "upsamplers":
            return f"{side}.up.{i}.upsample.conv.{parts[-1]}"
        rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
        return f"{side}.up.{i}.block.{parts[3]}.{rest}"
    if parts[0] == "mid_block":
        rest = ".".join(parts[3:])
        if parts[1] == "resnets":
            return f"{side}.mid.block_{int(parts[2]) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        for new, old in _VAE_ATTN:
            rest = rest.replace(new, old)
        return f"{side}.mid.attn_1.{rest}"
    raise KeyError(f"no original-layout name for VAE key {key}")


def save_original_single_file(pipe_folder: Path, out_file: Path) -> Path:
    """The pipeline in ``pipe_folder`` as one original-layout (LDM) safetensors file."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(pipe_folder)
    layers = pipe.unet.config.layers_per_block
    state = {}
    attn_up = {b for b, t in enumerate(pipe.unet.config.up_block_types) if "CrossAttn" in t}
    for k, v in pipe.unet.state_dict().items():
        name = _unet_key(k, layers)
        if ".UPSAMPLE." in name:
            b = int(k.split(".")[1])
            name = name.replace(".UPSAMPLE.", ".2." if b in attn_up else ".1.")
        state["model.diffusion_model." + name] = v
    n_vae = len(pipe.vae.config.down_block_types)
    for k, v in pipe.vae.state_dict().items():
        name = _vae_key(k, n_vae)
        if ".mid.attn_1." in name and v.ndim == 2:
            v = v[:, :, None, None]  # the original VAE attention projections are 1x1 convolutions
        state["first_stage_model." + name] = v
    for k, v in pipe.text_encoder.state_dict().items():
        # Original files name them text_model.*; transformers 5 drops that prefix in state_dict().
        state["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_file))
    return out_file


_shared: dict[str, Path] = {}


def shared_tiny_folder() -> Path:
    """One tiny pipeline folder per test process (read-only for its users), removed at exit."""
    if "folder" not in _shared:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="calibra-tiny-sd-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _shared["folder"] = save_tiny_pipeline(root / "pipe")
    return _shared["folder"]
