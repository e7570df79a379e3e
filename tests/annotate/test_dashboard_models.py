"""The researcher's model pages: jobs (progress, retry, cancel), a checkpoint's gallery with raw
and TextNorm scores, the image view, and reward models against TIA2's human labels (cached)."""
import hashlib
import re
import uuid

import pytest
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate.models import (
    Checkpoint, ContrastivePromptSet, Dataset, GenerationJob, HumanLabel, Image, Prompt, RewardModel,
    RewardScore, ScoringJob,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear()
    yield
    cache.clear()


def _checkpoint_with_images(*, prompts=2, per_prompt=2, categories=("counting",), name="drawn") -> Checkpoint:
    dataset = Dataset.objects.create(name=f"ds-{name}")
    checkpoint = Checkpoint.objects.create(name=name, backend="procedural")
    for p in range(prompts):
        prompt = Prompt.objects.create(dataset=dataset, text=f"{p + 1} cups", source_index=p,
                                       category=categories[p % len(categories)])
        for i in range(per_prompt):
            file = f"generated/{checkpoint.id}/{prompt.id}_0_{i}.jpg"
            Image.objects.create(prompt=prompt, checkpoint=checkpoint, seed=0, index=i, file=file,
                                 sha256=hashlib.sha256(file.encode()).hexdigest(), size_bytes=1)
    return checkpoint


@pytest.fixture
def some_of_everything():
    checkpoint = _checkpoint_with_images()
    job = GenerationJob.objects.create(checkpoint=checkpoint, dataset=Dataset.objects.get(), seeds=[0],
                                       total_images=4, status="failed", error="boom")
    return {"checkpoint": checkpoint, "job": job, "image": Image.objects.first()}


def _urls(objects) -> list[str]:
    job, checkpoint, image = objects["job"], objects["checkpoint"], objects["image"]
    return [
        reverse("jobs"),
        reverse("job-retry", args=["generation", job.id]),
        reverse("job-cancel", args=["generation", job.id]),
        reverse("job-retry", args=["scoring", job.id]),
        reverse("checkpoint-gallery", args=[checkpoint.id]),
        reverse("researcher-image", args=[image.id]),
        reverse("reward-models"),
        reverse("reward-models-refresh"),
    ]


def test_every_page_and_action_refuses_annotators_and_sends_visitors_to_log_in(client, annotator,
                                                                                 some_of_everything):
    for url in _urls(some_of_everything):
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 302 and reverse("login") in response["Location"], url
    client.force_login(annotator)
    for url in _urls(some_of_everything):
        for method in ("get", "post"):
            assert getattr(client, method)(url).status_code == 403, (method, url)
    assert GenerationJob.objects.get().status == "failed"  # nothing was retried


# ---- jobs --------------------------------------------------------------------------------

def _row(body: str, kind: str, job_id: int) -> str:
    match = re.search(rf'<tr id="job-{kind}-{job_id}".*?</tr>', body, re.S)
    assert match, f"no row for {kind} job {job_id}"
    return match.group(0)


def test_the_jobs_page_lists_both_kinds_with_progress_status_and_the_right_buttons(client, researcher):
    checkpoint = _checkpoint_with_images()
    dataset = Dataset.objects.get()
    model = RewardModel.objects.create(name="pick", kind="pickscore", location="-")
    running = GenerationJob.objects.create(checkpoint=checkpoint, dataset=dataset, seeds=[0], total_images=8,
                                           done_images=3, status="running")
    failed = GenerationJob.objects.create(checkpoint=checkpoint, dataset=dataset, seeds=[1], total_images=8,
                                          status="failed", error="CUDA out of memory")
    scoring = ScoringJob.objects.create(reward_model=model, checkpoint=checkpoint, variants=["raw"],
                                        total_images=4, done_images=4, status="succeeded")
    client.force_login(researcher)
    body = client.get(reverse("jobs")).content.decode()
    assert 'src="/static/js/jobs.js"' in body and 'id="jobs-live"' in body and 'aria-live="polite"' in body
    assert 'data-generation-api="/api/generation-jobs/"' in body and 'id="job-status-labels"' in body

    row = _row(body, "generation", running.id)
    assert 'data-status="running"' in row and 'max="8" value="3"' in row
    assert '<span data-field="done">3</span> / <span data-field="total">8</span>' in row
    assert re.search(r'<form[^>]*data-action="cancel"(?![^>]*hidden)', row)
    assert re.search(r'<form[^>]*data-action="retry"[^>]*hidden', row)
    assert checkpoint.name in row and dataset.name in row

    row = _row(body, "generation", failed.id)
    assert "CUDA out of memory" in row and reverse("job-retry", args=["generation", failed.id]) in row
    assert re.search(r'<form[^>]*data-action="retry"(?![^>]*hidden)', row)
    assert re.search(r'<form[^>]*data-action="cancel"[^>]*hidden', row)
    assert "csrfmiddlewaretoken" in row

    row = _row(body, "scoring", scoring.id)
    assert "pick" in row and "Succeeded" in row and 'value="4"' in row
    assert re.search(r'data-action="retry"[^>]*hidden', row)
    assert re.search(r'data-action="cancel"[^>]*hidden', row)
    # Newest first.
    assert body.index(f"job-generation-{failed.id}") < body.index(f"job-generation-{running.id}")


def test_the_jobs_page_shows_at_most_a_hundred_of_each_kind(client, researcher):
    checkpoint = _checkpoint_with_images()
    GenerationJob.objects.bulk_create([GenerationJob(checkpoint=checkpoint, dataset=Dataset.objects.get(),
                                                     seeds=[k], total_images=1) for k in range(105)])
    client.force_login(researcher)
    body = client.get(reverse("jobs")).content.decode()
    assert body.count('data-job-kind="generation"') == 100


@pytest.mark.django_db(transaction=True)
def test_retry_requeues_a_failed_job_which_then_runs_and_cancel_stops_a_queued_one(client, researcher):
    from annotate.services.checkpoints import checkpoint_register
    from annotate.services.generation import generation_job_create

    dataset = Dataset.objects.create(name="scenes")
    for i, text in enumerate(["three cups", "a dog and a vase"]):
        Prompt.objects.create(dataset=dataset, text=text, source_index=i)
    checkpoint = checkpoint_register(name="drawn", backend="procedural")
    job = generation_job_create(checkpoint=checkpoint, dataset=dataset, seeds=[0, 1], width=64, height=64,
                                enqueue=False)
    GenerationJob.objects.filter(pk=job.pk).update(status="failed", error="worker lost")
    client.force_login(researcher)

    response = client.post(reverse("job-retry", args=["generation", job.id]))
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('jobs')}#job-generation-{job.id}"
    job.refresh_from_db()  # the task ran inline after commit
    assert (job.status, job.done_images, job.total_images, job.error) == ("succeeded", 4, 4, "")
    assert Image.objects.filter(checkpoint=checkpoint).exclude(file="").count() == 4

    queued = generation_job_create(checkpoint=checkpoint, dataset=dataset, seeds=[5], width=64, height=64,
                                   enqueue=False)
    assert client.post(reverse("job-cancel", args=["generation", queued.id])).status_code == 302
    queued.refresh_from_db()
    assert queued.status == "cancelled"


