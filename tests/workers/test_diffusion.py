"""The diffusers backends on tiny random SD 1.x checkpoints, loaded through the real
from_pretrained / from_single_file / load_lora_weights paths, on the CPU."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")  # in requirements/ml.txt: present wherever the suite runs

from tests.workers.tiny_diffusion import (  # noqa: E402
    save_original_single_file, save_tiny_lora, shared_tiny_folder,
)
from workers.ml import backends  # noqa: E402
from workers.ml.backends import BackendSpec, CheckpointError, GenerationParams, get_backend  # noqa: E402
from workers.ml.seeding import image_seed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PARAMS = GenerationParams(width=32, height=32, num_inference_steps=3, guidance_scale=7.5)
PROMPTS = ["a photo of three cups", "a dog and a vase", "two red apples", "a cat left of a chair"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    folder = shared_tiny_folder()
    return {
        "folder": folder,
        "lora": save_tiny_lora(folder, root / "lora"),
        "single": save_original_single_file(folder, root / "single" / "model.safetensors"),
    }


@pytest.fixture(autouse=True)
def fresh_cache():
    backends.cache_clear()
    yield
    backends.cache_clear()


def pixels(generated) -> np.ndarray:
    return np.stack([np.asarray(g.image) for g in generated])


def folder_backend(tiny, **config):
    return get_backend(BackendSpec("diffusers", location=str(tiny["folder"]), config=config, fingerprint="tiny"),
                       device="cpu")


def test_same_seed_same_pixels_whatever_the_batch(tiny):
    backend = folder_backend(tiny)
    seeds = [image_seed(0, i) for i in range(4)]
    together = pixels(backend.generate(PROMPTS, seeds, PARAMS))
    assert together.shape == (4, 32, 32, 3) and together.dtype == np.uint8
    alone = pixels(backend.generate(PROMPTS[1:2], seeds[1:2], PARAMS))
    reordered = pixels(backend.generate([PROMPTS[3], "something else", PROMPTS[1]], [seeds[3], 99, seeds[1]], PARAMS))
    np.testing.assert_array_equal(alone[0], together[1])
    np.testing.assert_array_equal(reordered[0], together[3])
    np.testing.assert_array_equal(reordered[2], together[1])
    other_seed = pixels(backend.generate(PROMPTS[1:2], [seeds[1] + 1], PARAMS))
    assert np.abs(other_seed[0].astype(int) - together[1]).mean() > 1  # the seed matters


def test_folder_backend_matches_the_bare_pipeline_and_is_cached(tiny):
    from diffusers import StableDiffusionPipeline

    backend = folder_backend(tiny)
    assert folder_backend(tiny) is backend  # loaded once per process and fingerprint
    ours = pixels(backend.generate(PROMPTS[:2], [5, 6], PARAMS))
    bare = StableDiffusionPipeline.from_pretrained(tiny["folder"])
    bare.set_progress_bar_config(disable=True)
    reference = bare(prompt=PROMPTS[:2], generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                     num_inference_steps=3, guidance_scale=7.5, height=32, width=32, output_type="np").images
    assert np.abs(ours.astype(int) - (reference * 255).round().astype(int)).max() <= 1
    assert backend.dtype == torch.float32 and backend.device.type == "cpu"  # a float16 job on the CPU


def test_scheduler_by_name_and_unknown_names(tiny):
    backend = folder_backend(tiny)
    ddim = pixels(backend.generate(PROMPTS[:1], [1], PARAMS))
    # Ancestral Euler draws fresh noise at every step, from each image's own generator.
    euler_a = GenerationParams(**{**PARAMS.__dict__, "scheduler": "euler_a"})
    ancestral = pixels(backend.generate(PROMPTS[:2], [1, 2], euler_a))
    assert type(backend.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    np.testing.assert_array_equal(pixels(backend.generate(PROMPTS[:1], [1], euler_a))[0], ancestral[0])
    assert np.abs(ancestral[0].astype(int) - ddim[0]).mean() > 1
    with pytest.raises(CheckpointError, match=r"scheduler 'dpm\+\+2m' is not one of .*\(field: scheduler\)"):
        backend.generate(PROMPTS[:1], [1], GenerationParams(**{**PARAMS.__dict__, "scheduler": "dpm++2m"}))


def test_single_file_checkpoint_gives_the_folder_pixels(tiny):
    folder = pixels(folder_backend(tiny).generate(PROMPTS[:2], [3, 4], PARAMS))
    single = get_backend(BackendSpec("single_file", location=str(tiny["single"]), base_model=str(tiny["folder"]),
                                     fingerprint="single"), device="cpu")
    np.testing.assert_array_equal(pixels(single.generate(PROMPTS[:2], [3, 4], PARAMS)), folder)


def test_lora_changes_the_output_and_is_reproducible(tiny):
    base = pixels(folder_backend(tiny).generate(PROMPTS[:2], [3, 4], PARAMS))
    spec = BackendSpec("lora", location=str(tiny["lora"]), base_model=str(tiny["folder"]), fingerprint="lora")
    lora = get_backend(spec, device="cpu")
    with_lora = pixels(lora.generate(PROMPTS[:2], [3, 4], PARAMS))
    assert np.abs(with_lora.astype(int) - base).mean() > 1
    np.testing.assert_array_equal(pixels(lora.generate(PROMPTS[1:2], [4], PARAMS))[0], with_lora[1])
    half = get_backend(BackendSpec("lora", location=str(tiny["lora"]), base_model=str(tiny["folder"]),
                                   config={"lora_scale": 0.0}, fingerprint="lora-off"), device="cpu")
    np.testing.assert_array_equal(pixels(half.generate(PROMPTS[:2], [3, 4], PARAMS)), base)


@pytest.mark.parametrize(("spec", "message"), [
    (BackendSpec("diffusers", location="/no/such/folder"), "checkpoint location /no/such/folder does not exist"),
    (BackendSpec("lora", location="/no/lora", base_model="/no/base"), "checkpoint base_model /no/base does not exist"),
    (BackendSpec("best_of_n"), "not available in this worker"),
])
def test_bad_checkpoints_fail_naming_the_field(spec, message):
    with pytest.raises(ValueError, match=message):
        get_backend(spec, device="cpu")


def test_a_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers folder"):
        get_backend(BackendSpec("diffusers", location=str(tmp_path)), device="cpu")


def test_compiled_unet_pads_the_last_batch_and_reports_its_compile_time(tiny):
    backend = folder_backend(tiny, compile=True, compile_backend="eager")
    plain = pixels(folder_backend(tiny).generate(PROMPTS[:3], [7, 8, 9], PARAMS))
    assert backend.compiled and backend.warm_up(PARAMS, 2) > 0
    full = pixels(backend.generate(PROMPTS[:2], [7, 8], PARAMS))
    short = pixels(backend.generate(PROMPTS[2:3], [9], PARAMS))  # padded to the compiled batch of 2
    assert len(short) == 1 and list(backend.compile_seconds) == [(2, 32, 32)]
    assert np.abs(np.concatenate([full, short]).astype(int) - plain).max() <= 1


def test_importing_the_tasks_loads_no_model_library():
    code = ("import sys, workers.tasks, workers.ml.backends; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
