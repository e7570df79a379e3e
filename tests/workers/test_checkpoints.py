"""Registering checkpoints and starting generation jobs: by service, command and API.
Paths are checked, weights fingerprinted by their bytes, bad input names its field or flag
and writes nothing, and only researchers may use the API."""
import io
import json
import shutil

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.models import Checkpoint, Dataset, GenerationJob, Image, Prompt, ScoringJob
from annotate.services.checkpoints import CheckpointRegistrationError, checkpoint_register
from annotate.services.generation import GenerationError, generation_job_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def weights(tmp_path):
    """Stand-ins for the three kinds of weights (registration reads bytes, it loads nothing)."""
    folder = tmp_path / "sd-folder"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-1")
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"single-1")
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"lora-1")
    return {"folder": folder, "single": single, "lora": lora}


@pytest.fixture
def dataset():
    ds = Dataset.objects.create(name="scenes")
    for i, text in enumerate(["three cups", "a dog and a vase"]):
        Prompt.objects.create(dataset=ds, text=text, source_index=i)
    return ds


def test_each_backend_registers_with_a_fingerprint_of_its_weights_bytes(weights, tmp_path):
    folder = checkpoint_register(name="sd", backend="diffusers", location=str(weights["folder"]))
    single = checkpoint_register(name="one-file", backend="single_file", location=str(weights["single"]))
    lora = checkpoint_register(name="lora", backend="lora", location=str(weights["lora"]),
                               base_model=str(weights["folder"]), config={"lora_scale": 0.8})
    procedural = checkpoint_register(name="drawn", backend="procedural", config={"error_rate": 0.2})
    prints = {c.fingerprint for c in (folder, single, lora, procedural)}
    assert len(prints) == 4 and all(len(p) == 64 for p in prints)
    # The same weights again under the same name: the same checkpoint, nothing new.
    assert checkpoint_register(name="sd", backend="diffusers", location=str(weights["folder"])).id == folder.id
    # A copy elsewhere has the same bytes, so the same fingerprint (a worker reuses its pipeline).
    copy = shutil.copytree(weights["folder"], tmp_path / "copy")
    assert checkpoint_register(name="sd-copy", backend="diffusers", location=str(copy)).fingerprint == folder.fingerprint
    # New bytes in place: another fingerprint, so the old name is refused for them.
    (weights["folder"] / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-2")
    with pytest.raises(CheckpointRegistrationError, match=r"^name: 'sd' already stands for other weights"):
        checkpoint_register(name="sd", backend="diffusers", location=str(weights["folder"]))
    weights["single"].write_bytes(b"single-2")
    changed = checkpoint_register(name="one-file-v2", backend="single_file", location=str(weights["single"]))
    assert changed.fingerprint != single.fingerprint
    assert Checkpoint.objects.count() == 6


@pytest.mark.parametrize(("fields", "message"), [
    ({"backend": "best_of_n"}, r"^backend: best_of_n checkpoints are made by best-of-n"),
    ({"backend": "diffusers", "location": ""}, r"^location: a diffusers checkpoint needs one"),
    ({"backend": "diffusers", "location": "{single}"}, r"^location: .* is not a diffusers folder"),
    ({"backend": "single_file", "location": "{folder}"}, r"^location: .* is not a file"),
    ({"backend": "lora", "location": "{lora}"}, r"^base_model: a LoRA checkpoint needs its base pipeline"),
    ({"backend": "lora", "location": "{lora}", "base_model": "someone/sd-base"},
     r"^base_model: someone/sd-base is not a local folder, and config.allow_download is not set"),
    ({"backend": "procedural", "config": {"error_rate": 2}}, r"^config.error_rate: must be a number within"),
    ({"backend": "dalle"}, r"^backend: must be one of"),
])
def test_bad_checkpoints_are_refused_naming_the_field_and_write_nothing(weights, fields, message):
    fields = {k: v.format(**weights) if isinstance(v, str) else v for k, v in fields.items()}
    with pytest.raises(CheckpointRegistrationError, match=message):
        checkpoint_register(name="bad", **fields)
    assert not Checkpoint.objects.exists()


def test_a_checkpoint_outside_the_allowed_roots_is_refused(weights, settings, tmp_path):
    settings.CALIBRA_ALLOWED_INPUT_ROOTS = [str(tmp_path / "models")]
    with pytest.raises(CheckpointRegistrationError, match=r"^location: .* is outside the allowed input roots"):
        checkpoint_register(name="outside", backend="diffusers", location=str(weights["folder"]))
    admin_made = Checkpoint.objects.create(name="admin-made", backend="diffusers", location=str(weights["folder"]))
    ds = Dataset.objects.create(name="d")
    Prompt.objects.create(dataset=ds, text="a cat", source_index=0)
    with pytest.raises(GenerationError, match=r"^checkpoint: .* outside the allowed input roots"):
        generation_job_create(checkpoint=admin_made, dataset=ds, seeds=[0], enqueue=False)
    assert not GenerationJob.objects.exists()


def test_generation_jobs_refuse_a_best_of_n_checkpoint_and_fingerprint_one_entered_by_hand(weights, dataset):
    parent = checkpoint_register(name="drawn", backend="procedural")
    derived = Checkpoint.objects.create(name="best-of-4", backend="best_of_n", derived_from=parent)
    with pytest.raises(GenerationError, match=r"^checkpoint: 'best-of-4' is a best-of-n selection"):
        generation_job_create(checkpoint=derived, dataset=dataset, seeds=[0], enqueue=False)
    with pytest.raises(GenerationError, match=r"^width: must be an integer >= 8"):
        generation_job_create(checkpoint=parent, dataset=dataset, seeds=[0], width=0, enqueue=False)
    by_hand = Checkpoint.objects.create(name="admin-made", backend="diffusers", location=str(weights["folder"]))
    generation_job_create(checkpoint=by_hand, dataset=dataset, seeds=[0], enqueue=False)
    by_hand.refresh_from_db()
    assert by_hand.fingerprint == checkpoint_register(name="same", backend="diffusers",
                                                      location=str(weights["folder"])).fingerprint


def test_commands_register_a_checkpoint_and_generate_its_images(dataset):
    out = io.StringIO()
    call_command("register_checkpoint", "drawn", "--backend", "procedural", "--config", '{"error_rate": 0.5}',
                 stdout=out)
    assert json.loads(out.getvalue())["name"] == "drawn"
    out = io.StringIO()
    call_command("generate", "--checkpoint", "drawn", "--dataset", "scenes", "--seeds", "0-2,7", "--width", "64",
                 "--height", "64", "--here", stdout=out)
    result = json.loads(out.getvalue())
    assert (result["status"], result["done_images"], result["total_images"]) == ("succeeded", 8, 8)
    assert sorted(set(Image.objects.values_list("seed", flat=True))) == [0, 1, 2, 7]
    with pytest.raises(CommandError, match=r"--dataset 'nope': no such dataset"):
        call_command("generate", "--checkpoint", "drawn", "--dataset", "nope")
    with pytest.raises(CommandError, match=r"--seeds: 'x' is not a seed"):
        call_command("generate", "--checkpoint", "drawn", "--dataset", "scenes", "--seeds", "x")
    with pytest.raises(CommandError, match=r"--images-per-seed: must be an integer >= 1(.|\n)*Nothing was written"):
        call_command("generate", "--checkpoint", "drawn", "--dataset", "scenes", "--images-per-seed", "0")
    with pytest.raises(CommandError, match=r"--config error_rate: must be a number"):
        call_command("register_checkpoint", "bad", "--backend", "procedural", "--config", '{"error_rate": -1}')
    assert GenerationJob.objects.count() == 1 and Checkpoint.objects.count() == 1


def test_the_jobs_api_is_for_researchers_only(annotator, researcher, dataset):
    ckpt = checkpoint_register(name="drawn", backend="procedural")
    job = generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[0], enqueue=False)
    urls = [reverse("api-checkpoints"), reverse("api-generation-jobs"), reverse("api-scoring-jobs"),
            reverse("api-generation-job", args=[job.id]), reverse("api-scoring-job", args=[job.id])]
    actions = [reverse("api-generation-job-retry", args=[job.id]), reverse("api-generation-job-cancel", args=[job.id]),
               reverse("api-scoring-job-retry", args=[job.id])]
    client = APIClient()
    for url in urls:
        assert client.get(url).status_code in (401, 403)
    client.force_authenticate(annotator)
    for url in urls:
        assert client.get(url).status_code == 403, url
    for url in [*urls[:3], *actions]:
        assert client.post(url, {}, format="json").status_code == 403, url
    assert GenerationJob.objects.get(pk=job.id).status == "queued"


