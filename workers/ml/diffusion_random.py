"""Random-weight Stable Diffusion 1.x pipelines, tiny or at full size, built from configs.

For tests, the demo's optional diffusers checkpoint and the benchmark: nothing is
downloaded. Weights come from a fixed seed (diffusers' ``get_dummy_components`` style); the
tokenizer is a byte-level CLIP BPE written from a generated vocabulary, so every prompt
tokenizes. ``save_random_pipeline`` writes a diffusers folder that the real
``from_pretrained`` path loads.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

SIZES = ("tiny", "sd15")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer(folder: Path, model_max_length: int = 77):
    """A CLIPTokenizer whose vocabulary is every byte (alone and word-final) plus a few merges."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "a n", "o f</w>", "c u"]
    tokens = chars + [c + "</w>" for c in chars] + ["th", "the</w>", "an", "of</w>", "cu"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": model_max_length}))
    # from_pretrained on the files works across transformers versions (the constructor's
    # argument names changed in 5.x).
    return CLIPTokenizer.from_pretrained(folder)


def random_components(tokenizer_dir: Path, *, size: str = "tiny", seed: int = 0) -> dict:
    """UNet, VAE, text encoder, DDIM scheduler and tokenizer of an SD 1.x pipeline.

    ``sd15`` has the real shapes (UNet 860M parameters, as in the anchors' benchmark).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    tokenizer = byte_tokenizer(tokenizer_dir)
    if size == "tiny":
        unet_kw = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                       cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
        vae_kw = dict(block_out_channels=(16, 32), norm_num_groups=8, sample_size=32,
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        text_kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    else:
        unet_kw = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64,
                       down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                       cross_attention_dim=768, attention_head_dim=8)
        vae_kw = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text_kw = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_kw)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **vae_kw)
    torch.manual_seed(seed)
    n = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=n, max_position_embeddings=77, bos_token_id=n - 2,
                                                eos_token_id=n - 1, pad_token_id=n - 1, **text_kw))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
            "scheduler": scheduler, "safety_checker": None, "feature_extractor": None,
            "requires_safety_checker": False}


def random_pipeline(work_dir: Path, *, size: str = "tiny", seed: int = 0):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**random_components(Path(work_dir) / "tokenizer-src", size=size, seed=seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_random_pipeline(folder: Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """A random SD 1.x pipeline saved as a diffusers folder (safetensors) at ``folder``."""
    import tempfile

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:  # the tokenizer's source files
        random_pipeline(Path(scratch), size=size, seed=seed).save_pretrained(folder)
    return folder
