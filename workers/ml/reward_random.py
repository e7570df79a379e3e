"""A tiny random-weight CLIP saved as a local reward-model folder: the demo's scorer when no
real weights are configured (its scores are noise), built from a config, nothing downloaded."""
from __future__ import annotations

from pathlib import Path

# OpenAI CLIP's normalisation, as in its preprocessor_config.json.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def save_random_clip(folder: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny CLIPModel with a byte-level tokenizer and an image processor config, saved with
    ``save_pretrained`` at ``folder`` (loadable by the ``clip`` reward model)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from workers.ml.diffusion_random import byte_tokenizer

    folder = Path(folder)
    tokenizer = byte_tokenizer(folder)
    n = len(tokenizer)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, vocab_size=n, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           patch_size=8, image_size=image_size),
        projection_dim=32)
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(folder)
    return folder
