"""Scoring benchmark: the naive way against the project's scoring path.

Naive (the authors' code): a CLIPProcessor on each PIL image and one model call per image
with its prompt set. Project: tensor preprocessing on the device, each image encoded once,
prompt-set text embeddings cached, batched (``workers.ml.rewards``), plus, when Django is
set up (the caller's, or a throwaway SQLite database when run alone), the whole scoring
task with JPEG files in a temporary media folder.

Tiny CLIP on CPU, or random-weight CLIP ViT-L/14 and ViT-H/14 on CUDA (fp16), 16
contrastive prompts per prompt. ``run(device, tiny)`` returns a dict; run alone it prints
one JSON line:  python scripts/bench_scoring_section.py --device cpu|cuda [--no-db]
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K = 16  # contrastive prompts per prompt
PER_PROMPT = 16  # images per prompt
WORDS = ("cat dog cup vase chair apple bird truck horse frog book cake red blue green small large two three "
         "four five photo painting of a the and on left right above below").split()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timeit(fn, device: str, reps: int = 2) -> float:
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / reps


def _clip_model(size: str, device: str):
    """A random-weight CLIP of the real architecture (or a tiny one), with a local tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from tests.workers.tiny_rewards import clip_tokenizer

    if size == "tiny":
        v = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
                 image_size=32)
        t = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, vocab_size=1000)
        proj = 32
    elif size == "L14":
        v = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 patch_size=14, image_size=224)
        t = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, vocab_size=49408)
        proj = 768
    else:  # H14: the PickScore / HPSv2 backbone size
        v = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                 patch_size=14, image_size=224)
        t = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 max_position_embeddings=77, vocab_size=49408)
        proj = 1024
    tokenizer = clip_tokenizer(Path(tempfile.mkdtemp(prefix="bench-tok-")))
    t.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
             pad_token_id=tokenizer.pad_token_id)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = CLIPModel(CLIPConfig(text_config=t, vision_config=v, projection_dim=proj)).to(dtype).eval()
    return model, tokenizer, v["image_size"]


def _images(n: int, side: int):
    """Images with about the detail of generated ones: at 512 px a JPEG (quality 95, as the
    generation job writes) of about 100 KB, which takes about as long to decode."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    out = []
    for s in small:
        a = np.asarray(Image.fromarray(s).resize((side, side), Image.BICUBIC)).astype(np.int16)
        out.append(np.clip(a + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8))
    return out


class _InstantScorer:
    """A stand-in reward model that takes no time: the scoring task with it runs as fast as
    the host alone can decode, hand over and write (the host's ceiling)."""

    def __init__(self, device: str):
        self.device = device

    def prompt_logits_start(self, images, prompt_sets):
        import numpy as np

        from workers.ml.rewards import PendingLogits

        return PendingLogits.ready([np.linspace(0.0, 1.0, len(s)) for s in prompt_sets])


def _prompt_sets(n_prompts: int) -> list[list[str]]:
    import random

    rng = random.Random(0)
    sets = []
    for _ in range(n_prompts):
        texts: list[str] = []
        while len(texts) < K + 1:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10)))
            if text not in texts:
                texts.append(text)
        sets.append(texts)
    return sets