def test_an_action_that_does_not_apply_answers_409_with_the_reason_on_the_page(client, researcher):
    checkpoint = _checkpoint_with_images()
    job = GenerationJob.objects.create(checkpoint=checkpoint, dataset=Dataset.objects.get(), seeds=[0],
                                       total_images=4, done_images=4, status="succeeded")
    client.force_login(researcher)
    for action in ("job-retry", "job-cancel"):
        response = client.post(reverse(action, args=["generation", job.id]))
        assert response.status_code == 409
        body = response.content.decode()
        assert 'role="alert"' in body and f"job {job.id} is succeeded" in body
        assert f'id="job-generation-{job.id}"' in body  # the page itself, not a bare error
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert client.post(reverse("job-cancel", args=["scoring", 999999])).status_code == 404
    assert client.get(reverse("job-cancel", args=["generation", job.id])).status_code == 405


def test_jobs_js_exists_and_documents_the_elements_it_relies_on():
    from django.contrib.staticfiles import finders

    path = finders.find("js/jobs.js")
    assert path
    source = open(path, encoding="utf-8").read()
    for contract in ("#jobs-live", "data-poll-ms", "data-field=progress", "form[data-action=retry]",
                     "tr#job-<kind>-<id>"):
        assert contract in source


# ---- a checkpoint's gallery --------------------------------------------------------------

