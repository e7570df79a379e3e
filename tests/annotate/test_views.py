import pytest
from django.urls import reverse

from annotate.models import Dataset

pytestmark = pytest.mark.django_db


def test_home_for_anonymous_visitors_offers_login(client):
    response = client.get("/")
    assert response.status_code == 200
    assert reverse("login") in response.content.decode()


def test_login_page_and_login(client, researcher):
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("login"), {"username": "res", "password": "res-pass-123"})
    assert response.status_code == 302
    assert client.get("/").context["user"] == researcher


def test_researcher_sees_datasets_and_jobs(client, researcher):
    Dataset.objects.create(name="tia2-counting", source="tia2", category="counting")
    client.force_login(researcher)
    body = client.get("/").content.decode()
    assert "tia2-counting" in body and "No job yet" in body and "New study" in body


def test_the_overview_lists_every_kind_of_job_checkpoint_and_study(client, researcher):
    from annotate.models import Checkpoint, GenerationJob, Prompt, RewardModel, ScoringJob
    from tests.factories import open_pairwise

    study = open_pairwise()
    dataset = Dataset.objects.create(name="tia2-counting", source="tia2", category="counting")
    Prompt.objects.create(dataset=dataset, text="two cups", source_index=0)
    parent = Checkpoint.objects.get(name="alpha-ckpt")
    derived = Checkpoint.objects.create(name="alpha best-of-4", backend="best_of_n", derived_from=parent)
    model = RewardModel.objects.create(name="pick", kind="pickscore", location="-")
    GenerationJob.objects.create(checkpoint=parent, dataset=dataset, seeds=[0], total_images=1, status="failed",
                                 error="CUDA error: out of memory")
    ScoringJob.objects.create(reward_model=model, dataset=dataset, variants=["raw"], total_images=4, done_images=2)
    client.force_login(researcher)
    body = client.get("/").content.decode()
    assert reverse("study-detail", args=[study.id]) in body and f"0 / {study.item_count * study.redundancy}" in body
    assert reverse("checkpoint-gallery", args=[derived.id]) in body and "alpha-ckpt" in body
    assert "out of memory" in body and "pick · tia2-counting · raw" in body and "2 / 4" in body
    for name in ("study-create", "jobs", "reward-models"):
        assert reverse(name) in body


def test_annotator_sees_no_research_data(client, annotator):
    dataset = Dataset.objects.create(name="tia2-counting", source="tia2")
    client.force_login(annotator)
    assert "tia2-counting" not in client.get("/").content.decode()
    assert client.get(reverse("dataset-detail", args=[dataset.id])).status_code == 403
    assert client.get("/admin/").status_code == 302  # not staff: sent to the admin login


def test_dataset_page_requires_login(client):
    dataset = Dataset.objects.create(name="d")
    response = client.get(reverse("dataset-detail", args=[dataset.id]))
    assert response.status_code == 302 and reverse("login") in response["Location"]


def test_healthz_reports_the_database(client):
    assert client.get("/healthz").json()["status"] == "ok"


def test_crowd_link_signs_the_worker_in_to_that_study_only(client):
    from tests.factories import annotators, open_pairwise

    (other_member,) = annotators(1, prefix="m")
    study = open_pairwise(members=[other_member], crowd_link=True, items_per_annotator=2)
    second = open_pairwise(members=[other_member], crowd_link=True, items_per_annotator=2)
    url = reverse("crowd-start", args=[study.public_id])
    response = client.get(url, {"PROLIFIC_PID": "60a7f0c1e2", "STUDY_ID": "abc", "SESSION_ID": "s1"})
    assert response.status_code == 302
    assert response["Location"] == reverse("annotate-study", args=[study.public_id])
    page = client.get(response["Location"])
    assert page.status_code == 200 and 'id="progress"' in page.content.decode()
    home = client.get("/").content.decode()
    assert home.count("/annotate/") == 1 and str(second.public_id) not in home
    assert client.get(reverse("annotate-study", args=[second.public_id])).status_code == 404
    assert client.get("/admin/").status_code == 302


def test_crowd_link_without_worker_id_or_for_a_closed_study_is_refused(client):
    from annotate.services.studies import study_close
    from tests.factories import open_pairwise

    study = open_pairwise(crowd_link=True, items_per_annotator=2)
    url = reverse("crowd-start", args=[study.public_id])
    assert client.get(url).status_code == 400
    study_close(study=study)
    refused = client.get(url, {"PROLIFIC_PID": "abc"})
    assert refused.status_code == 400 and "not open" in refused.content.decode()


def test_a_study_without_a_crowd_link_is_no_invitation(client):
    """Its public id is in every member's URLs: without the crowd link on, it makes no account."""
    from django.contrib.auth import get_user_model

    from tests.factories import open_pairwise

    study = open_pairwise()
    users = get_user_model().objects.count()
    assert client.get(reverse("crowd-start", args=[study.public_id]), {"PROLIFIC_PID": "anyone"}).status_code == 404
    assert get_user_model().objects.count() == users and not study.memberships.exists()


def test_a_crowd_link_followed_while_signed_in_never_switches_the_account(client, researcher):
    """A link from another site (GET) must not sign a researcher out and in as a crowd worker."""
    from tests.factories import open_pairwise

    study = open_pairwise(crowd_link=True, items_per_annotator=2)
    client.force_login(researcher)
    response = client.get(reverse("crowd-start", args=[study.public_id]), {"PROLIFIC_PID": "forged"})
    assert response.status_code == 409 and "Sign out first" in response.content.decode()
    assert client.session["_auth_user_id"] == str(researcher.pk) and not study.memberships.exists()


def test_annotator_page_has_labelled_controls_and_keyboard_hints(client, annotator):
    from tests.factories import open_pairwise

    study = open_pairwise(members=[annotator])
    study.instructions = "Judge the **count**. <script>alert(1)</script>"
    study.save()
    client.force_login(annotator)
    body = client.get(reverse("annotate-study", args=[study.public_id])).content.decode()
    assert '<label for="progress">' in body and 'aria-keyshortcuts="1 ArrowLeft"' in body
    assert "<strong>count</strong>" in body and "<script>alert(1)</script>" not in body
    assert "alpha-ckpt" not in body and "beta-ckpt" not in body
