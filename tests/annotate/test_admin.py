"""The admin as a researcher's management tool: every model registered, every list and add
page usable (search, filters, no query per row), annotators and strangers kept out, and the
actions and adds going through the services (jobs run inline after commit in tests)."""
import csv
import io
import re
import uuid
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate.models import (
    Assignment,
    AuditEvent,
    Checkpoint,
    ContrastivePromptSet,
    GenerationJob,
    HumanLabel,
    Image,
    Judgment,
    Prompt,
    Report,
    RewardModel,
    RewardScore,
    ScoringJob,
    Skip,
    Study,
    StudyItem,
    StudyMembership,
)
from annotate.services import exports
from annotate.services.annotation import assignment_next, judgment_submit, skip_submit
from annotate.services.checkpoints import checkpoint_register
from annotate.services.generation import generation_job_create
from annotate.services.reports import report_request
from annotate.services.studies import study_create_pairwise
from tests.factories import annotators, make_images, open_pairwise

pytestmark = pytest.mark.django_db

MODELS = sorted(apps.get_app_config("annotate").get_models(), key=lambda m: m.__name__)
NOT_ADDABLE = {Image, RewardScore, StudyItem, Assignment, Judgment, Skip, AuditEvent, HumanLabel}


def changelist(model) -> str:
    return reverse(f"admin:annotate_{model._meta.model_name}_changelist")


def add_url(model) -> str:
    return reverse(f"admin:annotate_{model._meta.model_name}_add")


def change_url(obj) -> str:
    return reverse(f"admin:annotate_{obj._meta.model_name}_change", args=[obj.pk])


def said(response) -> list[str]:
    """The messages shown on the page an action led to."""
    return [m.message for m in response.context["messages"]]


def act(client, model, action: str, objects):
    """Run an admin action on ``objects``; a redirect (to the list, with the action's messages)
    is followed, an export is not."""
    data = {"action": action, "_selected_action": [o.pk for o in objects], "index": 0}
    response = client.post(changelist(model), data)
    return client.get(response["Location"]) if response.status_code == 302 and not \
        response["Location"].startswith(reverse("admin:login")) else response


def add(client, model, form: dict):
    """Post an add form; a success is followed to the list, where its message is shown."""
    response = client.post(add_url(model), form)
    if response.status_code == 302:
        client.get(response["Location"])
    return response


def streamed_csv(response) -> list[list[str]]:
    assert response.streaming
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def judge(study, users, n: int) -> None:
    """``n`` judgments, each by the first of ``users`` who has an item left."""
    for made in range(n):
        user, lease = next((u, lease) for u in users if (lease := assignment_next(study=study, annotator=u)))
        judgment_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk, client_id=uuid.uuid4(),
                        choice="left", time_spent_ms=900 + made)


@pytest.fixture
def res_client(researcher) -> Client:
    client = Client()
    client.force_login(researcher)
    return client


@pytest.fixture
def world(researcher, django_capture_on_commit_callbacks):
    """A row of every model: an open pairwise study with a judgment, a skip and a lease; a
    procedural checkpoint whose generation job ran, its best-of-n child, a reward model with a
    score, a scoring job, a label, a contrastive set and a report."""
    users = annotators(2)
    study = open_pairwise(members=users, prompts=3, per_prompt=1, redundancy=2)
    judge(study, users[:1], 1)
    lease = assignment_next(study=study, annotator=users[1])
    skip_submit(study=study, annotator=users[1], item_public_id=lease.item.public_id, lease_id=lease.pk, client_id=uuid.uuid4(),
                reason="unsure", note="too dark")
    assignment_next(study=study, annotator=users[1])  # an active lease
    prompt = Prompt.objects.order_by("pk").first()
    ContrastivePromptSet.objects.create(prompt=prompt, source="imported", version="v1", texts=["two cups"])
    drawn = checkpoint_register(name="drawn", backend="procedural")
    best = Checkpoint.objects.create(name="drawn best-of-2", backend="best_of_n", derived_from=drawn)
    with django_capture_on_commit_callbacks(execute=True):
        job = generation_job_create(checkpoint=drawn, dataset=study.dataset, seeds=[0], width=64, height=64,
                                    created_by=researcher)
    job.refresh_from_db()
    assert (job.status, job.done_images, job.total_images) == ("succeeded", 3, 3)
    reward = RewardModel.objects.create(name="clip-reference", kind="clip", location="/models/clip")
    image = Image.objects.filter(checkpoint=drawn).order_by("pk").first()
    RewardScore.objects.create(image=image, reward_model=reward, variant="raw", value=0.25)
    HumanLabel.objects.create(image=image, slot=0, value=1)
    ScoringJob.objects.create(reward_model=reward, checkpoint=drawn, variants=["raw"], total_images=3)
    report_request(study=study, fmt="json", enqueue=False)
    return SimpleNamespace(study=study, users=users, drawn=drawn, best=best, job=job, reward=reward, image=image,
                           prompt=prompt)