def _bench_size(size: str, device: str, tiny: bool, db: bool) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPProcessor

    from workers.ml.preprocess import PreprocessSpec
    from workers.ml.rewards import DualEncoderScorer, RewardSpec
    from workers.ml.textnorm import textnorm

    model, tokenizer, image_size = _clip_model(size, device)
    n = 64 if tiny else 1024
    n_naive = 16 if tiny else 32
    batch = 32 if tiny else 256  # the anchors' best batch on an H100
    side = 64 if tiny else 512
    arrays = _images(n, side)
    sets = _prompt_sets(n // PER_PROMPT)
    image_sets = [sets[i // PER_PROMPT] for i in range(n)]
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    spec = RewardSpec(kind="clip", location="-", config={"device": device}, fingerprint=f"bench-{size}")
    scorer = DualEncoderScorer(spec, model, tokenizer, PreprocessSpec.from_config(image_processor.to_dict(),
                                                                                   default_size=image_size),
                               score_factor=lambda m: 1.0)
    out: dict = {"images": n, "task_images": 4 * n, "contrastive_prompts": K, "batch": batch, "image_side": side}

    # -- naive: PIL + processor + one model call per image (with its prompt set for TextNorm)
    pils = [Image.fromarray(a) for a in arrays[:n_naive]]

    def naive(textnorm_too: bool):
        with torch.inference_mode():
            for i, pil in enumerate(pils):
                texts = image_sets[i] if textnorm_too else image_sets[i][:1]
                inputs = processor(text=texts, images=pil, return_tensors="pt", padding=True).to(device)
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
                logits = model(**inputs).logits_per_image[0].float()
                torch.softmax(logits, 0)[0].item() if textnorm_too else logits[0].item()

    t_naive_raw = _timeit(lambda: naive(False), device, reps=1)
    t_naive_tn = _timeit(lambda: naive(True), device, reps=1)

    # -- project: batched, images encoded once, prompt-set embeddings cached
    def project(textnorm_too: bool):
        for start in range(0, n, batch):
            chunk = arrays[start:start + batch]
            chunk_sets = image_sets[start:start + batch] if textnorm_too else [s[:1] for s in image_sets[start:start + batch]]
            logits = scorer.prompt_logits(chunk, chunk_sets)
            if textnorm_too:
                textnorm(np.stack(logits), scale=1.0)

    t_raw = _timeit(lambda: project(False), device)
    t_tn = _timeit(lambda: project(True), device)
    out |= {
        "naive_raw_images_per_s": round(n_naive / t_naive_raw, 1),
        "naive_textnorm_images_per_s": round(n_naive / t_naive_tn, 1),
        "project_raw_images_per_s": round(n / t_raw, 1),
        "project_textnorm_images_per_s": round(n / t_tn, 1),
        "speedup_raw": round(t_naive_raw / n_naive / (t_raw / n), 2),
        "speedup_textnorm": round(t_naive_tn / n_naive / (t_tn / n), 2),
        "textnorm_cost": round(t_tn / t_raw, 3),
    }
    out["targets"] = {"speedup": 15.0, "textnorm_cost": 1.2}
    if db:
        out |= _bench_db(scorer, spec, arrays, sets, device, batch)
        # The task end to end (files decoded on the host, rows written) against the same naive arm.
        out["task_speedup_raw"] = round(out["task_raw_images_per_s"] / out["naive_raw_images_per_s"], 2)
        out["task_speedup_textnorm"] = round(out["task_textnorm_images_per_s"] / out["naive_textnorm_images_per_s"], 2)
    del model, scorer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def _bench_db(scorer, spec, arrays, sets, device: str, batch: int, copies: int = 4) -> dict:
    """The scoring task end to end: JPEG files in storage, decoded on the host, rows written;
    where its time went (``Stages``); and the host's ceiling, the task with a reward model
    that takes no time. Each image is stored ``copies`` times (as other seeds of its
    prompt), so the task runs long enough to be measured in its steady state."""
    import hashlib

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from PIL import Image as PILImage

    from annotate.models import Checkpoint, ContrastivePromptSet, Dataset, Image, Prompt, RewardModel, RewardScore
    from annotate.services.scoring import scoring_job_create
    from workers.ml import rewards
    from workers.scoring import Stages, scoring_job_execute

    tag = f"bench-{spec.fingerprint}-{time.time_ns()}"
    ds = Dataset.objects.create(name=tag)
    ckpt = Checkpoint.objects.create(name=tag, backend="procedural")
    rows = []
    for p, texts in enumerate(sets):
        prompt = Prompt.objects.create(dataset=ds, text=texts[0], source_index=p)
        ContrastivePromptSet.objects.create(prompt=prompt, source="rule_based", version=tag, texts=texts[1:])
        for k in range(PER_PROMPT * copies):
            buf = io.BytesIO()
            PILImage.fromarray(arrays[p * PER_PROMPT + k % PER_PROMPT]).save(buf, "JPEG", quality=95)
            data = buf.getvalue()
            name = default_storage.save(f"bench/{tag}/{p}_{k}.jpg", ContentFile(data))
            rows.append(Image(prompt=prompt, checkpoint=ckpt, seed=k, index=0, file=name, size_bytes=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), width=arrays[0].shape[1],
                              height=arrays[0].shape[0]))
    Image.objects.bulk_create(rows)
    out = {"jpeg_kb": round(sum(r.size_bytes for r in rows) / len(rows) / 1024, 1)}
    # The random-weight model is handed to the worker's cache under the reward model's fingerprint.
    rm = RewardModel.objects.create(name=tag, kind="clip", location="-", config=spec.config,
                                    fingerprint=spec.fingerprint)
    rewards._cache[(spec.fingerprint, device)] = scorer
    instant = RewardModel.objects.create(name=f"{tag}-instant", kind="clip", location="-", config=spec.config,
                                         fingerprint=f"{spec.fingerprint}-instant")
    rewards._cache[(instant.fingerprint, device)] = _InstantScorer(device)
    for model, variants, key in ((rm, ["raw"], "task_raw"), (rm, ["textnorm"], "task_textnorm"),
                                 (instant, ["textnorm"], "host_ceiling")):
        job = scoring_job_create(reward_model=model, checkpoint=ckpt, variants=variants, prompt_set_source="rule_based",
                                 prompt_set_version=tag, batch_size=batch, enqueue=False)
        stages = Stages()
        _sync(device)
        start = time.perf_counter()
        scoring_job_execute(job.id, stages=stages)
        _sync(device)
        seconds = time.perf_counter() - start
        assert RewardScore.objects.filter(reward_model=model, variant=variants[0]).count() == len(rows)
        out[f"{key}_images_per_s"] = round(len(rows) / seconds, 1)
        out[f"{key}_stages"] = stages.as_dict()
    for model in (rm, instant):
        rewards._cache.pop((model.fingerprint, device), None)
    return out


def _django_ready() -> bool:
    try:
        from django.apps import apps

        return apps.ready
    except ImportError:
        return False


def _setup_throwaway_django() -> None:
    """The project's own embedded configuration (SQLite in WAL mode, local media) in a
    temporary folder: the same set-up as scripts/bench_workers.py."""
    from bench_workers import django_setup

    django_setup(Path(tempfile.mkdtemp(prefix="bench-scoring-")))


def run(device: str, tiny: bool, db: bool | None = None) -> dict:
    """Scoring section of the workers' benchmark. ``db``: include the DB task path (default:
    when Django is already set up by the caller)."""
    import torch
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    db = _django_ready() if db is None else db
    result = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "tiny": tiny}
    started = time.perf_counter()
    for size in (["tiny"] if tiny else ["L14", "H14"]):
        result[f"clip_{size}"] = _bench_size(size, device, tiny, db)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny CLIP (default on CPU)")
    parser.add_argument("--no-db", action="store_true", help="skip the scoring task through the database")
    args = parser.parse_args()
    tiny = args.tiny or not args.device.startswith("cuda")
    if not args.no_db:
        _setup_throwaway_django()
    print(json.dumps(run(args.device, tiny, db=not args.no_db)), flush=True)


if __name__ == "__main__":
    main()