def _score(image, model, value, *, prompt_set=None, scale=1.0):
    if prompt_set is None:
        return RewardScore(image=image, reward_model=model, variant="raw", value=value)
    return RewardScore(image=image, reward_model=model, variant="textnorm", prompt_set=prompt_set,
                       normalize="minmax", scale=scale, value=value)


def _scored_checkpoint(prompts=2, per_prompt=2, categories=("counting", "composition")):
    checkpoint = _checkpoint_with_images(prompts=prompts, per_prompt=per_prompt, categories=categories)
    model = RewardModel.objects.create(name="pick", kind="pickscore", location="-")
    rows = []
    for image in Image.objects.filter(checkpoint=checkpoint).select_related("prompt"):
        sets = ContrastivePromptSet.objects.get_or_create(prompt=image.prompt, source="imported",
                                                          version=f"h{image.prompt_id}",
                                                          defaults={"texts": ["a cup"]})[0]
        rows += [_score(image, model, 10 + image.id / 1000),
                 _score(image, model, 0.5 + image.id / 1000, prompt_set=sets),
                 _score(image, model, 0.25 + image.id / 1000, prompt_set=sets, scale=5.0)]
    RewardScore.objects.bulk_create(rows)
    return checkpoint, model


def _scores_by_image(body: str) -> dict[int, tuple[str, str]]:
    out = {}
    pattern = r'/images/(\d+)\.jpg".*?data-score="raw">([^<]*)<.*?data-score="textnorm">([^<]*)<'
    for match in re.finditer(pattern, body, re.S):
        out[int(match.group(1))] = (match.group(2).strip(), match.group(3).strip())
    return out


def test_the_gallery_shows_raw_and_textnorm_scores_per_image_in_one_textnorm_setting(client, researcher):
    checkpoint, model = _scored_checkpoint()
    # Every image has TextNorm scores with s=1 and s=5: as many of each, so the first by key (s=1).
    client.force_login(researcher)
    url = reverse("checkpoint-gallery", args=[checkpoint.id])
    body = client.get(url).content.decode()
    images = list(Image.objects.filter(checkpoint=checkpoint))
    scores = _scores_by_image(body)
    assert set(scores) == {i.id for i in images}
    for image in images:
        assert scores[image.id] == (f"{10 + image.id / 1000:.4f}", f"{0.5 + image.id / 1000:.4f}")
    assert "imported prompt sets, minmax s=1" in body and "seed 0 · #1" in body
    assert body.index("1 cups") < body.index("2 cups")

    key = "imported||minmax|5.0|1.0"
    body = client.get(url, {"reward_model": model.id, "textnorm": key}).content.decode()
    scores = _scores_by_image(body)
    assert all(scores[i.id][1] == f"{0.25 + i.id / 1000:.4f}" for i in images)
    assert f'value="{key}" selected' in body


def test_the_gallery_prefers_the_setting_most_images_have(client, researcher):
    checkpoint, model = _scored_checkpoint()
    RewardScore.objects.filter(scale=1.0, variant="textnorm").first().delete()
    client.force_login(researcher)
    body = client.get(reverse("checkpoint-gallery", args=[checkpoint.id])).content.decode()
    assert 'value="imported||minmax|5.0|1.0" selected' in body