# --- registration and pages ---------------------------------------------------------------

def test_every_model_of_the_app_is_registered():
    names = {m.__name__ for m in MODELS}
    # The jobs, the report and the models of abstract bases (WorkerJob, LeaseOutcome) included.
    assert {"GenerationJob", "ScoringJob", "Report", "Judgment", "Skip"} <= names and len(names) == 18
    assert [m.__name__ for m in MODELS if not admin.site.is_registered(m)] == []


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelist_renders_rows_and_takes_a_search_and_a_filter(world, res_client, model):
    response = res_client.get(changelist(model))
    assert response.status_code == 200
    cl = response.context["cl"]
    assert len(cl.result_list) >= 1
    assert cl.search_fields and cl.has_filters
    assert res_client.get(changelist(model), {"q": "a"}).status_code == 200
    for spec in cl.filter_specs[:2]:
        choice = next(c for c in spec.choices(cl) if not c["selected"])
        filtered = res_client.get(changelist(model) + choice["query_string"])
        assert filtered.status_code == 200, choice  # not a redirect to ?e=1 (a bad lookup)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_add_page_renders_for_what_the_admin_may_add(world, res_client, model):
    response = res_client.get(add_url(model))
    # Images, scores, items, leases, judgments and skips are made by jobs, studies and the engine.
    assert response.status_code == (403 if model in NOT_ADDABLE else 200)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_change_page_renders(world, res_client, model):
    assert res_client.get(change_url(model.objects.order_by("pk").first())).status_code == 200


def test_inlines_show_the_related_rows(world, res_client):
    page = res_client.get(change_url(world.study)).content.decode()
    assert all(u.username in page for u in world.users) and "Study memberships (the first 100;" in page
    page = res_client.get(change_url(world.image)).content.decode()
    assert "clip-reference" in page and "Aligned" in page
    page = res_client.get(change_url(world.drawn)).content.decode()
    assert "drawn best-of-2" in page
    page = res_client.get(change_url(world.prompt)).content.decode()
    assert "two cups" in page
    item = Judgment.objects.get().item
    page = res_client.get(change_url(item)).content.decode()
    assert world.users[0].username in page
    skipped = Skip.objects.get().item
    assert "too dark" in res_client.get(change_url(skipped)).content.decode()
    # A study's items are a link to their filtered list, never an inline.
    assert f"{changelist(StudyItem)}?study__id__exact={world.study.pk}" in \
        res_client.get(change_url(world.study)).content.decode()


def test_search_and_filter_narrow_the_lists(world, res_client):
    cl = res_client.get(changelist(Prompt), {"q": "2 cups"}).context["cl"]
    assert [p.text for p in cl.result_list] == ["a realistic photo of 2 cups"]
    other = open_pairwise(prompts=1, per_prompt=1)
    cl = res_client.get(changelist(StudyItem), {"study__id__exact": other.pk}).context["cl"]
    assert {i.study_id for i in cl.result_list} == {other.pk} and len(cl.result_list) == 1


def test_annotators_and_strangers_are_sent_to_the_admin_login(world, annotator):
    login = reverse("admin:login")
    ann = Client()
    ann.force_login(annotator)
    for client in (Client(), ann):
        for url in [reverse("admin:index"), *(changelist(m) for m in MODELS), add_url(Study), change_url(world.study)]:
            response = client.get(url)
            assert response.status_code == 302 and response["Location"].startswith(login), url
        response = act(client, Study, "close_studies", [world.study])
        assert response.status_code == 302 and response["Location"].startswith(login)
        response = act(client, Study, "export_judgments", [world.study])
        assert response.status_code == 302 and not getattr(response, "streaming", False)
    world.study.refresh_from_db()
    assert world.study.status == "open"


# --- exports -------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_export_csv_streams_the_list_columns_of_the_selected_rows(world, res_client, model):
    chosen = list(model.objects.order_by("pk")[:2])
    response = act(res_client, model, "export_csv", chosen)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="{model._meta.model_name}.csv"'
    rows = streamed_csv(response)
    model_admin = admin.site._registry[model]
    assert rows[0][0] == "id" and rows[0][1:] == [c for c in model_admin.list_display if c != "id"]
    assert sorted(int(r[0]) for r in rows[1:]) == [o.pk for o in chosen]


