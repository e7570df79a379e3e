import hashlib

import pytest
from django.core.files.storage import default_storage

from annotate.models import Checkpoint, Dataset, GenerationJob, Image, Prompt
from annotate.services.generation import generation_job_create
from workers.jobs import generation_job_execute

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dataset():
    ds = Dataset.objects.create(name="scenes")
    for i, text in enumerate(["a realistic photo of two cups", "a realistic photo of a cat and a chair"]):
        Prompt.objects.create(dataset=ds, text=text, source_index=i)
    return ds


def make_job(dataset, name="careful", backend="procedural", **kw) -> GenerationJob:
    ckpt = Checkpoint.objects.create(name=name, backend=backend, location="/nowhere" if backend != "procedural" else "",
                                     config={"error_rate": 0.2})
    return generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[0, 1], images_per_seed=3,
                                 width=64, height=64, **kw)


def test_job_makes_every_image_once_with_progress(dataset):
    job = make_job(dataset)  # tasks run inline in tests, after commit
    job.refresh_from_db()
    assert job.status == "succeeded" and (job.done_images, job.total_images) == (12, 12)
    images = Image.objects.filter(job=job)
    assert images.count() == 12
    assert {(i.seed, i.index) for i in images} == {(s, i) for s in (0, 1) for i in range(3)}
    one = images.first()
    with default_storage.open(one.file.name) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == one.sha256
    assert (one.width, one.height) == (64, 64)


def test_rerun_makes_only_missing_images_with_the_same_pixels(dataset):
    job = make_job(dataset)
    victim = Image.objects.get(job=job, seed=1, index=2, prompt__source_index=0)
    sha, name = victim.sha256, victim.file.name
    victim.delete()
    assert generation_job_execute(job.id) == 1
    again = Image.objects.get(job=job, seed=1, index=2, prompt__source_index=0)
    assert again.sha256 == sha and again.file.name == name
    assert generation_job_execute(job.id) == 0
    assert Image.objects.filter(job=job).count() == 12


def test_failure_is_recorded_on_the_job(dataset):
    with pytest.raises(Exception, match="not available"):
        make_job(dataset, name="real", backend="diffusers")
    job = GenerationJob.objects.get(checkpoint__name="real")
    assert job.status == "failed" and "not available" in job.error


def test_job_is_enqueued_only_after_commit(dataset, django_capture_on_commit_callbacks):
    from django.db import transaction

    with transaction.atomic():
        job = make_job(dataset, name="later")
        assert not Image.objects.filter(job=job).exists()
    job.refresh_from_db()
    assert job.status == "succeeded"


def test_bad_seeds_are_refused(dataset):
    ckpt = Checkpoint.objects.create(name="x", backend="procedural")
    with pytest.raises(ValueError, match="seeds"):
        generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[])
    assert not GenerationJob.objects.exists()