def test_the_gallery_filters_by_category_and_by_the_human_majority(client, researcher):
    checkpoint, _ = _scored_checkpoint(prompts=2, per_prompt=3)
    counting = list(Image.objects.filter(checkpoint=checkpoint, prompt__category="counting")
                    .order_by("index"))
    # image 0: 1,1,0 -> aligned; image 1: 1,0,-1 -> not aligned; image 2: no labels.
    HumanLabel.objects.bulk_create(
        [HumanLabel(image=counting[0], slot=s, value=v) for s, v in enumerate([1, 1, 0])]
        + [HumanLabel(image=counting[1], slot=s, value=v) for s, v in enumerate([1, 0, -1])])
    client.force_login(researcher)
    url = reverse("checkpoint-gallery", args=[checkpoint.id])

    body = client.get(url, {"category": "composition"}).content.decode()
    assert "2 cups" in body and "1 cups" not in body
    assert set(_scores_by_image(body)) == set(Image.objects.filter(prompt__category="composition")
                                              .values_list("id", flat=True))
    assert set(_scores_by_image(client.get(url, {"label": "aligned"}).content.decode())) == {counting[0].id}
    body = client.get(url, {"label": "not_aligned"}).content.decode()
    assert set(_scores_by_image(body)) == {counting[1].id} and "humans: not aligned (1, 0, -1)" in body
    none = client.get(url, {"label": "aligned", "category": "composition"}).content.decode()
    assert "No image matches" in none
    assert len(_scores_by_image(client.get(url, {"label": "bogus"}).content.decode())) == 6  # ignored


def test_the_gallery_takes_labels_from_rating_studies_too(client, researcher):
    """A checkpoint's images have no imported labels: the majority of a rating study's
    answers labels them (2 of 3 aligned: aligned; a tie: neither)."""
    from annotate.services.annotation import assignment_next, judgment_submit, skip_submit
    from annotate.services.studies import study_add_members, study_create_rating, study_open
    from tests.factories import annotators

    checkpoint, _ = _scored_checkpoint(prompts=1, per_prompt=2, categories=("counting",))
    first, second = Image.objects.filter(checkpoint=checkpoint).order_by("index")
    study = study_create_rating(name="rate", dataset=first.prompt.dataset, checkpoints=[checkpoint], redundancy=3)
    people = annotators(3)
    study_add_members(study=study, usernames=[u.username for u in people])
    study_open(study=study)
    wanted = {(first.id, 0): "aligned", (first.id, 1): "aligned", (first.id, 2): "not_aligned",
              (second.id, 0): "aligned", (second.id, 1): "not_aligned"}  # the second: a tie
    for k, person in enumerate(people):
        while (lease := assignment_next(study=study, annotator=person)) is not None:
            choice = wanted.get((lease.item.image_a_id, k))
            if choice is None:  # not theirs to answer, in whatever order the queue offers it
                skip_submit(study=study, annotator=person, item_public_id=lease.item.public_id, lease_id=lease.pk,
                            client_id=uuid.uuid4(), reason="unsure")
                continue
            judgment_submit(study=study, annotator=person, item_public_id=lease.item.public_id, lease_id=lease.pk,
                            client_id=uuid.uuid4(), choice=choice)
    client.force_login(researcher)
    url = reverse("checkpoint-gallery", args=[checkpoint.id])
    aligned = client.get(url, {"label": "aligned"}).content.decode()
    assert set(_scores_by_image(aligned)) == {first.id} and "raters: 2 of 3 aligned" in aligned
    assert "No image matches" in client.get(url, {"label": "not_aligned"}).content.decode()
    assert "raters: 1 of 2 aligned" in client.get(url).content.decode()


