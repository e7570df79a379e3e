"""Tiny random reward models of each architecture, saved with ``save_pretrained`` so that
tests load them through the real ``from_pretrained`` path. Tokenizers are built from
vocabularies written here (nothing is downloaded)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from workers.ml.diffusion_random import bytes_to_unicode

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
WORDS = ("a an and the of to in on photo realistic two three four five six seven eight one nine ten "
         "cup cups cat cats dog dogs vase vases chair chairs red blue green left right above below "
         "apple apples bird birds airplane airplanes truck trucks umbrella umbrellas").split()


def clip_tokenizer(folder: Path):
    """A byte-level BPE CLIP tokenizer: every byte, every byte at a word's end, and a few
    merges so that common words are single tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in ("photo", "cat", "dog", "cup"):
        prev = word[0]
        for i, ch in enumerate(word[1:], start=1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{prev} {nxt}")
            prev = prev + nxt
            vocab.setdefault(prev, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    try:  # transformers 5: vocabulary and merges given directly
        return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=77)
    except TypeError:  # transformers 4
        return CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                             model_max_length=77)


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *[f"##{c}" for c in letters],
             *"0123456789.,'-!?"]
    vocab = list(dict.fromkeys(vocab))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    try:
        return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=64)
    except TypeError:
        return BertTokenizer(vocab_file=str(folder / "vocab.txt"), model_max_length=64)


def _spread(model, std: float = 0.2) -> None:
    """Random init at 0.02 makes tiny models score every text alike; widen the weights so
    that scores differ between texts and images (what the tests compare)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "logit_scale" not in name:
                p.normal_(0.0, std)


def clip_config(*, image_size: int = 32, logit_scale: float = 2.6592):
    from transformers import CLIPConfig

    v = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
             image_size=image_size)
    t = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=77, vocab_size=600, eos_token_id=515, bos_token_id=514, pad_token_id=515)
    return CLIPConfig(text_config=t, vision_config=v, projection_dim=32, logit_scale_init_value=logit_scale)


def save_clip(folder: Path, *, seed: int = 0, image_size: int = 32, logit_scale: float = 2.6592,
              center_crop: bool = True) -> Path:
    """A tiny CLIP (also PickScore-style: CLIP architecture with its own logit scale)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tok = clip_tokenizer(folder)
    cfg = clip_config(image_size=image_size, logit_scale=logit_scale)
    cfg.text_config.eos_token_id = tok.eos_token_id
    cfg.text_config.bos_token_id = tok.bos_token_id
    cfg.text_config.pad_token_id = tok.pad_token_id
    model = CLIPModel(cfg).eval()
    _spread(model)
    model.save_pretrained(folder)
    proc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              do_center_crop=center_crop, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(folder)
    return folder


def save_blip(folder: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    torch.manual_seed(seed)
    tok = bert_tokenizer(folder)
    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64),
        projection_dim=32, image_text_hidden_size=16,
    )
    model = BlipForImageTextRetrieval(cfg).eval()
    _spread(model)
    model.save_pretrained(folder)
    proc = BlipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=CLIP_MEAN,
                              image_std=CLIP_STD)
    BlipProcessor(image_processor=proc, tokenizer=tok).save_pretrained(folder)
    return folder


def save_blip2(folder: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, BlipImageProcessor

    torch.manual_seed(seed)
    tok = bert_tokenizer(folder)
    cfg = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        qformer_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64,
                            use_qformer_text_input=True),
        text_config=dict(model_type="opt", vocab_size=99, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=4, ffn_dim=32, word_embed_proj_dim=16),
        num_query_tokens=4, image_text_hidden_size=16,
    )
    model = Blip2ForImageTextRetrieval(cfg).eval()
    _spread(model)
    with torch.no_grad():  # zeros by default: make the queries matter
        model.query_tokens.normal_(0, 0.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    BlipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=CLIP_MEAN,
                       image_std=CLIP_STD).save_pretrained(folder)
    return folder