def test_export_csv_values(world, res_client):
    prompts = list(Prompt.objects.filter(dataset=world.study.dataset).order_by("source_index")[:2])
    rows = streamed_csv(act(res_client, Prompt, "export_csv", prompts))
    assert rows[0] == ["id", "prompt_text", "dataset", "category", "source_index", "contrastive_set_count",
                       "images_link"]
    assert rows[1:] == [[str(p.pk), p.text, world.study.dataset.name, "", str(p.source_index),
                         "1" if p == world.prompt else "0", "images"] for p in prompts]
    rows = streamed_csv(act(res_client, GenerationJob, "export_csv", [world.job]))
    record = dict(zip(rows[0], rows[1]))
    assert (record["status"], record["progress"], record["seeds"], record["checkpoint"]) == (
        "succeeded", "3/3", "[0]", "drawn")


def test_export_judgments_of_the_selected_studies(world, res_client):
    users = annotators(2, prefix="second")
    second = open_pairwise(members=users, prompts=2, per_prompt=1)
    judge(second, users, 3)
    response = act(res_client, Study, "export_judgments", [world.study])
    assert response["Content-Disposition"] == f'attachment; filename="study-{world.study.public_id}-judgments.csv"'
    rows = streamed_csv(response)
    own = list(csv.reader(io.StringIO("".join(exports.judgments_export_chunks(study=world.study, fmt="csv")))))
    assert rows[0] == ["study", *exports.COLUMNS] == ["study", *own[0]]
    assert rows[1:] == [[str(world.study.public_id), *row] for row in own[1:]] and len(rows) == 2

    rows = streamed_csv(act(res_client, Study, "export_judgments", [world.study, second]))
    assert [r[0] for r in rows[1:]] == [str(world.study.public_id)] + [str(second.public_id)] * 3
    assert sorted(int(r[1]) for r in rows[1:]) == sorted(Judgment.objects.values_list("pk", flat=True))


# --- jobs ----------------------------------------------------------------------------------

def test_run_again_makes_only_missing_images(world, res_client, django_capture_on_commit_callbacks):
    job = world.job
    response = act(res_client, GenerationJob, "run_again", [job])
    assert said(response) == [f"Skipped 1: job {job.pk} (complete: nothing is missing)."]

    kept = set(Image.objects.filter(job=job).values_list("pk", flat=True))
    Image.objects.filter(job=job).exclude(pk=world.image.pk).order_by("pk").first().delete()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = act(res_client, GenerationJob, "run_again", [job])
    assert len(callbacks) == 1 and said(response) == [f"Queued 1: job {job.pk} (queued again)."]
    job.refresh_from_db()
    assert (job.status, job.done_images) == ("succeeded", 3)
    assert Image.objects.filter(checkpoint=world.drawn).count() == 3
    assert len(kept & set(Image.objects.filter(checkpoint=world.drawn).values_list("pk", flat=True))) == 2

    GenerationJob.objects.filter(pk=job.pk).update(status="failed", error="CUDA out of memory")
    Image.objects.filter(checkpoint=world.drawn).exclude(pk=world.image.pk).delete()
    queued = GenerationJob.objects.create(checkpoint=world.drawn, dataset=world.study.dataset, seeds=[1])
    with django_capture_on_commit_callbacks(execute=True):
        response = act(res_client, GenerationJob, "run_again", [job, queued])
    assert said(response) == [f"Queued 1: job {job.pk} (retried).", f"Skipped 1: job {queued.pk} (already queued)."]
    job.refresh_from_db()
    assert (job.status, job.error, job.done_images) == ("succeeded", "", 3)
    assert Image.objects.filter(checkpoint=world.drawn).count() == 3


def test_cancel_action(world, res_client):
    queued = GenerationJob.objects.create(checkpoint=world.drawn, dataset=world.study.dataset, seeds=[1])
    response = act(res_client, GenerationJob, "cancel", [queued, world.job])
    assert said(response)[0] == f"Cancelled 1: job {queued.pk}."
    assert "only a queued or running job can be cancelled" in said(response)[1]
    queued.refresh_from_db()
    assert queued.status == "cancelled"


def test_regenerate_a_checkpoint_makes_a_job_per_dataset_with_its_latest_settings(
        world, res_client, django_capture_on_commit_callbacks):
    dataset = world.study.dataset
    new = Prompt.objects.create(dataset=dataset, text="a photo of a red cup", source_index=99)
    alpha = Checkpoint.objects.get(name="alpha-ckpt")  # images from the factory, no job
    with django_capture_on_commit_callbacks(execute=True):
        response = act(res_client, Checkpoint, "regenerate", [world.drawn, world.best, alpha])
    job = GenerationJob.objects.exclude(pk=world.job.pk).get()
    assert (job.checkpoint, job.dataset, job.seeds, job.width, job.height, job.dtype, job.created_by.username) == (
        world.drawn, dataset, [0], 64, 64, world.job.dtype, "res")
    job.refresh_from_db()
    assert (job.status, job.total_images, job.done_images) == ("succeeded", 4, 4)
    assert Image.objects.filter(checkpoint=world.drawn, prompt=new).count() == 1
    assert Image.objects.filter(job=job).count() == 1  # only the missing one was made
    messages = said(response)
    assert messages[0].startswith(f"Created 1: job {job.pk} (drawn on {dataset.name}, settings of job {world.job.pk})")
    assert "drawn best-of-2 (a best-of-n selection makes no images of its own)" in messages[1]
    assert f"alpha-ckpt on {dataset.name} (no generation job made its images: no settings to reuse)" in messages[1]


