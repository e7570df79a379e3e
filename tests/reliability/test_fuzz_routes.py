"""Every route of the app, from the URL resolver (as test_permission_matrix.py builds it), fed
the shapes of bad input that once made 500s, as a signed-out visitor, an annotator and a
researcher: a NUL character (%00), or 10,000 characters, in each query parameter the code
reads, and a JSON body nested 10,000 deep. No answer may be a 5xx.

A NUL fails only where PostgreSQL sees it (SQLite stores it): CI runs this file on both.
"""
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.test import Client
from rest_framework.settings import api_settings

from annotate.apis import ExportPagination
from annotate.models import Study
from annotate.services.studies import study_crowd_link_set
from tests.reliability.test_permission_matrix import ANNOTATORS, routes, url_of, world  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
LONG = "x" * 10_000
DEEP_JSON = "[" * 10_000 + "]" * 10_000
PLAUSIBLE = {"PROLIFIC_PID": "worker1", "STUDY_ID": "study1", "SESSION_ID": "session1"}


def query_parameters() -> list[str]:
    """The query parameters the code reads (a view's request.GET, an API's query_params), and
    those DRF reads itself: found in the source, so that a new one is fuzzed too."""
    read = re.compile(r"""(?:GET|query_params)\.get(?:list)?\(\s*["'](\w+)["']""")
    names = {name for path in (ROOT / "annotate").rglob("*.py") for name in read.findall(path.read_text())}
    return sorted(names | {ExportPagination.cursor_query_param, api_settings.URL_FORMAT_OVERRIDE})


def test_the_query_parameters_are_found():
    assert {"category", "page", "v", "kind", "SESSION_ID", "cursor"} <= set(query_parameters())


@pytest.fixture
def urls(world, annotator) -> dict[str, str]:
    study, ids = world
    study.items_per_annotator = 2
    study_crowd_link_set(study=study, enabled=True)  # the crowd link stores what its query holds
    annotating = {**ids, "study_id": study.public_id, "item_id": study.items.first().public_id, "slot": "left"}
    return {name: url_of(name, pattern, annotating if name in ANNOTATORS | {"crowd-start"} else ids)
            for name, pattern in sorted(routes().items())}


@pytest.fixture
def as_role(researcher, annotator, urls):
    """role, url -> a client signed in as the role: the same one for each url but the logout's."""
    clients = {}

    def client(role: str, url: str) -> Client:
        if url == urls["logout"] or role not in clients:
            client = Client(raise_request_exception=False)
            if role != "visitor":
                client.force_login({"researcher": researcher, "annotator": annotator}[role])
            if url == urls["logout"]:
                return client
            clients[role] = client
        return clients[role]

    return client


def server_errors(requests) -> list[str]:
    """The requests (role, method, url, send) that answered 5xx, each with its answer's start."""
    failed = []
    for role, method, url, send in requests:
        response = send()
        if response.status_code >= 500:
            failed.append(f"{role} {method} {url}: {response.status_code} {response.content[:200]!r}")
    return failed


ROLES = ["visitor", "annotator", "researcher"]


def each_parameter_bad(role: str, urls: dict, as_role, bad: str) -> list:
    """GET requests to every route, each with one query parameter ``bad`` and the others
    plausible (the crowd link reads SESSION_ID only beside a worker id and a study id)."""
    requests = []
    for url in urls.values():
        for name in query_parameters():
            query = urlencode({**PLAUSIBLE, name: bad})
            requests.append((role, "GET", f"{url}?{query[:200]}",
                             lambda url=url, query=query: as_role(role, url).get(f"{url}?{query}")))
    return requests


@pytest.mark.parametrize("role", ROLES)
def test_a_nul_in_any_query_parameter_is_no_server_error_on_any_route(role, urls, as_role):
    assert server_errors(each_parameter_bad(role, urls, as_role, "a\x00b")) == []


def test_a_nul_is_refused_naming_the_parameter(urls, as_role):
    gallery = as_role("researcher", "").get(urls["checkpoint-gallery"], {"category": "\x00"})
    assert gallery.status_code == 400 and "'category'" in gallery.content.decode()
    api = as_role("researcher", "").get(urls["api-study-judgments"], {"cursor": "\x00"})
    assert api.status_code == 400 and api.json()["field"] == "cursor" and "NUL" in api.json()["detail"]


@pytest.mark.parametrize("role", ROLES)
def test_10000_characters_in_any_query_parameter_are_no_server_error_on_any_route(role, urls, as_role):
    assert server_errors(each_parameter_bad(role, urls, as_role, LONG)) == []


@pytest.mark.parametrize("role", ROLES)
def test_a_json_body_nested_10000_deep_is_no_server_error_on_any_route(role, urls, as_role):
    requests = [(role, "POST", url,
                 lambda url=url: as_role(role, url).post(url, DEEP_JSON, content_type="application/json"))
                for url in urls.values()]
    assert server_errors(requests) == []
    assert Study.objects.count() == 1  # nothing was made of it


@pytest.mark.postgres
def test_postgres_refuses_a_nul_which_is_why_it_never_reaches_a_query(urls, as_role):
    """The premise of the NUL sweeps above, on the database that has it (SQLite stores NUL)."""
    from django.db import DataError, transaction

    from annotate.models import Prompt

    with pytest.raises(DataError), transaction.atomic():
        list(Prompt.objects.filter(category="a\x00b"))
    assert as_role("researcher", "").get(urls["checkpoint-gallery"], {"category": "a\x00b"}).status_code == 400
