"""Scoring jobs through the database: every image scored once per variant, values equal to
the naive per-image computation, idempotent reruns, progress, failures recorded."""
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from annotate.models import Checkpoint, ContrastivePromptSet, Dataset, Image, Prompt, RewardScore, ScoringJob
from annotate.services.contrastive import contrastive_sets_rule_based
from annotate.services.scoring import ScoringError, reward_model_create, scoring_job_create
from tests.workers.test_rewards import naive_scores
from tests.workers.tiny_rewards import save_blip, save_clip
from workers.ml.textnorm import textnorm
from workers.scoring import Stages, scoring_job_execute

pytestmark = pytest.mark.django_db(transaction=True)
PROMPTS = ["a photo of two cats", "a photo of a red cup and a blue vase", "a photo of a dog above a chair"]


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring-models")
    return {"clip": save_clip(root / "clip", seed=11), "pickscore": save_clip(root / "pick", seed=12, logit_scale=4.6),
            "blip_itm": save_blip(root / "blip", seed=13)}


def jpeg(seed: int, size=(40, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    small = PILImage.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize(size, PILImage.BILINEAR).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def scene():
    """A dataset of three prompts, a checkpoint with four images per prompt, rule-based sets."""
    ds = Dataset.objects.create(name="scenes")
    ckpt = Checkpoint.objects.create(name="parent", backend="procedural")
    for i, text in enumerate(PROMPTS):
        prompt = Prompt.objects.create(dataset=ds, text=text, source_index=i)
        for k in range(4):
            content = jpeg(10 * i + k)
            name = default_storage.save(f"generated/{ckpt.id}/{prompt.id}_{k}_0.jpg", ContentFile(content))
            Image.objects.create(prompt=prompt, checkpoint=ckpt, seed=k, index=0, file=name, size_bytes=len(content),
                                 sha256=hashlib.sha256(content).hexdigest(), width=40, height=48)
    contrastive_sets_rule_based(dataset=ds)
    return ds, ckpt


def naive_for(kind, folder, images):
    pils, sets = [], []
    for image in images:
        with default_storage.open(image.file.name) as fh:
            pils.append(PILImage.open(io.BytesIO(fh.read())).convert("RGB"))
        sets.append(ContrastivePromptSet.objects.get(prompt=image.prompt).prompt_set)
    return naive_scores(kind, folder, pils, sets)


@pytest.mark.parametrize("kind", ["clip", "pickscore", "blip_itm"])
def test_job_scores_raw_and_textnorm_like_the_naive_computation(scene, model_folders, kind):
    ds, ckpt = scene
    rm = reward_model_create(name=kind, kind=kind, location=str(model_folders[kind]), config={"device": "cpu"})
    job = scoring_job_create(reward_model=rm, checkpoint=ckpt, prompt_set_source="rule_based", scale=3.0,
                             batch_size=5)  # runs inline after commit in tests
    job.refresh_from_db()
    assert (job.status, job.done_images, job.total_images, job.error) == ("succeeded", 12, 12, "")
    images = list(Image.objects.filter(checkpoint=ckpt).select_related("prompt").order_by("id"))
    naive = naive_for(kind, model_folders[kind], images)
    for image, logits in zip(images, naive, strict=True):
        raw = RewardScore.objects.get(image=image, reward_model=rm, variant="raw")
        tn = RewardScore.objects.get(image=image, reward_model=rm, variant="textnorm")
        assert tn.prompt_set.source == "rule_based" and (tn.normalize, tn.scale) == ("minmax", 3.0)
        assert raw.value == pytest.approx(logits[0], abs=1e-2)
        assert tn.value == pytest.approx(textnorm(logits, scale=3.0)[0], abs=2e-2)
    values = RewardScore.objects.filter(reward_model=rm, variant="textnorm").values_list("value", flat=True)
    assert np.ptp(list(values)) > 0.01


def test_rerun_scores_only_missing_rows_and_new_parameters_add_rows(scene, model_folders):
    ds, ckpt = scene
    rm = reward_model_create(name="clip", kind="clip", location=str(model_folders["clip"]), config={"device": "cpu"})
    job = scoring_job_create(reward_model=rm, dataset=ds, prompt_set_source="rule_based")
    assert RewardScore.objects.count() == 24
    assert scoring_job_execute(job.id) == 0
    victim = Image.objects.filter(checkpoint=ckpt).first()
    before = RewardScore.objects.get(image=victim, variant="textnorm").value
    RewardScore.objects.filter(image=victim, variant="textnorm").delete()
    assert scoring_job_execute(job.id) == 1
    assert RewardScore.objects.count() == 24
    assert RewardScore.objects.get(image=victim, variant="textnorm").value == pytest.approx(before, abs=1e-6)
    # The paper's temperature variant is another row; raw scores are not written twice.
    scoring_job_create(reward_model=rm, checkpoint=ckpt, variants=["raw", "textnorm"], normalize="none",
                       temperature=0.01, prompt_set_source="rule_based")
    assert RewardScore.objects.filter(variant="raw").count() == 12
    assert RewardScore.objects.filter(variant="textnorm").count() == 24
    job.refresh_from_db()
    assert (job.done_images, job.total_images) == (12, 12)


def test_a_bad_image_file_fails_the_job_with_the_file_named(scene, model_folders):
    ds, ckpt = scene
    rm = reward_model_create(name="clip", kind="clip", location=str(model_folders["clip"]), config={"device": "cpu"})
    broken = Image.objects.filter(checkpoint=ckpt).last()
    with default_storage.open(broken.file.name, "wb") as fh:
        fh.write(b"not a jpeg")
    with pytest.raises(ScoringError, match=broken.file.name):
        scoring_job_create(reward_model=rm, checkpoint=ckpt, variants=["raw"], batch_size=4)
    job = ScoringJob.objects.get()
    assert job.status == "failed" and broken.file.name in job.error
    assert not RewardScore.objects.filter(image=broken).exists()


def test_bad_input_is_refused_naming_the_field_and_writes_nothing(scene, model_folders):
    ds, ckpt = scene
    rm = reward_model_create(name="clip", kind="clip", location=str(model_folders["clip"]), config={"device": "cpu"})
    with pytest.raises(ScoringError, match="prompt_set_source: 3 prompt"):
        scoring_job_create(reward_model=rm, checkpoint=ckpt, prompt_set_source="imported")
    with pytest.raises(ScoringError, match="normalize"):
        scoring_job_create(reward_model=rm, checkpoint=ckpt, prompt_set_source="rule_based", normalize="softmax")
    with pytest.raises(ScoringError, match="variants"):
        scoring_job_create(reward_model=rm, checkpoint=ckpt, variants=["best"])
    with pytest.raises(ScoringError, match="kind"):
        reward_model_create(name="x", kind="dalle", location=str(model_folders["clip"]))
    with pytest.raises(ScoringError, match="location"):
        reward_model_create(name="x", kind="clip", location="org/not-here")
    assert not ScoringJob.objects.exists() and not RewardScore.objects.exists()


def test_job_is_enqueued_only_after_commit(scene, model_folders):
    from django.db import transaction

    ds, ckpt = scene
    rm = reward_model_create(name="clip", kind="clip", location=str(model_folders["clip"]), config={"device": "cpu"})
    with transaction.atomic():
        job = scoring_job_create(reward_model=rm, checkpoint=ckpt, variants=["raw"])
        assert not RewardScore.objects.exists()
    job.refresh_from_db()
    assert job.status == "succeeded" and RewardScore.objects.count() == 12


def test_scoring_task_is_registered_for_the_gpu_queue():
    from webapp.celery import app

    app.loader.import_default_modules()
    assert "workers.tasks.scoring_job_run" in app.tasks
    route = app.amqp.router.route({}, "workers.tasks.scoring_job_run")
    assert route["queue"].name == "gpu"


@pytest.mark.django_db(transaction=True)
def test_row_writer_writes_in_order_on_its_own_thread_and_reports_its_errors(monkeypatch):
    import threading

    from workers import scoring

    written, started, release = [], threading.Event(), threading.Event()

    def slow_first(job_id, rows, done):
        started.set()
        release.wait(5)  # the database is slow: batches queue up behind this write
        written.append((job_id, rows, done))

    monkeypatch.setattr(scoring, "_write", slow_first)
    with scoring._RowWriter(7) as writer:
        assert writer.thread is not None  # outside a transaction: a thread of its own
        writer.write([2], 2)
        assert started.wait(5)  # the writer is inside its first write
        for done in (4, 6, 8):
            writer.write([done], done)
        release.set()
    # In order, nothing lost, and what queued up behind the slow write went in one transaction.
    assert written == [(7, [2], 2), (7, [4, 6, 8], 8)]

    def broken(job_id, rows, done):
        raise RuntimeError("disk full")

    monkeypatch.setattr(scoring, "_write", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        with scoring._RowWriter(7) as writer:
            writer.write([1], 1)


def test_prefetch_decodes_same_size_batches_into_one_buffer_and_others_as_arrays(tmp_path):
    import torch

    from workers.scoring import _prefetch, _Todo

    names = []
    for k, side in enumerate((24, 24, 24, 16)):
        buf = io.BytesIO()
        PILImage.new("RGB", (side, side), (10 * k, 20, 30)).save(buf, "PNG")
        names.append(default_storage.save(f"prefetch/{k}.png", ContentFile(buf.getvalue())))
    todo = [_Todo(k, name, 1, True, False, (24, 24)) for k, name in enumerate(names)]
    batches = list(_prefetch(todo, batch_size=2, decoders=2))
    first, second = batches[0][1], batches[1][1]
    assert isinstance(first, torch.Tensor) and first.shape == (2, 24, 24, 3) and first[1, 0, 0, 0].item() == 10
    # The last file is not the size its row records: that batch comes as arrays, in order.
    assert isinstance(second, list) and [a.shape for a in second] == [(24, 24, 3), (16, 16, 3)]
    assert second[0][0, 0, 0] == 20 and second[1][0, 0, 0] == 30


@pytest.mark.django_db(transaction=True)
def test_scoring_benchmark_runs_on_the_cpu_and_says_where_the_task_spent_its_time(settings, tmp_path):
    """scripts/bench_scoring_section.py, tiny models in this test's database: every figure
    the note quotes is there, and the stages account for the images scored."""
    import sys

    settings.MEDIA_ROOT = str(tmp_path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import bench_scoring_section
    finally:
        sys.path.pop(0)
    result = bench_scoring_section.run("cpu", tiny=True, db=True)["clip_tiny"]
    for key in ("speedup_raw", "speedup_textnorm", "textnorm_cost", "task_speedup_raw", "task_speedup_textnorm",
                "host_ceiling_images_per_s", "jpeg_kb"):
        assert result[key] > 0, key
    for key in ("task_raw_stages", "task_textnorm_stages", "host_ceiling_stages"):
        stages = result[key]
        assert stages["images"] == result["task_images"]
        assert set(Stages.names) <= set(stages)
        assert sum(stages[n] for n in Stages.names if n != "writer") <= stages["seconds"] + 1e-3


def test_scoring_a_generation_job_covers_the_images_it_reused(scene, model_folders):
    """A second job with the same checkpoint, dataset and seeds makes nothing (the images
    exist, made by no job here); scoring that job still scores every image it stands for."""
    from annotate.models import GenerationJob

    ds, ckpt = scene
    first = GenerationJob.objects.create(checkpoint=ckpt, dataset=ds, seeds=[0, 1], images_per_seed=1,
                                         total_images=6, status="succeeded")
    Image.objects.filter(checkpoint=ckpt, seed__in=[0, 1]).update(job=first)
    second = GenerationJob.objects.create(checkpoint=ckpt, dataset=ds, seeds=[1, 2], images_per_seed=1,
                                          total_images=6, status="succeeded")
    rm = reward_model_create(name="clip", kind="clip", location=str(model_folders["clip"]), config={"device": "cpu"})
    job = scoring_job_create(reward_model=rm, generation_job=second, variants=["raw"])
    job.refresh_from_db()
    assert (job.status, job.total_images) == ("succeeded", 6)
    scored = set(RewardScore.objects.filter(reward_model=rm).values_list("image__seed", flat=True))
    assert scored == {1, 2}


def test_a_job_cancelled_while_it_runs_stops_and_a_retry_scores_only_the_rest(scene, model_folders, monkeypatch):
    from annotate.services import jobs
    from workers import scoring

    ds, ckpt = scene
    rm = reward_model_create(name="clip", kind="clip", location=str(model_folders["clip"]), config={"device": "cpu"})
    job = scoring_job_create(reward_model=rm, checkpoint=ckpt, variants=["raw"], batch_size=4, enqueue=False)
    real = scoring.score_rows

    def cancel_after_the_first_batch(job_, batch, *args):
        if not ScoringJob.objects.filter(pk=job.pk, status="cancelled").exists():
            jobs.job_cancel(ScoringJob.objects.get(pk=job.pk))
        return real(job_, batch, *args)

    monkeypatch.setattr(scoring, "score_rows", cancel_after_the_first_batch)
    assert scoring_job_execute(job.id) == 0
    job.refresh_from_db()
    assert job.status == "cancelled" and RewardScore.objects.count() < 12
    monkeypatch.setattr(scoring, "score_rows", real)
    jobs.job_retry(job)  # runs inline after commit in tests
    job.refresh_from_db()
    assert (job.status, job.done_images, RewardScore.objects.count()) == ("succeeded", 12, 12)