def test_a_datasets_own_images_have_a_gallery_with_their_labels_and_scores(client, researcher, annotator):
    dataset = Dataset.objects.create(name="tia2-counting", source="tia2", category="counting")
    prompt = Prompt.objects.create(dataset=dataset, text="two cups", category="counting", source_index=0)
    model = RewardModel.objects.create(name="pick", kind="pickscore", location="-")
    images = []
    for k, labels in enumerate([(1, 1, 0), (0, 0, 1)]):
        image = Image.objects.create(prompt=prompt, seed=0, index=k, source_name=f"image_0_0_{k}.jpg",
                                     file=f"tia2/{k}.jpg", sha256="0" * 64, size_bytes=1)
        HumanLabel.objects.bulk_create([HumanLabel(image=image, slot=s, value=v) for s, v in enumerate(labels)])
        RewardScore.objects.create(image=image, reward_model=model, variant="raw", value=0.3 + k)
        images.append(image)
    url = reverse("dataset-gallery", args=[dataset.id])
    client.force_login(annotator)
    assert client.get(url).status_code == 403
    client.force_login(researcher)
    body = client.get(url).content.decode()
    assert "tia2-counting: its own images" in body and set(_scores_by_image(body)) == {i.id for i in images}
    aligned = client.get(url, {"label": "aligned"}).content.decode()
    assert set(_scores_by_image(aligned)) == {images[0].id} and "humans: aligned (1, 1, 0)" in aligned
    assert reverse("dataset-gallery", args=[dataset.id]) in client.get("/").content.decode()


def test_the_gallery_pages_twelve_prompts_by_source_index(client, researcher):
    checkpoint = _checkpoint_with_images(prompts=14, per_prompt=1)
    Prompt.objects.filter(source_index=13).update(source_index=100)
    Prompt.objects.filter(source_index=0).update(source_index=50)  # "1 cups" moves to the second page
    client.force_login(researcher)
    url = reverse("checkpoint-gallery", args=[checkpoint.id])
    first = client.get(url, {"category": "counting"}).content.decode()
    assert first.count('class="gallery-prompt"') == 12 and "Page 1 of 2" in first
    assert "category=counting&amp;page=2" in first and "Image for: 1 cups (" not in first
    second = client.get(url, {"category": "counting", "page": 2}).content.decode()
    assert second.count('class="gallery-prompt"') == 2
    assert second.index("Image for: 1 cups (") < second.index("Image for: 14 cups (")
    assert client.get(url, {"page": "nope"}).status_code == 200


def test_the_gallery_query_count_does_not_grow_with_the_images_on_a_page(client, researcher):
    def queries(per_prompt: int) -> int:
        checkpoint, model = _scored_checkpoint(prompts=3, per_prompt=per_prompt)
        HumanLabel.objects.bulk_create([HumanLabel(image=i, slot=s, value=1) for s in range(3)
                                        for i in Image.objects.filter(checkpoint=checkpoint)])
        with CaptureQueriesContext(connection) as captured:
            response = client.get(reverse("checkpoint-gallery", args=[checkpoint.id]), {"label": "aligned"})
        assert response.status_code == 200
        assert len(_scores_by_image(response.content.decode())) == 3 * per_prompt
        Checkpoint.objects.filter(pk=checkpoint.pk).update(name=f"old-{checkpoint.pk}")
        RewardModel.objects.filter(pk=model.pk).update(name=f"old-{model.pk}")
        Dataset.objects.filter(name="ds-drawn").update(name=f"old-ds-{checkpoint.pk}")
        return len(captured)

    client.force_login(researcher)
    assert queries(1) == queries(8)


