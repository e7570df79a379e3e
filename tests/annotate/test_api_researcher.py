"""The researcher's look-ups and study actions in the REST API: datasets and reward models
listed (the ids and names the POST bodies take), reopen, pause and resume through the
dashboard's services (same audit events), and inputs that take an object by id or by name."""
import functools
import io

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate import apis_jobs
from annotate.models import (
    Assignment, AuditEvent, Checkpoint, ContrastivePromptSet, Dataset, GenerationJob, Image, Prompt, RewardModel,
    ScoringJob, Study, StudyItem, StudyMembership,
)
from annotate.services import annotation
from annotate.services.generation import generation_job_create
from annotate.services.scoring import scoring_job_create
from annotate.services.studies import study_close
from tests.factories import annotators, make_images, open_pairwise

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def token_client(user) -> APIClient:
    """As a script calls: with a token (the audit log must still name the researcher)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def member_url(action: str, study, member) -> str:
    return reverse(f"api-study-member-{action}", args=[getattr(study, "pk", study), member])


# --- permissions ------------------------------------------------------------------------------

def new_endpoints(study, membership):
    """(method, url) of every endpoint added here."""
    return [
        ("get", reverse("api-datasets")),
        ("get", reverse("api-reward-models")),
        ("get", reverse("api-study-members", args=[study.pk])),
        ("post", reverse("api-study-reopen", args=[study.pk])),
        ("post", member_url("pause", study, membership.pk)),
        ("post", member_url("pause", study, membership.annotator.username)),
        ("post", member_url("resume", study, membership.pk)),
    ]


def test_annotators_and_anonymous_are_refused_and_change_nothing(annotator):
    study = open_pairwise(members=[annotator])
    study_close(study=study)
    membership = StudyMembership.objects.get(study=study)
    membership.is_paused = True
    membership.save()
    events = AuditEvent.objects.count()
    for client, allowed in ((APIClient(), (401, 403)), (client_for(annotator), (403,)),
                            (token_client(annotator), (403,))):
        for method, url in new_endpoints(study, membership):
            response = getattr(client, method)(url, {}, format="json")
            assert response.status_code in allowed, (method, url, response.status_code)
            assert "prompts" not in response.content.decode()  # no listing leaks out with the refusal
    assert Study.objects.get(pk=study.pk).status == Study.Status.CLOSED
    assert StudyMembership.objects.get(pk=membership.pk).is_paused
    assert AuditEvent.objects.count() == events


def test_researchers_may_use_every_new_endpoint(researcher, annotator):
    study = open_pairwise(members=[annotator])
    study_close(study=study)
    membership = StudyMembership.objects.get(study=study)
    api = token_client(researcher)
    for method, url in new_endpoints(study, membership):
        assert getattr(api, method)(url, {}, format="json").status_code == 200, (method, url)


# --- datasets and reward models -----------------------------------------------------------------

def test_datasets_are_listed_with_their_counts_and_prompt_sets(researcher):
    dataset, checkpoints = make_images(prompts=3, per_prompt=2)  # 3 prompts, 2 checkpoints x 2 images
    prompt = dataset.prompts.first()
    Image.objects.create(prompt=prompt, seed=0, index=0)  # imported, without its pixels
    empty = Dataset.objects.create(name="empty", source=Dataset.Source.TIA2)
    for p in dataset.prompts.all()[:2]:
        ContrastivePromptSet.objects.create(prompt=p, source="rule_based", version="v1", texts=["x"])
    ContrastivePromptSet.objects.create(prompt=prompt, source="imported", version="tia2", texts=["y"])
    rows = client_for(researcher).get(reverse("api-datasets")).json()
    assert [r["name"] for r in rows] == [dataset.name, "empty"]
    first, second = rows
    assert (first["id"], first["source"], first["prompts"], first["images"], first["images_with_files"]) == (
        dataset.pk, "custom", 3, 13, 12)
    assert first["prompt_sets"] == [{"source": "imported", "version": "tia2", "prompts": 1},
                                    {"source": "rule_based", "version": "v1", "prompts": 2}]
    assert (second["id"], second["source"], second["prompts"], second["images"], second["prompt_sets"]) == (
        empty.pk, "tia2", 0, 0, [])


def test_the_dataset_list_costs_the_same_queries_for_one_dataset_or_many(researcher):
    api = client_for(researcher)
    make_images(prompts=2)
    api.get(reverse("api-datasets"))  # warm: sessions, content types
    with CaptureQueriesContext(connection) as one:
        assert len(api.get(reverse("api-datasets")).json()) == 1
    for _ in range(4):
        dataset, _ = make_images(prompts=3)
        ContrastivePromptSet.objects.create(prompt=dataset.prompts.first(), source="rule_based", version="v",
                                            texts=["x"])
    with CaptureQueriesContext(connection) as five:
        assert len(api.get(reverse("api-datasets")).json()) == 5
    assert len(five.captured_queries) == len(one.captured_queries)


def test_reward_models_are_listed_by_name(researcher):
    RewardModel.objects.create(name="pick", kind="pickscore", location="/models/pick", fingerprint="f" * 64)
    clip = RewardModel.objects.create(name="clip-b32", kind="clip", location="openai/clip", config={"dim": 512})
    rows = client_for(researcher).get(reverse("api-reward-models")).json()
    assert [r["name"] for r in rows] == ["clip-b32", "pick"]
    assert rows[0] == {**rows[0], "id": clip.pk, "kind": "clip", "kind_label": "CLIP score (cosine)",
                       "location": "openai/clip", "config": {"dim": 512}}
    assert rows[1]["kind"] == "pickscore"


# --- reopen -------------------------------------------------------------------------------------

def test_reopen_goes_through_the_service_and_is_audited(researcher, annotator):
    study = open_pairwise(members=[annotator])
    opened_at = study.opened_at
    api = token_client(researcher)
    url = reverse("api-study-reopen", args=[study.pk])
    assert api.post(url).json()["status"] == "open"  # an open study is left as it is
    assert not AuditEvent.objects.filter(action="study.reopen").exists()
    api.post(reverse("api-study-close", args=[study.pk]))
    reopened = api.post(url)
    assert reopened.status_code == 200
    body = reopened.json()
    assert (body["status"], body["closed_at"]) == ("open", None)
    study.refresh_from_db()
    assert study.status == Study.Status.OPEN and study.opened_at == opened_at
    (event,) = AuditEvent.objects.filter(action="study.reopen")
    assert (event.actor, event.target_id) == (researcher, str(study.pk))
    # The annotator gets items again.
    assert "item" in client_for(annotator).post(reverse("api-next", args=[study.public_id]), {},
                                                 format="json").json()


def test_a_draft_is_not_reopened_and_an_unknown_study_is_a_404(researcher):
    dataset, checkpoints = make_images(prompts=1)
    api = client_for(researcher)
    draft = api.post(reverse("api-studies"), {"name": "d", "kind": "pairwise", "dataset": dataset.pk,
                                              "checkpoints": [c.pk for c in checkpoints]}, format="json").json()
    refused = api.post(reverse("api-study-reopen", args=[draft["id"]]))
    assert refused.status_code == 400 and "only a closed study can be reopened" in refused.json()["detail"]
    assert Study.objects.get(pk=draft["id"]).status == Study.Status.DRAFT
    assert api.post(reverse("api-study-reopen", args=[999_999])).status_code == 404


# --- members: list, pause, resume ------------------------------------------------------------

def test_pause_releases_the_members_leases_and_resume_lets_them_back(researcher):
    ann, other = annotators(2)
    study = open_pairwise(members=[ann, other], redundancy=1)
    lease = annotation.assignment_next(study=study, annotator=ann)
    assert StudyItem.objects.get(pk=lease.item_id).taken == 1
    api = token_client(researcher)
    paused = api.post(member_url("pause", study, ann.username), {"reason": "too fast"}, format="json")
    assert paused.status_code == 200
    assert paused.json() | {"id": None} == paused.json() | {
        "id": None, "username": ann.username, "is_paused": True, "paused_reason": "too fast"}
    # The lease is released and its slot is free again, as the dashboard's pause does.
    assert Assignment.objects.get(pk=lease.pk).state == Assignment.State.RELEASED
    assert StudyItem.objects.get(pk=lease.item_id).taken == 0
    (event,) = AuditEvent.objects.filter(action="membership.pause")
    assert event.actor == researcher and event.details == {
        "study": study.pk, "annotator": ann.pk, "username": ann.username, "reason": "too fast", "leases_released": 1}
    refused = client_for(ann).post(reverse("api-next", args=[study.public_id]), {}, format="json")
    assert refused.status_code == 403 and refused.json()["error"] == "paused"
    members = {m["username"]: m for m in api.get(reverse("api-study-members", args=[study.pk])).json()}
    assert members[ann.username]["is_paused"] and not members[other.username]["is_paused"]
    # Resume, by membership id this time.
    membership_id = members[ann.username]["id"]
    resumed = api.post(member_url("resume", study, membership_id))
    assert resumed.status_code == 200 and (resumed.json()["is_paused"], resumed.json()["paused_reason"]) == (
        False, "")
    assert not StudyMembership.objects.get(pk=membership_id).is_paused
    (event,) = AuditEvent.objects.filter(action="membership.resume")
    assert event.actor == researcher and event.target_id == str(membership_id)
    assert "item" in client_for(ann).post(reverse("api-next", args=[study.public_id]), {}, format="json").json()


def test_the_api_and_the_dashboard_record_the_same_pause_events(researcher, client):
    ann_a, ann_b = annotators(2)
    study = open_pairwise(members=[ann_a, ann_b])
    one, two = StudyMembership.objects.filter(study=study).order_by("pk")
    client.force_login(researcher)
    assert client.post(reverse("study-member-pause", args=[study.pk, one.pk]), {"reason": "r"}).status_code == 302
    assert client_for(researcher).post(member_url("pause", study, two.pk), {"reason": "r"},
                                       format="json").status_code == 200
    dashboard, api = AuditEvent.objects.filter(action="membership.pause").order_by("pk")
    assert (dashboard.actor, dashboard.target_type, set(dashboard.details)) == (
        api.actor, api.target_type, set(api.details))


def test_pause_errors_name_the_field_or_answer_404(researcher, annotator):
    study = open_pairwise(members=[annotator])
    elsewhere = open_pairwise(members=annotators(1, prefix="x"))
    api = client_for(researcher)
    too_long = api.post(member_url("pause", study, annotator.username), {"reason": "r" * 301}, format="json")
    assert too_long.status_code == 400 and list(too_long.json()) == ["reason"]
    assert api.post(member_url("pause", study, "nobody")).status_code == 404
    outsider = StudyMembership.objects.get(study=elsewhere)  # a member of another study
    assert api.post(member_url("pause", study, outsider.pk)).status_code == 404
    assert api.post(member_url("pause", study, outsider.annotator.username)).status_code == 404
    assert api.post(member_url("pause", 999_999, annotator.username)).status_code == 404
    assert not StudyMembership.objects.filter(is_paused=True).exists()
    assert not AuditEvent.objects.filter(action="membership.pause").exists()


def test_a_username_of_digits_that_is_another_memberships_id_is_refused_as_ambiguous(researcher, annotator):
    study = open_pairwise(members=[annotator])
    theirs = StudyMembership.objects.get(study=study, annotator=annotator)
    (digits,) = annotators(1, prefix=str(theirs.pk + 1000))
    digits.username = str(theirs.pk)
    digits.save()
    StudyMembership.objects.create(study=study, annotator=digits)
    refused = client_for(researcher).post(member_url("pause", study, theirs.pk))
    assert refused.status_code == 400 and "member" in refused.json()
    assert not StudyMembership.objects.filter(is_paused=True).exists()


# --- objects by id or by name ----------------------------------------------------------------

def test_a_study_is_created_from_the_names_the_lists_show(researcher):
    dataset, checkpoints = make_images(prompts=2)
    api = client_for(researcher)
    names = {d["name"] for d in api.get(reverse("api-datasets")).json()}
    assert dataset.name in names
    created = api.post(reverse("api-studies"), {"name": "by name", "kind": "pairwise", "dataset": dataset.name,
                                                "checkpoints": ["alpha-ckpt", "beta-ckpt"]}, format="json")
    assert created.status_code == 201, created.content
    study = Study.objects.get(pk=created.json()["id"])
    assert study.dataset == dataset and set(study.checkpoints.all()) == set(checkpoints)
    # What a list response shows can be posted back as it is.
    shown = api.get(reverse("api-study", args=[study.pk])).json()
    again = api.post(reverse("api-studies"), {"name": "again", "kind": "pairwise", "dataset": shown["dataset"],
                                              "checkpoints": shown["checkpoints"]}, format="json")
    assert again.status_code == 201 and again.json()["items"] == shown["items"]
    # Ids as before (numbers, or digits in a string), and ids mixed with names.
    mixed = api.post(reverse("api-studies"), {"name": "mixed", "kind": "rating", "dataset": str(dataset.pk),
                                              "checkpoints": [checkpoints[0].pk, "beta-ckpt"]}, format="json")
    assert mixed.status_code == 201 and mixed.json()["checkpoints"] == ["alpha-ckpt", "beta-ckpt"]


def test_unknown_names_are_400s_that_name_the_field_and_the_value(researcher):
    dataset, checkpoints = make_images(prompts=1)
    api = client_for(researcher)
    body = {"name": "x", "kind": "pairwise", "dataset": dataset.name, "checkpoints": ["alpha-ckpt", "beta-ckpt"]}
    for field, value in (("dataset", "no-such-dataset"), ("checkpoints", ["alpha-ckpt", "typo-ckpt"])):
        response = api.post(reverse("api-studies"), {**body, field: value}, format="json")
        assert response.status_code == 400 and list(response.json()) == [field], response.content
        message = str(response.json()[field])
        assert ("no-such-dataset" if field == "dataset" else "typo-ckpt") in message
    unknown_id = api.post(reverse("api-studies"), {**body, "dataset": 999_999}, format="json")
    assert unknown_id.status_code == 400 and unknown_id.json() == {
        "dataset": ['Invalid pk "999999" - object does not exist.']}
    wrong_type = api.post(reverse("api-studies"), {**body, "dataset": True}, format="json")
    assert wrong_type.status_code == 400 and list(wrong_type.json()) == ["dataset"]
    assert not Study.objects.exists()


def test_digits_that_name_one_object_and_are_the_id_of_another_are_ambiguous(researcher):
    dataset, checkpoints = make_images(prompts=1)
    other = Dataset.objects.create(name=str(dataset.pk))  # a dataset called "<the first one's id>"
    Prompt.objects.create(dataset=other, text="p", source_index=0)
    api = client_for(researcher)
    body = {"name": "x", "kind": "pairwise", "checkpoints": [c.pk for c in checkpoints]}
    refused = api.post(reverse("api-studies"), {**body, "dataset": str(dataset.pk)}, format="json")
    assert refused.status_code == 400 and "give the id as a number" in refused.json()["dataset"][0]
    # The number is the id, unambiguously.
    assert api.post(reverse("api-studies"), {**body, "dataset": dataset.pk}, format="json").status_code == 201
    # Digits that only a name matches: that dataset (it has no images: the service says so).
    named = api.post(reverse("api-studies"), {**body, "dataset": str(other.pk + 1000)}, format="json")
    assert named.status_code == 400 and list(named.json()) == ["dataset"]
    other.name = str(other.pk + 1000)
    other.save()
    named = api.post(reverse("api-studies"), {**body, "dataset": str(other.pk + 1000)}, format="json")
    assert named.status_code == 400 and other.name in named.json()["detail"]


@pytest.fixture
def jobs_not_queued(monkeypatch):
    """The job APIs create their jobs without running them (these tests are about the inputs)."""
    monkeypatch.setattr(apis_jobs.GenerationJobListCreateApi, "create",
                        staticmethod(functools.partial(generation_job_create, enqueue=False)))
    monkeypatch.setattr(apis_jobs.ScoringJobListCreateApi, "create",
                        staticmethod(functools.partial(scoring_job_create, enqueue=False)))


def test_jobs_take_checkpoints_datasets_and_reward_models_by_name(researcher, jobs_not_queued):
    dataset, (checkpoint, _) = make_images(prompts=2)
    reward = RewardModel.objects.create(name="clip-b32", kind="clip", location="/nowhere")
    api = client_for(researcher)
    generation = api.post(reverse("api-generation-jobs"), {"checkpoint": checkpoint.name, "dataset": dataset.name,
                                                           "seeds": [7]}, format="json")
    assert generation.status_code == 201, generation.content
    job = GenerationJob.objects.get(pk=generation.json()["id"])
    assert (job.checkpoint, job.dataset) == (checkpoint, dataset)
    # The job's response, posted back as it is (names), makes the same job.
    shown = generation.json()
    again = api.post(reverse("api-generation-jobs"), {key: shown[key] for key in ("checkpoint", "dataset", "seeds")},
                     format="json")
    assert again.status_code == 201 and GenerationJob.objects.filter(checkpoint=checkpoint, dataset=dataset).count() == 2
    scoring = api.post(reverse("api-scoring-jobs"), {"reward_model": "clip-b32", "checkpoint": checkpoint.name,
                                                     "dataset": dataset.name, "variants": ["raw"]}, format="json")
    assert scoring.status_code == 201, scoring.content
    job = ScoringJob.objects.get(pk=scoring.json()["id"])
    assert (job.reward_model, job.checkpoint, job.dataset) == (reward, checkpoint, dataset)
    assert scoring.json()["reward_model"] == "clip-b32"
    by_id = api.post(reverse("api-scoring-jobs"), {"reward_model": reward.pk, "dataset": dataset.pk,
                                                   "variants": ["raw"]}, format="json")
    assert by_id.status_code == 201


def test_jobs_refuse_unknown_names_naming_the_field_and_write_nothing(researcher, jobs_not_queued):
    dataset, (checkpoint, _) = make_images(prompts=1)
    RewardModel.objects.create(name="clip-b32", kind="clip", location="/nowhere")
    api = client_for(researcher)
    cases = [
        ("api-generation-jobs", {"checkpoint": checkpoint.name, "dataset": dataset.name, "seeds": [0]},
         "checkpoint", "ghost-ckpt"),
        ("api-generation-jobs", {"checkpoint": checkpoint.name, "dataset": dataset.name, "seeds": [0]},
         "dataset", "ghost-ds"),
        ("api-scoring-jobs", {"reward_model": "clip-b32", "dataset": dataset.name, "variants": ["raw"]},
         "reward_model", "ghost-rm"),
        ("api-scoring-jobs", {"reward_model": "clip-b32", "dataset": dataset.name, "variants": ["raw"]},
         "checkpoint", "ghost-ckpt"),
    ]
    for name, body, field, value in cases:
        response = api.post(reverse(name), {**body, field: value}, format="json")
        assert response.status_code == 400 and list(response.json()) == [field], (field, response.content)
        assert value in response.json()[field][0]
    assert not GenerationJob.objects.exists() and not ScoringJob.objects.exists()


# --- the schema ----------------------------------------------------------------------------------

def test_the_schema_documents_the_new_endpoints_without_warnings(client, tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out), stderr=io.StringIO())
    text = out.read_text()
    for path in ("/api/datasets/:", "/api/reward-models/:", "/api/studies/{study_id}/reopen/:",
                 "/api/studies/{study_id}/members/{member}/pause/:",
                 "/api/studies/{study_id}/members/{member}/resume/:"):
        assert path in text, path
    assert Checkpoint.objects.count() == 0  # schema generation reads no rows
