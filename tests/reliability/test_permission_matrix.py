"""Every route of the app, from the URL resolver, against the roles that must not use it: a
researcher's page or API operation refuses the signed-out visitor, the annotator's session and
the annotator's API token, by GET and by POST, and none of those attempts changes anything.

A route added later is a researcher's by default here: unless it is listed as public or as
the annotators', this test tries it as an annotator and fails if the annotator gets in."""
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.models import AuditEvent, Checkpoint, GenerationJob, Image, Report, Study, StudyMembership
from annotate.services.generation import generation_job_create
from annotate.services.reports import report_request
from tests.factories import open_pairwise

pytestmark = pytest.mark.django_db

PUBLIC = {"home", "healthz", "login", "logout", "api-schema", "api-docs", "api-token", "crowd-start"}
ANNOTATORS = {"api-annotator-studies", "api-next", "api-submit", "api-skip", "api-undo", "api-progress",
              "annotate-study", "annotate-image"}


def routes() -> dict[str, URLPattern]:
    """Name -> pattern, the admin left out (its own permission tests are in test_admin.py)."""
    found = {}

    def walk(patterns):
        for p in patterns:
            if isinstance(p, URLResolver):
                if p.app_name != "admin":
                    walk(p.url_patterns)
            elif p.name:
                found[p.name] = p

    walk(get_resolver().url_patterns)
    return found


@pytest.fixture
def world(annotator):
    study = open_pairwise(members=[annotator], prompts=2, per_prompt=1)
    membership = StudyMembership.objects.get(study=study)
    report = report_request(study=study, fmt="html", enqueue=False)
    job = generation_job_create(checkpoint=Checkpoint.objects.first(), dataset=study.dataset, seeds=[0],
                                width=32, height=32, enqueue=False)
    image = Image.objects.first()
    ids = {"study_id": study.pk, "membership_id": membership.pk, "member": annotator.username,
           "report_id": report.pk, "job_id": job.pk, "kind": "generation", "dataset_id": study.dataset_id,
           "checkpoint_id": image.checkpoint_id, "image_id": image.pk}
    return study, ids


def url_of(name: str, pattern: URLPattern, ids: dict) -> str:
    return reverse(name, kwargs={k: ids[k] for k in pattern.pattern.regex.groupindex})


def state() -> tuple:
    return (AuditEvent.objects.count(), Report.objects.count(), list(Study.objects.values_list("status", "crowd_link")),
            list(StudyMembership.objects.values_list("is_paused", flat=True)),
            list(GenerationJob.objects.values_list("status", flat=True)), get_user_model().objects.count(),
            Checkpoint.objects.count())


def refused_as(client, url: str, method: str) -> bool:
    response = getattr(client, method)(url)
    if response.status_code == 302:
        return response["Location"].startswith(reverse("login"))
    return response.status_code in (401, 403, 405)


def test_the_lists_name_routes_that_exist():
    assert PUBLIC | ANNOTATORS <= set(routes())


def test_no_researcher_route_lets_in_a_visitor_an_annotator_or_an_annotators_token(world, annotator):
    study, ids = world
    researcher_routes = {n: p for n, p in routes().items() if n not in PUBLIC | ANNOTATORS}
    assert len(researcher_routes) > 40
    session = Client()
    session.force_login(annotator)
    token = APIClient()
    token.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=annotator).key}")
    before = state()
    let_in = []
    for name, pattern in sorted(researcher_routes.items()):
        url = url_of(name, pattern, ids)
        for who, client in (("visitor", Client()), ("annotator", session), ("annotator token", token)):
            for method in ("get", "post"):
                if not refused_as(client, url, method):
                    let_in.append(f"{who} {method.upper()} {url} ({name})")
    assert let_in == []
    assert state() == before  # and nothing was done on the way


def test_the_annotators_routes_refuse_a_visitor_and_a_non_member(world):
    from tests.factories import annotators

    study, ids = world
    ids = {**ids, "study_id": study.public_id, "item_id": study.items.first().public_id, "slot": "left"}
    (outsider,) = annotators(1, prefix="outsider")
    stranger = Client()
    stranger.force_login(outsider)
    before = state()
    for name in sorted(ANNOTATORS - {"api-annotator-studies"}):
        url = url_of(name, routes()[name], ids)
        for method in ("get", "post"):
            assert refused_as(Client(), url, method), (name, method)
            response = getattr(stranger, method)(url)
            assert response.status_code in (403, 404, 405), (name, method, response.status_code)
    assert state() == before