def test_a_best_of_n_image_says_which_image_it_was_selected_from(client, researcher):
    parent = _checkpoint_with_images(per_prompt=1)
    source = Image.objects.filter(checkpoint=parent).first()
    derived = Checkpoint.objects.create(name="best-of-4", backend="best_of_n", derived_from=parent)
    Image.objects.create(prompt=source.prompt, checkpoint=derived, seed=0, index=0, file=source.file.name,
                         sha256=source.sha256, size_bytes=1,
                         metadata={"selected_from": source.id, "selected_seed": 3, "selected_index": 2})
    client.force_login(researcher)
    body = client.get(reverse("checkpoint-gallery", args=[derived.id])).content.decode()
    assert f'href="{reverse("researcher-image", args=[source.id])}"' in body and "(seed 3 · #2)" in body
    assert f'href="{reverse("checkpoint-gallery", args=[parent.id])}"' in body
    assert "score_images --help" in body  # no scores yet


def test_the_image_view_serves_the_bytes_to_researchers_only(client, researcher, annotator):
    checkpoint = _checkpoint_with_images(prompts=1, per_prompt=1)
    image = Image.objects.get()
    name = default_storage.save(image.file.name, ContentFile(b"\xff\xd8jpeg-bytes"))
    Image.objects.filter(pk=image.pk).update(file=name)
    missing = Image.objects.create(prompt=image.prompt, checkpoint=checkpoint, seed=1, index=0)
    url = reverse("researcher-image", args=[image.id])
    assert url.endswith(f"/images/{image.id}.jpg")

    client.force_login(annotator)
    assert client.get(url).status_code == 403
    client.force_login(researcher)
    response = client.get(url)
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"\xff\xd8jpeg-bytes"
    assert response["Content-Type"] == "image/jpeg" and response["Cache-Control"].startswith("private")
    assert client.get(reverse("researcher-image", args=[missing.id])).status_code == 404
    assert client.get(reverse("researcher-image", args=[999999])).status_code == 404


# ---- reward models against TIA2's human labels -------------------------------------------

def _tiny_tia2() -> RewardModel:
    """Two TIA2 categories of two prompts, four images each (two aligned); a reward model that
    ranks them right (raw) and one TextNorm column that ranks them wrong."""
    ds = Dataset.objects.create(name="tia2-mini", source=Dataset.Source.TIA2)
    model = RewardModel.objects.create(name="oracle", kind="clip", location="-")
    rows = []
    for category in ("counting", "composition"):
        for p in range(2):
            prompt = Prompt.objects.create(dataset=ds, text=f"{category} {p}", category=category,
                                           source_index=len(rows))
            sets = ContrastivePromptSet.objects.create(prompt=prompt, source="imported",
                                                       version=f"h{prompt.id}", texts=["other"])
            for k in range(4):
                image = Image.objects.create(prompt=prompt, seed=k, index=0,
                                             source_name=f"image_{p}_{k}_0.jpg")
                HumanLabel.objects.bulk_create([HumanLabel(image=image, slot=s, value=k % 2)
                                                for s in range(3)])
                rows += [_score(image, model, k % 2 + 0.01 * k),
                         _score(image, model, 1 - k % 2 + 0.01 * k, prompt_set=sets)]
    RewardScore.objects.bulk_create(rows)
    return model


def test_the_reward_models_page_says_how_to_import_labels_and_score_images(client, researcher):
    client.force_login(researcher)
    body = client.get(reverse("reward-models")).content.decode()
    assert "python manage.py import_tia2 PATH" in body
    _tiny_tia2()
    RewardScore.objects.all().delete()
    body = client.get(reverse("reward-models")).content.decode()
    assert "python manage.py score_images --help" in body and "Counting" in body


def _metrics_rows(body: str) -> list[list[str]]:
    rows = []
    for row in re.findall(r'<tr data-variant="[^"]+">(.*?)</tr>', body, re.S):
        rows.append([re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>",
                                                                                  row, re.S)])
    return rows


