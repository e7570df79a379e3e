"""A scoring worker killed with SIGKILL mid-job: the scores written so far stay, and the job,
sent again to a new worker (``requeue_jobs --running``: the file-system broker does not
redeliver a dead worker's task), scores only the rest. Every image ends with one score per
variant. (tests/integration/test_worker_process.py does the same for generation.)"""
import hashlib
import io
import signal
import time

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from annotate.models import Checkpoint, Dataset, Image, Prompt, RewardScore, ScoringJob
from annotate.services.contrastive import contrastive_sets_rule_based
from annotate.services.jobs import jobs_requeue_stale
from annotate.services.scoring import reward_model_create, scoring_job_create
from tests.integration.test_worker_process import not_eager, start_worker, wait_for  # noqa: F401
from tests.workers.tiny_rewards import save_clip

PROMPTS = ["a photo of two cats", "a photo of three dogs", "a photo of a red cup and a blue vase",
           "a photo of a dog above a chair", "a photo of four apples", "a photo of a bird left of a truck"]
PER_PROMPT = 60  # 360 images


def _scene() -> Checkpoint:
    dataset = Dataset.objects.create(name="scenes")
    checkpoint = Checkpoint.objects.create(name="parent", backend="procedural")
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(PROMPTS):
        prompt = Prompt.objects.create(dataset=dataset, text=text, source_index=i)
        for k in range(PER_PROMPT):
            buffer = io.BytesIO()
            PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
            content = buffer.getvalue()
            name = default_storage.save(f"generated/{checkpoint.id}/{prompt.id}_{k}_0.jpg", ContentFile(content))
            rows.append(Image(prompt=prompt, checkpoint=checkpoint, seed=k, index=0, file=name, width=32, height=32,
                              size_bytes=len(content), sha256=hashlib.sha256(content).hexdigest()))
    Image.objects.bulk_create(rows)
    contrastive_sets_rule_based(dataset=dataset)
    return checkpoint


def _stop_when(worker, job, enough, seconds: float = 60) -> None:
    """SIGSTOP ``worker`` as soon as ``enough(done_images)``, polling every millisecond."""
    done = ScoringJob.objects.filter(pk=job.pk).values_list("done_images", flat=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and worker.poll() is None:
        if enough(done.first()):
            worker.send_signal(signal.SIGSTOP)
            return
        time.sleep(0.001)
    pytest.fail(f"the worker never got that far (done {done.first()}, exit {worker.poll()})")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_scoring_worker_killed_mid_job_and_replaced_scores_every_image_once(media_root, tmp_path, not_eager):  # noqa: F811
    checkpoint = _scene()
    total = len(PROMPTS) * PER_PROMPT
    model = reward_model_create(name="clip", kind="clip", location=str(save_clip(tmp_path / "clip", seed=11)),
                                config={"device": "cpu"})
    job = scoring_job_create(reward_model=model, checkpoint=checkpoint, variants=["raw", "textnorm"], batch_size=4,
                             prompt_set_source="rule_based")
    log, log2 = media_root.parent / "worker.log", media_root.parent / "worker2.log"
    first = start_worker(media_root, log)
    second = None
    try:
        wait_for(job, first, 60, lambda j: j.status == "running")
        second = start_worker(media_root, log2)  # starts up while the first one scores
        # The worker scores hundreds of images a second: it is stopped (SIGSTOP, at once) as
        # soon as some are stored, then killed, so the kill lands mid-job on any machine.
        _stop_when(first, job, lambda done: done >= 10)
        job.refresh_from_db()
        assert job.status == "running" and 10 <= job.done_images < total, log.read_text()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        scored_before = RewardScore.objects.filter(reward_model=model).count()
        assert 0 < scored_before < 2 * total
        assert ScoringJob.objects.get(pk=job.pk).status == "running"  # what a dead worker leaves
        assert jobs_requeue_stale(older_than=0, include_running=True).sent["scoring"] == [job.pk]
        wait_for(job, second, 60, lambda j: j.status in ("succeeded", "failed"))
    finally:
        if first.poll() is None:
            first.kill()
        if second is not None:
            second.terminate()
            second.wait(timeout=30)
    assert (job.status, job.done_images, job.total_images) == ("succeeded", total, total), log2.read_text()[-3000:]
    scores = RewardScore.objects.filter(reward_model=model)
    assert scores.count() == 2 * total
    assert scores.values("image", "variant").distinct().count() == 2 * total
    for variant in ("raw", "textnorm"):
        assert scores.filter(variant=variant).values("image").distinct().count() == total
    assert "scoring_job_run" in log2.read_text()