def test_score_again_and_rescore_a_reward_model(world, res_client, tmp_path, django_capture_on_commit_callbacks):
    from tests.workers.tiny_rewards import save_clip

    folder = save_clip(tmp_path / "clip", seed=3)
    form = {"name": "tiny-clip", "kind": "clip", "location": str(folder), "config": '{"device": "cpu"}'}
    assert add(res_client, RewardModel, form).status_code == 302
    reward = RewardModel.objects.get(name="tiny-clip")
    assert len(reward.fingerprint) == 64

    # Added through the admin: the service counts the images and the job runs after commit.
    form = {"reward_model": reward.pk, "checkpoint": world.drawn.pk, "variants": ["raw"],
            "prompt_set_source": "imported", "prompt_set_version": "", "normalize": "minmax", "scale": 1,
            "temperature": 1, "batch_size": 2, "dataset": "", "generation_job": ""}
    with django_capture_on_commit_callbacks(execute=True):
        assert add(res_client, ScoringJob, form).status_code == 302
    job = ScoringJob.objects.get(reward_model=reward)
    assert (job.status, job.total_images, job.done_images, job.created_by.username) == ("succeeded", 3, 3, "res")
    scores = RewardScore.objects.filter(reward_model=reward)
    assert scores.count() == 3

    response = act(res_client, ScoringJob, "score_again", [job])
    assert said(response) == [f"Skipped 1: job {job.pk} (complete: nothing is missing)."]
    lost = scores.order_by("pk").first()
    lost.delete()
    with django_capture_on_commit_callbacks(execute=True):
        response = act(res_client, ScoringJob, "score_again", [job])
    assert said(response) == [f"Queued 1: job {job.pk} (queued again)."]
    assert scores.count() == 3 and scores.filter(image=lost.image_id).exists()

    ScoringJob.objects.filter(pk=job.pk).update(status="failed")
    scores.filter(image=lost.image_id).delete()
    with django_capture_on_commit_callbacks(execute=True):
        response = act(res_client, RewardModel, "rescore", [reward, world.reward])
    other = ScoringJob.objects.get(reward_model=world.reward)
    assert said(response)[0] == f"Queued 1: tiny-clip job {job.pk} (retried)."
    assert said(response)[1] == f"Skipped 1: clip-reference job {other.pk} (already queued)."
    job.refresh_from_db()
    assert job.status == "succeeded" and scores.count() == 3


# --- adds through the services -------------------------------------------------------------

def generation_form(world, **changes) -> dict:
    return {"checkpoint": world.drawn.pk, "dataset": world.study.dataset.pk, "seeds": "5, 6", "images_per_seed": 2,
            "width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 7.5, "scheduler": "",
            "dtype": "float32", **changes}