def test_the_reward_models_page_tabulates_and_plots_raw_and_textnorm_per_category(client, researcher):
    _tiny_tia2()
    client.force_login(researcher)
    body = client.get(reverse("reward-models")).content.decode()
    rows = _metrics_rows(body)
    assert len(rows) == 4  # 2 categories x (raw, TextNorm)
    raw, textnorm = rows[0], rows[1]
    assert raw[:4] == ["oracle", "raw", "1.000", "1.000"] and raw[-2:] == ["2", "0"]
    assert textnorm[0] == "oracle" and textnorm[1].startswith("TextNorm") and textnorm[2] == "0.000"
    for header in ("AUROC", "AUPRC", "AP@5", "AP@10", "AP@25", "Spearman", "Kendall", "Kept", "Dropped"):
        assert f">{header}</th>" in body
    assert body.count('<svg role="img"') == 4  # AUROC and AUPRC for each category
    assert 'aria-label="AUROC by reward model in counting: raw and TextNorm side by side"' in body
    assert "Fleiss" in body and "Computed" in body


def test_the_reward_models_report_is_cached_until_a_score_is_added(client, researcher):
    model = _tiny_tia2()
    client.force_login(researcher)
    url = reverse("reward-models")
    with CaptureQueriesContext(connection) as cold:
        first = client.get(url).content.decode()
    with CaptureQueriesContext(connection) as warm:
        second = client.get(url).content.decode()
    assert len(warm) < len(cold)
    assert "by a worker" in second and "by a worker" not in first  # first: the worker ran inline
    assert not any("COUNT(" in q["sql"].upper() for q in warm.captured_queries)
    assert len(_metrics_rows(second)) == 4

    # A score in a new TextNorm setting (same model, same prompt sets): a new row at once.
    image = Image.objects.select_related("prompt").first()
    RewardScore.objects.create(image=image, reward_model=model, variant="textnorm", normalize="minmax", scale=3.0,
                               prompt_set=image.prompt.contrastive_sets.get(), value=1.0)
    third = client.get(url).content.decode()
    assert "by a worker" not in third and "minmax s=3" in third
    # One image scored: a row in each category, with no figures: its prompts are dropped as
    # partly scored (the image's) or not scored (the rest).
    assert len(_metrics_rows(third)) == 6
    new_rows = [row for row in _metrics_rows(third) if "s=3" in row[1]]
    assert [row[2] for row in new_rows] == ["n/a", "n/a"]
    assert "partly scored 1, not scored 1" in third and "not scored 2" in third

    # A deletion that spares the newest rows is not seen by the key: the button recomputes.
    RewardScore.objects.filter(reward_model=model, variant="textnorm", scale=1.0).delete()
    assert len(_metrics_rows(client.get(url).content.decode())) == 6
    assert client.post(reverse("reward-models-refresh")).status_code == 302
    assert len(_metrics_rows(client.get(url).content.decode())) == 4


def test_the_reward_models_page_never_computes_in_the_request(client, researcher, settings, monkeypatch):
    """With a worker that has not run yet, the page answers at once: "being computed" (and
    reloads itself), or the previous report marked as being recomputed; the build is asked
    for once, however many requests come meanwhile."""
    from annotate import selectors_models
    from workers import tasks

    asked = []
    monkeypatch.setattr(tasks.tia2_report_build, "delay", lambda: asked.append(1))
    _tiny_tia2()
    client.force_login(researcher)
    url = reverse("reward-models")
    for _ in range(3):
        body = client.get(url).content.decode()
        assert 'id="report-pending"' in body and 'http-equiv="refresh"' in body and "metrics-table" not in body
    assert asked == [1]
    selectors_models.tia2_report_compute()  # the worker
    body = client.get(url).content.decode()
    assert 'id="report-pending"' not in body and len(_metrics_rows(body)) == 4
    model = RewardModel.objects.get()
    image = Image.objects.select_related("prompt").first()
    RewardScore.objects.create(image=image, reward_model=model, variant="textnorm", normalize="minmax", scale=3.0,
                               prompt_set=image.prompt.contrastive_sets.get(), value=1.0)
    body = client.get(url).content.decode()  # the old report, while the new one is built
    assert 'id="report-pending"' in body and "recomputing" in body and len(_metrics_rows(body)) == 4
    assert asked == [1, 1]