def test_researchers_start_follow_retry_and_cancel_jobs_through_the_api(researcher, dataset, settings):
    client = APIClient()
    client.force_authenticate(researcher)
    made = client.post(reverse("api-checkpoints"), {"name": "drawn", "backend": "procedural",
                                                    "config": {"error_rate": 0.3}}, format="json")
    assert made.status_code == 201 and made.json()["fingerprint"]
    refused = client.post(reverse("api-checkpoints"), {"name": "x", "backend": "diffusers", "location": "/nowhere"},
                          format="json")
    assert refused.status_code == 400 and refused.json()["detail"].startswith("location:")
    started = client.post(reverse("api-generation-jobs"), {
        "checkpoint": made.json()["id"], "dataset": dataset.id, "seeds": [0, 1], "width": 64, "height": 64,
        "dtype": "float32"}, format="json")  # runs inline after commit in tests
    assert started.status_code == 201
    job = client.get(reverse("api-generation-job", args=[started.json()["id"]])).json()
    assert (job["status"], job["done_images"], job["total_images"], job["checkpoint"]) == ("succeeded", 4, 4, "drawn")
    # A succeeded job is not retried; a failed one is, and the retry makes only what is missing.
    retry_url = reverse("api-generation-job-retry", args=[job["id"]])
    assert client.post(retry_url).status_code == 409
    GenerationJob.objects.filter(pk=job["id"]).update(status="failed", error="CUDA out of memory")
    Image.objects.filter(seed=1).delete()
    retried = client.post(retry_url)
    assert retried.status_code == 200
    after = client.get(reverse("api-generation-job", args=[job["id"]])).json()
    assert (after["status"], after["error"], Image.objects.count()) == ("succeeded", "", 4)
    # Cancelling applies to queued or running jobs.
    queued = generation_job_create(checkpoint=Checkpoint.objects.get(name="drawn"), dataset=dataset, seeds=[5],
                                   enqueue=False)
    assert client.post(reverse("api-generation-job-cancel", args=[queued.id])).json()["status"] == "cancelled"
    assert client.post(reverse("api-generation-job-cancel", args=[queued.id])).status_code == 409
    bad = client.post(reverse("api-generation-jobs"), {"checkpoint": made.json()["id"], "dataset": dataset.id,
                                                       "seeds": [], "width": 64}, format="json")
    assert bad.status_code == 400 and "seeds" in bad.json()
    assert not ScoringJob.objects.exists()
