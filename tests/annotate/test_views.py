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
    assert "tia2-counting" in body and "Generation jobs" in body


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