def test_adding_a_generation_job_goes_through_the_service(world, res_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = res_client.post(add_url(GenerationJob), generation_form(world))
    assert response.status_code == 302 and len(callbacks) == 1
    job = GenerationJob.objects.exclude(pk=world.job.pk).get()
    assert (job.seeds, job.images_per_seed, job.total_images, job.created_by.username) == ([5, 6], 2, 12, "res")
    job.refresh_from_db()
    assert (job.status, job.done_images) == ("succeeded", 12)
    assert Image.objects.filter(job=job).count() == 12


@pytest.mark.parametrize("changes, field, message", [
    ({"width": 4}, "width", "must be an integer >= 8, not 4"),
    ({"seeds": "-1"}, "seeds", "must be a non-empty list of integers from 0 to 2^63 - 1 (the image table's range), not [-1]"),
    ({"seeds": "one, two"}, "seeds", "must be integers separated by commas"),
    ({"scheduler": "fancy"}, "scheduler", "scheduler 'fancy' is not one of"),
    ({"checkpoint": "best"}, "checkpoint", "is a best-of-n selection of another checkpoint's images"),
])
def test_a_bad_generation_job_shows_the_service_error_on_its_field_and_writes_nothing(
        world, res_client, changes, field, message):
    if changes.get("checkpoint") == "best":
        changes["checkpoint"] = world.best.pk
    response = res_client.post(add_url(GenerationJob), generation_form(world, **changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field] and message in errors[field][0]
    assert GenerationJob.objects.count() == 1


def test_a_bad_scoring_job_shows_the_service_error_and_writes_nothing(world, res_client):
    form = {"reward_model": world.reward.pk, "variants": ["raw", "textnorm"], "prompt_set_source": "imported",
            "prompt_set_version": "", "normalize": "minmax", "scale": 1, "temperature": 1, "batch_size": 8}
    errors = res_client.post(add_url(ScoringJob), form).context["adminform"].form.errors
    assert errors == {"__all__": ["dataset, checkpoint or generation_job: give at least one"]}
    errors = res_client.post(add_url(ScoringJob), {**form, "checkpoint": world.drawn.pk}).context[
        "adminform"].form.errors
    assert list(errors) == ["prompt_set_source"] and "have no contrastive set of source 'imported'" in \
        errors["prompt_set_source"][0]
    errors = res_client.post(add_url(ScoringJob), {**form, "checkpoint": world.drawn.pk, "variants": ["raw"],
                                                   "batch_size": 0}).context["adminform"].form.errors
    assert errors == {"batch_size": ["must be a positive integer, not 0"]}
    assert ScoringJob.objects.count() == 1
    form = res_client.get(add_url(ScoringJob)).context["adminform"].form  # the service's defaults are shown
    assert (form["variants"].value(), form["prompt_set_source"].value(), form["normalize"].value()) == (
        ["raw", "textnorm"], "imported", "minmax")


def test_adding_a_checkpoint_registers_it(world, res_client, tmp_path):
    form = {"name": "drawn-noisy", "backend": "procedural", "location": "", "base_model": "",
            "config": '{"error_rate": 0.3}', "description": ""}
    assert res_client.post(add_url(Checkpoint), form).status_code == 302
    made = Checkpoint.objects.get(name="drawn-noisy")
    assert len(made.fingerprint) == 64 and made.config == {"error_rate": 0.3}

    for changes, field, message in [
        ({"name": "sd", "backend": "diffusers"}, "location", "a diffusers checkpoint needs one"),
        ({"name": "sd", "backend": "diffusers", "location": str(tmp_path)}, "location", "is not a diffusers folder"),
        ({"name": "bon", "backend": "best_of_n"}, "backend", "best_of_n is not one of the available choices"),
        ({"config": '{"error_rate": 3}'}, "config", "error_rate: must be a number within [0, 1], not 3"),
        ({}, "name", f"already registered, with the same settings, as checkpoint {made.pk}"),
    ]:
        response = res_client.post(add_url(Checkpoint), {**form, **changes})
        errors = response.context["adminform"].form.errors
        assert list(errors) == [field] and message in errors[field][0], errors
    assert Checkpoint.objects.count() == 5


def test_a_checkpoint_change_keeps_its_weights(world, res_client):
    fields = res_client.get(change_url(world.drawn)).context["adminform"].form.fields
    assert set(fields) == {"name", "description"}


def test_adding_a_study_makes_its_items_through_the_service(world, res_client):
    dataset, checkpoints = make_images(prompts=2, per_prompt=1, checkpoints=("c1", "c2"))
    form = {"name": "new pairs", "kind": "pairwise", "dataset": dataset.pk, "checkpoints": [c.pk for c in checkpoints],
            "pairing": "matched", "gold_share": 0, "rating_scale": "binary", "redundancy": 2,
            "gold_min_accuracy": 0.7, "gold_min_answers": 5, "lease_seconds": 600, "max_open_leases": 3,
            "item_order": "closest"}
    assert res_client.post(add_url(Study), form).status_code == 302
    study = Study.objects.get(name="new pairs")
    assert (study.status, study.item_count, study.items.count(), study.created_by.username) == ("draft", 2, 2, "res")
    assert study.question == "Which image matches the description better?" and study.completion_code

    response = res_client.post(add_url(Study), {**form, "name": "one", "checkpoints": [checkpoints[0].pk]})
    assert response.context["adminform"].form.errors == {"__all__": ["a pairwise study needs two or more checkpoints"]}
    assert not Study.objects.filter(name="one").exists()


def test_adding_a_report_requests_it(world, res_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = res_client.post(add_url(Report), {"study": world.study.pk, "format": "csv", "rounds": 1000, "seed": 1})
    assert response.status_code == 302
    report = Report.objects.get(format="csv")
    assert (report.status, report.params, report.created_by.username) == ("succeeded", {"rounds": 1000, "seed": 1}, "res")
    listing = res_client.get(changelist(Report)).content.decode()
    link = re.search(r'<a href="([^"]+)">download</a>', listing).group(1)
    assert "/media/" not in link and res_client.get(link).status_code == 200  # media is not served as such
    errors = res_client.post(add_url(Report), {"study": world.study.pk, "format": "csv", "rounds": 999, "seed": 1}
                             ).context["adminform"].form.errors
    assert errors == {"rounds": ["must be between 1,000 and 100,000, not 999"]} and Report.objects.count() == 2


# --- studies and members -------------------------------------------------------------------

def test_open_and_close_studies(world, res_client):
    dataset, checkpoints = make_images(prompts=2, per_prompt=1, checkpoints=("c1", "c2"))
    draft = study_create_pairwise(name="draft", dataset=dataset, checkpoints=checkpoints)
    empty = Study.objects.create(name="empty", kind="rating")
    response = act(res_client, Study, "open_studies", [draft, empty, world.study])
    assert response.status_code == 200  # the list with the messages, not an error page
    assert said(response) == ["Opened 1: draft.",
                              "Skipped 2: empty (a study without items cannot be opened); pairs (already open)."]
    draft.refresh_from_db()
    empty.refresh_from_db()
    assert (draft.status, empty.status) == ("open", "draft")

    response = act(res_client, Study, "close_studies", [draft, world.study])
    assert said(response) == ["Closed 2: draft, pairs."] or said(response) == ["Closed 2: pairs, draft."]
    assert set(Study.objects.filter(pk__in=[draft.pk, world.study.pk]).values_list("status", flat=True)) == {"closed"}
    response = act(res_client, Study, "close_studies", [draft])
    assert said(response) == ["Skipped 1: draft (already closed)."]
    response = act(res_client, Study, "open_studies", [draft])
    draft.refresh_from_db()
    assert said(response) == ["Opened 1: draft."] and draft.status == "open" and draft.closed_at is None


def test_pausing_members_goes_through_the_service(world, res_client):
    holder = world.users[1]
    membership = StudyMembership.objects.get(study=world.study, annotator=holder)
    assert Assignment.objects.filter(annotator=holder, state="active").count() == 1
    response = act(res_client, StudyMembership, "pause", [membership])
    assert said(response) == [f"Paused 1: {holder.username} in pairs."]
    membership.refresh_from_db()
    assert membership.is_paused and membership.paused_reason == "paused by res"
    assert not Assignment.objects.filter(annotator=holder, state="active").exists()  # the lease is released

    response = res_client.post(change_url(membership), {"is_paused": "", "paused_reason": "",
                                                        "external_worker_id": "W1", "external_session_id": ""})
    assert response.status_code == 302
    membership.refresh_from_db()
    assert (membership.is_paused, membership.paused_reason, membership.external_worker_id) == (False, "", "W1")


def test_a_judgment_is_only_flagged_in_the_admin(world, res_client):
    judgment = Judgment.objects.get()
    fields = res_client.get(change_url(judgment)).context["adminform"].form.fields
    assert set(fields) == {"is_flagged", "flag_reason"}
    response = res_client.post(change_url(judgment), {"is_flagged": "on", "flag_reason": "clicked through"})
    assert response.status_code == 302
    judgment.refresh_from_db()
    assert (judgment.is_flagged, judgment.flag_reason, judgment.choice) == (True, "clicked through", "left")


# --- no query per row ----------------------------------------------------------------------

def queries_for(client, url) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def grow_judgments(n: int) -> None:
    study = Study.objects.first() or open_pairwise(members=annotators(2), prompts=10, per_prompt=1, redundancy=2)
    judge(study, [m.annotator for m in study.memberships.order_by("pk").select_related("annotator")], n)


def grow_items(n: int) -> None:
    open_pairwise(prompts=n, per_prompt=1)


def grow_members(n: int) -> None:
    study = Study.objects.first() or open_pairwise(prompts=1, per_prompt=1)
    for user in annotators(n, prefix=f"m{StudyMembership.objects.count()}-"):
        StudyMembership.objects.create(study=study, annotator=user)


@pytest.mark.parametrize("model, grow", [(Judgment, grow_judgments), (Assignment, grow_judgments),
                                         (StudyItem, grow_items), (StudyMembership, grow_members)],
                         ids=["Judgment", "Assignment", "StudyItem", "StudyMembership"])
def test_a_changelist_costs_the_same_queries_for_1_and_20_rows(res_client, model, grow):
    grow(1)
    assert res_client.get(changelist(model)).context["cl"].result_count == 1
    one = queries_for(res_client, changelist(model))
    grow(19)
    assert res_client.get(changelist(model)).context["cl"].result_count == 20
    assert queries_for(res_client, changelist(model)) == one


def test_a_study_change_pauses_a_member_from_its_inline_through_the_service(world, res_client):
    study = world.study
    members = list(study.memberships.order_by("pk"))
    holder = members[1]
    data = {"name": "pairs renamed", "instructions": "", "question": study.question, "redundancy": 2,
            "gold_min_accuracy": 0.7, "gold_min_answers": 5, "lease_seconds": 600, "max_open_leases": 3,
            "items_per_annotator": "", "item_order": "closest", "completion_code": study.completion_code,
            "memberships-TOTAL_FORMS": 2, "memberships-INITIAL_FORMS": 2, "memberships-MIN_NUM_FORMS": 0,
            "memberships-MAX_NUM_FORMS": 1000}
    for i, member in enumerate(members):
        data |= {f"memberships-{i}-id": member.pk, f"memberships-{i}-study": study.pk}
    data |= {"memberships-1-is_paused": "on", "memberships-1-paused_reason": "random clicks"}
    response = res_client.post(change_url(study), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    holder.refresh_from_db()
    members[0].refresh_from_db()
    assert (holder.is_paused, holder.paused_reason, members[0].is_paused) == (True, "random clicks", False)
    assert not Assignment.objects.filter(annotator=holder.annotator, state="active").exists()  # released
    study.refresh_from_db()
    assert (study.name, study.status, study.item_count) == ("pairs renamed", "open", 3)


@pytest.mark.postgres
def test_an_unfiltered_big_list_is_counted_from_the_planner_estimate(world, res_client, monkeypatch):
    from annotate.admin import LargeTablePaginator

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotate_image")
    monkeypatch.setattr(LargeTablePaginator, "ESTIMATE_FROM", 2)
    Image.objects.filter(checkpoint=world.drawn).delete()  # the estimate lags behind until the next ANALYZE
    assert res_client.get(changelist(Image)).context["cl"].result_count == Image.objects.count() + 3
    filtered = res_client.get(changelist(Image), {"checkpoint__id__exact": world.best.pk}).context["cl"]
    assert filtered.result_count == 0  # a filtered list is counted


# --- what the admin must not let a researcher break -----------------------------------------

def test_data_others_rest_on_cannot_be_edited_or_deleted_here(world, res_client):
    """A prompt's text once images show it; an item's gold answer; memberships, jobs, scores
    and TIA2's labels: each edit or delete would change what judgments, reports or the
    benchmark mean (a review made every one of these)."""
    page = res_client.get(change_url(world.prompt)).content.decode()
    assert 'name="text"' not in page and 'name="dataset"' not in page  # shown, not editable
    fresh = Prompt.objects.create(dataset=world.study.dataset, text="no image yet", source_index=99)
    assert 'name="text"' in res_client.get(change_url(fresh)).content.decode()
    item = world.study.items.order_by("pk").first()
    res_client.post(change_url(item), {"is_gold": "on", "gold_answer": "banana"})
    item.refresh_from_db()
    assert (item.is_gold, item.gold_answer) == (False, "")
    for obj in (StudyMembership.objects.filter(study=world.study).first(), world.job,
                RewardScore.objects.first(), HumanLabel.objects.first()):
        url = reverse(f"admin:annotate_{obj._meta.model_name}_delete", args=[obj.pk])
        assert res_client.post(url, {"post": "yes"}).status_code == 403, type(obj).__name__
        assert type(obj).objects.filter(pk=obj.pk).exists()
    label = HumanLabel.objects.first()
    assert res_client.post(change_url(label), {"image": label.image_id, "slot": 0, "value": 0}).status_code == 403


def test_a_studys_settings_keep_their_bounds_and_its_redundancy_once_opened(world, res_client):
    form = res_client.get(change_url(world.study)).context["adminform"].form
    data = {name: ("" if value is None else value) for name, value in form.initial.items()
            if name in form.fields and not isinstance(value, list)}
    assert "redundancy" not in form.fields  # opened: items were filled to it
    for field, bad in (("lease_seconds", 1), ("items_per_annotator", 0), ("gold_min_answers", 0)):
        response = res_client.post(change_url(world.study), {**data, field: bad})
        errors = response.context["adminform"].form.errors
        assert field in errors and "must be from" in errors[field][0], (field, errors)
    world.study.refresh_from_db()
    assert (world.study.lease_seconds, world.study.items_per_annotator, world.study.gold_min_answers) == (600, None, 5)


def test_bad_configs_seeds_and_sets_are_field_errors_not_500s(world, res_client):
    for model, form in ((Checkpoint, {"name": "listy", "backend": "procedural", "config": "[1, 2]"}),
                        (RewardModel, {"name": "listy", "kind": "clip", "location": "/models/x", "config": '"abc"'})):
        response = add(res_client, model, form)
        assert response.status_code == 200, model.__name__
        assert "must be a JSON object" in response.context["adminform"].form.errors["config"][0]
    response = add(res_client, Report, {"study": world.study.pk, "format": "csv", "rounds": 1000, "seed": -5})
    assert response.context["adminform"].form.errors == {"seed": ["must be from 0 to 2^32 - 1, not -5"]}
    for texts in ('"abc"', '{"a": 1}', "[1, 2]", '["two cups", " "]'):
        response = add(res_client, ContrastivePromptSet, {"prompt": world.prompt.pk, "source": "imported",
                                                            "version": f"v-{texts}", "texts": texts})
        assert "a JSON list of one or more prompts" in response.context["adminform"].form.errors["texts"][0], texts
    assert not Checkpoint.objects.filter(name="listy").exists() and not Report.objects.filter(params__seed=-5).exists()


def test_a_draft_cannot_be_closed_so_it_never_opens_without_its_opening(world, res_client):
    draft = Study.objects.create(name="draft", kind="pairwise", dataset=world.study.dataset)
    messages = said(act(res_client, Study, "close_studies", [draft]))
    assert any("a draft cannot be closed" in m for m in messages)
    draft.refresh_from_db()
    assert draft.status == "draft"


def test_the_report_page_links_its_file_through_the_download_view(world, res_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        report = report_request(study=world.study, fmt="csv")
    page = res_client.get(change_url(report)).content.decode()
    assert reverse("api-report-download", args=[report.pk]) in page and "/media/" not in page


def test_the_audit_log_names_who_was_paused_so_a_search_finds_them(world, res_client):
    membership = StudyMembership.objects.filter(study=world.study).select_related("annotator").first()
    act(res_client, StudyMembership, "pause", [membership])
    event = AuditEvent.objects.filter(action="membership.pause").get()
    name = membership.annotator.username
    assert event.target_repr == f"{name} in {world.study.name}" and event.details["username"] == name
    found = res_client.get(changelist(AuditEvent), {"q": name}).context["cl"].result_list
    assert event in list(found)
    for obj in (world.study.items.first(), Judgment.objects.first(), Skip.objects.first(), Report.objects.first()):
        assert "object (" not in str(obj), type(obj).__name__


def test_members_are_added_to_a_study_by_username_on_its_page(world, res_client):
    new = annotators(2, prefix="late")
    form = res_client.get(change_url(world.study)).context["adminform"].form
    assert "add_members" in form.fields
    data = {name: ("" if value is None else value) for name, value in form.initial.items()
            if name in form.fields and not isinstance(value, list)}
    management = {f"memberships-{k}": v for k, v in (("TOTAL_FORMS", 0), ("INITIAL_FORMS", 0))}
    refused = res_client.post(change_url(world.study), {**data, **management, "add_members": "late0 nobody"})
    assert refused.context["adminform"].form.errors["add_members"] == ["unknown usernames: nobody"]
    saved = res_client.post(change_url(world.study), {**data, **management, "add_members": "late0, late1"})
    assert saved.status_code == 302, saved.context and saved.context["adminform"].form.errors
    assert set(world.study.memberships.values_list("annotator__username", flat=True)) >= {u.username for u in new}
    event = AuditEvent.objects.filter(action="study.members_add").latest("pk")
    assert event.details["usernames"] == ["late0", "late1"]


def test_the_admin_is_branded_links_studies_to_their_page_and_offers_no_best_of_n_registration(world, res_client):
    index = res_client.get(reverse("admin:index")).content.decode()
    assert "Calibra administration" in index and "Django administration" not in index
    page = res_client.get(change_url(world.study)).content.decode()
    view_on_site = re.search(r'href="([^"]+)" class="viewsitelink"', page).group(1)
    assert res_client.get(view_on_site)["Location"].endswith(reverse("study-detail", args=[world.study.pk]))
    backends = [value for value, _ in res_client.get(add_url(Checkpoint)).context["adminform"].form
                .fields["backend"].choices]
    assert "best_of_n" not in backends and "diffusers" in backends


def test_judgments_are_left_out_of_reports_and_counted_again_in_bulk(world, res_client):
    def judged():
        return Judgment.objects.filter(item__study=world.study)

    said_out = said(act(res_client, Judgment, "leave_out_of_reports", judged()))
    assert said_out[0] == f"Left out of reports: {judged().count()} judgment{'s' if judged().count() > 1 else ''}."
    assert all(j.is_flagged and j.flag_reason == "left out by res in the admin" for j in judged())
    assert said(act(res_client, Judgment, "count_in_reports", judged()))[0].startswith("Counted in reports again")
    assert not judged().filter(is_flagged=True).exists()
    names = list(AuditEvent.objects.filter(action="admin.action").order_by("pk").values_list("details__name", flat=True))
    assert names[-2:] == ["leave_out_of_reports", "count_in_reports"]
