#!/usr/bin/env python
"""Benchmark of the GPU workers: generation (this file) and scoring (bench_scoring_section.py).

Generation, in one run, with the same settings in every arm (steps, guidance 7.5, size,
batch, dtype), random weights (no hub access):

- bare: the diffusers StableDiffusionPipeline, eager, output_type="pil" (images/s);
- project, compile off: the generation job end to end (``workers.jobs.generation_job_execute``:
  per-image seeds, JPEG encoding, storage through Django's storage API, bulk DB writes);
- project, compile on: the same with ``torch.compile`` of the UNet (mode "default"); its
  one-time compile seconds are reported apart, as a worker pays them once per checkpoint.

Ratios are project / bare. Targets on CUDA: >= 1.25 compiled, >= 0.95 uncompiled.
``--tiny`` (the default on the CPU) uses tiny models; otherwise the real SD 1.x architectures
(UNet 860M, VAE, CLIP text encoder) in float16 on CUDA. The script makes its own throwaway
SQLite database and media folder in a temporary directory and migrates it.

Progress goes to stderr; stdout gets exactly one JSON line at the end.

    .venv/bin/python scripts/bench_workers.py --device cpu --tiny
    python scripts/bench_workers.py --device cuda
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

TARGETS = {"compiled": 1.25, "uncompiled": 0.95}
WORDS = ("cat dog cup vase chair apple bird truck horse red blue green small two three four photo painting "
         "of a the and on left right above below").split()


def log(msg: str) -> None:
    print(f"[bench_workers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def django_setup(tmp: Path) -> None:
    """A throwaway SQLite database, media folder and broker folder under ``tmp``, migrated."""
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "webapp.settings.local",
        "CALIBRA_DATA_DIR": str(tmp / "data"),
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "MEDIA_STORAGE": "local",
        "CELERY_BROKER_URL": "",
        "CELERY_TASK_ALWAYS_EAGER": "1",
        "DEBUG": "0",
        "CALIBRA_ALLOWED_INPUT_ROOTS": "",
    })
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def prompts(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def build_pipeline_folder(tmp: Path, *, size: str, device: str, dtype) -> Path:
    """A random SD 1.x pipeline saved with save_pretrained (built on the device: faster init)."""
    import torch

    from workers.ml.diffusion_random import random_pipeline

    t = time.perf_counter()
    with torch.device(device):
        pipe = random_pipeline(tmp / "tokenizer-src", size=size, seed=0)
    pipe.to(dtype)
    folder = tmp / "pipe"
    pipe.save_pretrained(folder)
    del pipe
    log(f"built and saved the {size} pipeline in {time.perf_counter() - t:.1f} s")
    return folder


def bench_bare(folder: Path, texts: list[str], *, device: str, dtype, batch: int, batches: int, steps: int,
               size: int) -> float:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def run(chunk):
        return pipe(prompt=chunk, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                    output_type="pil", generator=torch.Generator(device).manual_seed(0)).images

    run(texts[:batch])  # warm-up
    sync(device)
    t = time.perf_counter()
    for b in range(batches):
        images = run(texts[b * batch:(b + 1) * batch])
    sync(device)
    elapsed = time.perf_counter() - t
    assert len(images) == batch
    del pipe
    return batch * batches / elapsed


def bench_project(folder: Path, texts: list[str], *, device: str, dtype_name: str, batch: int, steps: int,
                  size: int, compile_unet: bool, name: str) -> dict:
    """The generation job end to end; the backend is loaded (and compiled) before the clock starts,
    as in a worker that has served this checkpoint before."""
    from annotate.models import Checkpoint, Dataset, Image, Prompt
    from annotate.services.generation import generation_job_create
    from workers.jobs import backend_spec, generation_job_execute
    from workers.ml.backends import GenerationParams, get_backend

    dataset = Dataset.objects.create(name=f"bench-{name}")
    Prompt.objects.bulk_create([Prompt(dataset=dataset, text=t, source_index=i) for i, t in enumerate(texts)])
    checkpoint = Checkpoint.objects.create(name=name, backend="diffusers", location=str(folder),
                                           fingerprint=f"bench-{name}",
                                           config={"batch_size": batch, "compile": compile_unet})
    job = generation_job_create(checkpoint=checkpoint, dataset=dataset, seeds=[0], images_per_seed=1, width=size,
                                height=size, num_inference_steps=steps, guidance_scale=7.5, scheduler="",
                                dtype=dtype_name, enqueue=False)
    backend = get_backend(backend_spec(checkpoint), dtype=dtype_name, device=device)
    params = GenerationParams(width=size, height=size, num_inference_steps=steps, guidance_scale=7.5)
    t = time.perf_counter()
    backend.warm_up(params, batch)
    backend.generate(texts[:batch], list(range(batch)), params)  # one full batch, as the bare arm's warm-up
    sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    made = generation_job_execute(job.id)
    sync(device)
    elapsed = time.perf_counter() - t
    job.refresh_from_db()
    assert made == len(texts) == job.done_images == Image.objects.filter(job=job).count(), "images missing"
    return {"images_per_s": len(texts) / elapsed, "compile_seconds": sum(backend.compile_seconds.values()) or None,
            "warm_up_seconds": warm, "status": job.status}


def generation_section(args, tmp: Path) -> dict:
    import torch

    device = args.device
    dtype_name = "float16" if device == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    size = args.size or (32 if args.tiny else 512)
    steps = args.steps or (4 if args.tiny else 25)
    batch = args.batch or (4 if args.tiny else 16)
    batches = args.batches or (4 if args.tiny else 3)
    texts = prompts(batch * batches)
    out = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "tiny": args.tiny,
           "size": size, "steps": steps, "guidance": 7.5, "batch": batch, "images_per_arm": len(texts),
           "dtype": dtype_name, "torch": torch.__version__}
    folder = build_pipeline_folder(tmp, size="tiny" if args.tiny else "sd15", device=device, dtype=dtype)

    log("bare diffusers pipeline, eager")
    out["bare_images_per_s"] = round(bench_bare(folder, texts, device=device, dtype=dtype, batch=batch,
                                                batches=batches, steps=steps, size=size), 3)
    log(f"  {out['bare_images_per_s']} images/s")
    log("project generation job, compile off")
    eager = bench_project(folder, texts, device=device, dtype_name=dtype_name, batch=batch, steps=steps,
                          size=size, compile_unet=False, name="eager")
    out["project_uncompiled_images_per_s"] = round(eager["images_per_s"], 3)
    out["ratio_uncompiled"] = round(eager["images_per_s"] / out["bare_images_per_s"], 3)
    log(f"  {out['project_uncompiled_images_per_s']} images/s (x{out['ratio_uncompiled']})")

    from workers.ml import backends

    backends.cache_clear()
    if args.compile or (args.compile is None and device == "cuda"):
        log("project generation job, torch.compile of the UNet (mode default): compiling")
        compiled = bench_project(folder, texts, device=device, dtype_name=dtype_name, batch=batch, steps=steps,
                                 size=size, compile_unet=True, name="compiled")
        out["project_compiled_images_per_s"] = round(compiled["images_per_s"], 3)
        out["ratio_compiled"] = round(compiled["images_per_s"] / out["bare_images_per_s"], 3)
        out["compile_seconds_once_per_checkpoint"] = round(compiled["compile_seconds"] or 0.0, 1)
        log(f"  {out['project_compiled_images_per_s']} images/s (x{out['ratio_compiled']}), "
            f"compiled in {out['compile_seconds_once_per_checkpoint']} s")
        backends.cache_clear()
    else:
        out["compiled_skipped"] = ("on the CPU torch.compile needs a C++ toolchain and minutes of compile time for "
                                   "no insight into the GPU figure; pass --compile to run it anyway")
    out["targets"] = TARGETS
    if device == "cuda" and not args.tiny:
        out["meets_targets"] = {"uncompiled": out["ratio_uncompiled"] >= TARGETS["uncompiled"],
                                "compiled": out.get("ratio_compiled", 0) >= TARGETS["compiled"]}
    else:
        out["meets_targets"] = None  # the targets are for the real architecture on CUDA
    return out


def scoring_section(device: str, tiny: bool) -> dict:
    try:
        import bench_scoring_section
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, the generation figures stand
        return {"error": f"import failed: {type(exc).__name__}: {exc}"}
    try:
        return bench_scoring_section.run(device, tiny)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                        help="tiny models (default on the CPU) or the real SD 1.x architectures (default on CUDA)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="run the torch.compile arm (default: on CUDA only)")
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--batches", type=int, default=0, help="timed batches per arm")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--no-scoring", action="store_true")
    args = parser.parse_args()

    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.tiny is None:
        args.tiny = args.device == "cpu"

    started = time.perf_counter()
    result = {"bench": "workers"}
    real_stdout = sys.stdout
    with tempfile.TemporaryDirectory(prefix="calibra-bench-") as tmp, contextlib.redirect_stdout(sys.stderr):
        django_setup(Path(tmp))
        try:
            result["generation"] = generation_section(args, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - the scoring half still runs and the line still prints
            import traceback

            traceback.print_exc()
            result["generation"] = {"error": f"{type(exc).__name__}: {exc}"}
        if args.device == "cuda":
            torch.cuda.empty_cache()
        if not args.no_scoring:
            log("scoring section")
            result["scoring"] = scoring_section(args.device, args.tiny)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, default=str), file=real_stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
