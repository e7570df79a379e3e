"""The REST API and every permission around studies and annotation."""
import json
import re
import uuid

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.models import Checkpoint, Image, Judgment, Study
from tests.factories import annotators, make_images, open_pairwise, open_rating

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def next_url(study):
    return reverse("api-next", args=[study.public_id])


def submit_url(study):
    return reverse("api-submit", args=[study.public_id])


# --- researchers ---------------------------------------------------------------------------

def test_researcher_creates_opens_staffs_and_exports_a_study(researcher, annotator):
    dataset, checkpoints = make_images(prompts=3, per_prompt=2)
    api = client_for(researcher)
    created = api.post(reverse("api-studies"), {
        "name": "A vs B", "kind": "pairwise", "dataset": dataset.id,
        "checkpoints": [c.id for c in checkpoints], "redundancy": 2, "instructions": "Look **closely**.",
    }, format="json")
    assert created.status_code == 201, created.content
    study_id = created.json()["id"]
    assert created.json()["items"] == 6 and created.json()["status"] == "draft"
    assert api.post(reverse("api-study-members", args=[study_id]), {"usernames": ["ann"]},
                    format="json").json() == {"members": 1}
    assert api.post(reverse("api-study-open", args=[study_id])).json()["status"] == "open"
    study = Study.objects.get(pk=study_id)
    ann = client_for(annotator)
    item = ann.post(next_url(study), {}, format="json").json()
    ann.post(submit_url(study), {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": "left"},
             format="json")
    export = api.get(reverse("api-study-judgments", args=[study_id])).json()
    (row,) = export["results"]
    assert row["annotator"] == "ann" and row["choice"] == "left" and row["a_on_left"] in (True, False)
    assert row["answer"] == ("a" if row["a_on_left"] else "b")
    assert {row["checkpoint_a"], row["checkpoint_b"]} == {"alpha-ckpt", "beta-ckpt"}
    assert api.post(reverse("api-study-close", args=[study_id])).json()["status"] == "closed"
    assert api.get(reverse("api-studies")).json()[0]["name"] == "A vs B"


def test_study_creation_errors_are_clear(researcher):
    dataset, checkpoints = make_images(prompts=1)
    api = client_for(researcher)
    one = api.post(reverse("api-studies"), {"name": "x", "kind": "pairwise", "dataset": dataset.id,
                                            "checkpoints": [checkpoints[0].id]}, format="json")
    assert one.status_code == 400 and "two or more" in one.json()["detail"]
    bad = api.post(reverse("api-studies"), {"name": "x", "kind": "pairwise", "dataset": dataset.id,
                                            "redundancy": 0}, format="json")
    assert bad.status_code == 400 and "redundancy" in bad.json()
    assert not Study.objects.exists()


def test_token_auth_for_scripts(researcher):
    token = APIClient().post(reverse("api-token"), {"username": "res", "password": "res-pass-123"}).json()["token"]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get(reverse("api-studies")).status_code == 200
    assert Token.objects.get(key=token).user == researcher


def test_schema_and_docs_are_served_without_network(client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert "/api/annotate/{study_id}/submit/" in paths and "/api/studies/" in paths
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower()


# --- permissions ---------------------------------------------------------------------------

RESEARCHER_ONLY = ["api-studies", "api-study", "api-study-open", "api-study-close", "api-study-members",
                   "api-study-judgments"]


@pytest.mark.parametrize("name", RESEARCHER_ONLY)
def test_annotators_and_anonymous_cannot_use_researcher_endpoints(name, annotator):
    study = open_pairwise(members=[annotator])
    url = reverse(name) if name == "api-studies" else reverse(name, args=[study.id])
    for client, allowed in ((APIClient(), (401, 403)), (client_for(annotator), (403,))):
        assert client.get(url).status_code in allowed + (405,)
        assert client.post(url, {}, format="json").status_code in allowed + (405,)
    assert Study.objects.get(pk=study.pk).status == "open"


def test_annotator_cannot_see_other_studies():
    member, outsider = annotators(2)
    study = open_pairwise(members=[member])
    api = client_for(outsider)
    for name in ("api-next", "api-submit", "api-skip", "api-undo"):
        assert api.post(reverse(name, args=[study.public_id]), {}, format="json").status_code == 404
    assert api.get(reverse("api-progress", args=[study.public_id])).status_code == 404
    assert api.get(reverse("api-annotator-studies")).json() == []
    assert client_for(member).get(reverse("api-annotator-studies")).json()[0]["name"] == "pairs"
    web = APIClient()
    web.force_login(outsider)
    assert web.get(reverse("annotate-study", args=[study.public_id])).status_code == 404


def test_annotator_cannot_take_anothers_lease_or_see_its_images():
    owner, other = annotators(2)
    study = open_pairwise(members=[owner, other], prompts=1, per_prompt=1, redundancy=2)
    item = client_for(owner).post(next_url(study), {}, format="json").json()
    thief = client_for(other)
    stolen = thief.post(submit_url(study), {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()),
                                            "choice": "left"}, format="json")
    assert stolen.status_code == 409 and stolen.json()["error"] == "item_unavailable"
    browser = APIClient()
    browser.force_login(other)
    assert browser.get(item["images"][0]["url"]).status_code == 404
    assert not Judgment.objects.exists()


def test_an_item_leased_again_gets_image_urls_of_its_own_lease(media_root):
    """A lease draws the sides anew: the URLs of a slot name their lease, so a browser's cached
    image of the earlier lease (the other side) is never shown for the new one."""
    from datetime import timedelta

    from django.utils import timezone

    from annotate import selectors
    from annotate.models import Assignment
    from annotate.services import annotation, queue_sql

    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=1, per_prompt=1, redundancy=1)
    for image in Image.objects.all():
        path = media_root / image.file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"image {image.pk}".encode())
    browser = APIClient()
    browser.force_login(user)

    def shown(payload):
        return {im["slot"]: b"".join(browser.get(im["url"]).streaming_content) for im in payload["images"]}

    first = client_for(user).post(next_url(study), {}, format="json").json()
    before = shown(first)
    old = Assignment.objects.get()
    later = timezone.now() + timedelta(hours=3)  # the lease lapsed and was released
    assert queue_sql.leases_release_lapsed(now=later) == 1
    lease = annotation.assignment_next(study=study, annotator=user, now=later)
    assert lease.item.public_id == old.item.public_id and lease.pk != old.pk
    Assignment.objects.filter(pk=lease.pk).update(a_on_left=not old.a_on_left)  # the other side this time
    lease.a_on_left = not old.a_on_left
    second = selectors.annotator_item_payload(lease=lease, study=study)
    after = shown(second)
    assert after == {"left": before["right"], "right": before["left"]}
    assert {im["url"] for im in first["images"]}.isdisjoint(im["url"] for im in second["images"])
    # An earlier lease's URL still names what that lease showed, so a cached copy is right for it.
    assert shown(first) == before
    cached = browser.get(second["images"][0]["url"])
    assert "immutable" in cached["Cache-Control"] and "private" in cached["Cache-Control"]
    # A made-up token names no lease; without one, the latest lease decides and nothing is kept.
    url = second["images"][0]["url"]
    assert browser.get(url.split("?")[0] + "?v=" + "0" * 18).status_code == 404
    bare = browser.get(url.split("?")[0])
    assert b"".join(bare.streaming_content) == after["left"] and "no-store" in bare["Cache-Control"]
    other = APIClient()  # another annotator on the same study's URL: nothing
    other.force_login(annotators(1, prefix="other")[0])
    assert other.get(url).status_code == 404


def test_a_token_client_fetches_the_images_next_gave_it(media_root):
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=1, per_prompt=1)
    for image in Image.objects.all():
        path = media_root / image.file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"image {image.pk}".encode())
    token = Token.objects.create(user=user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    item = api.post(next_url(study), {}, format="json").json()
    url = item["images"][0]["url"]
    got = api.get(url)
    assert got.status_code == 200 and b"".join(got.streaming_content).startswith(b"image ")
    api.credentials(HTTP_AUTHORIZATION="Token not-a-key")
    assert api.get(url).status_code == 401
    (stranger,) = annotators(1, prefix="stranger")
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=stranger).key}")
    assert api.get(url).status_code == 404  # a valid token of someone without the item


def test_anonymous_users_get_nothing():
    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    assert APIClient().post(next_url(study), {}, format="json").status_code in (401, 403)
    page = APIClient().get(reverse("annotate-study", args=[study.public_id]))
    assert page.status_code == 302 and "/accounts/login/" in page["Location"]


def test_submission_over_the_api_is_idempotent_and_answers_409_on_conflict():
    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    api = client_for(user)
    item = api.post(next_url(study), {}, format="json").json()
    body = {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": "tie", "reason": "both_bad",
            "time_spent_ms": 900}
    first, retry = (api.post(submit_url(study), body, format="json") for _ in range(2))
    assert (first.status_code, retry.status_code) == (201, 200)
    assert first.json()["progress"]["answered"] == 1 == retry.json()["progress"]["answered"]
    again = api.post(submit_url(study), {**body, "client_id": str(uuid.uuid4())}, format="json")
    assert again.status_code == 409
    assert api.post(submit_url(study), {**body, "choice": "sideways", "client_id": str(uuid.uuid4())},
                    format="json").status_code == 400
    assert Judgment.objects.get().reason == "both_bad"


def test_done_returns_the_completion_code():
    (user,) = annotators(1)
    study = open_rating(members=[user], prompts=1, per_prompt=1, checkpoints=("only",))
    api = client_for(user)
    item = api.post(next_url(study), {}, format="json").json()
    api.post(submit_url(study), {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": "aligned"},
             format="json")
    done = api.post(next_url(study), {}, format="json").json()
    assert done == {"done": True, "completion_code": study.completion_code, "reason": "finished",
                    "progress": {"answered": 1, "skipped": 0, "target": 1}}


def test_a_member_who_finds_every_slot_filled_gets_no_completion_code():
    worker, late = annotators(2)
    study = open_rating(members=[worker, late], prompts=1, per_prompt=1, checkpoints=("only",), redundancy=1)
    api = client_for(worker)
    item = api.post(next_url(study), {}, format="json").json()
    api.post(submit_url(study), {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": "aligned"},
             format="json")
    done = client_for(late).post(next_url(study), {}, format="json").json()
    assert done["done"] and done["completion_code"] == "" and done["reason"] == "no_items_left"
    assert study.completion_code not in json.dumps(done) and done["progress"]["answered"] == 0


def test_undo_and_skip_over_the_api():
    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    api = client_for(user)
    item = api.post(next_url(study), {}, format="json").json()
    api.post(submit_url(study), {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": "left"},
             format="json")
    undone = api.post(reverse("api-undo", args=[study.public_id]), {}, format="json")
    assert undone.status_code == 200 and undone.json()["item"] == item["item"]
    assert undone.json()["progress"]["answered"] == 0
    assert api.post(reverse("api-undo", args=[study.public_id]), {}, format="json").status_code == 409
    skipped = api.post(reverse("api-skip", args=[study.public_id]),
                       {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "reason": "unsure"}, format="json")
    assert skipped.status_code == 201
    assert api.get(reverse("api-progress", args=[study.public_id])).json()["skipped"] == 1


def _answer_two_and_hold_a_third(study, user):
    """The member answers an item (their last answer), skips one, and holds a lease on a third."""
    api = client_for(user)
    answered = api.post(next_url(study), {}, format="json").json()
    body = {"item": answered["item"], "lease": answered["lease"], "client_id": str(uuid.uuid4()), "choice": "left"}
    assert api.post(submit_url(study), body, format="json").status_code == 201
    held = api.post(next_url(study), {}, format="json").json()
    return api, body, held


def _writes(study) -> tuple:
    from annotate.models import Assignment, Skip

    return (Judgment.objects.filter(item__study=study).count(), Skip.objects.filter(item__study=study).count(),
            Assignment.objects.filter(item__study=study, state="active").count())


def test_a_closed_study_takes_no_answer_skip_or_undo_but_a_resent_answer_is_recognised():
    from annotate.services.studies import study_close

    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1)
    api, stored, held = _answer_two_and_hold_a_third(study, user)
    study_close(study=study)
    before = _writes(study)
    for name, body in (("api-submit", {"item": held["item"], "lease": held["lease"], "client_id": str(uuid.uuid4()), "choice": "right"}),
                       ("api-skip", {"item": held["item"], "lease": held["lease"], "client_id": str(uuid.uuid4()), "reason": "unsure"}),
                       ("api-undo", {})):
        refused = api.post(reverse(name, args=[study.public_id]), body, format="json")
        assert (refused.status_code, refused.json()["error"]) == (409, "study_not_open"), name
    assert _writes(study) == before
    again = api.post(submit_url(study), stored, format="json")  # sent before the close, its reply lost
    assert again.status_code == 200 and _writes(study) == before


def test_a_paused_member_can_neither_skip_nor_undo():
    from annotate.models import StudyMembership
    from annotate.services.studies import membership_pause

    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1)
    api, _, held = _answer_two_and_hold_a_third(study, user)
    membership_pause(membership=StudyMembership.objects.get(study=study, annotator=user), reason="")
    before = _writes(study)
    skip = api.post(reverse("api-skip", args=[study.public_id]),
                    {"item": held["item"], "lease": held["lease"], "client_id": str(uuid.uuid4()), "reason": "unsure"}, format="json")
    undo = api.post(reverse("api-undo", args=[study.public_id]), {}, format="json")
    assert [(r.status_code, r.json()["error"]) for r in (skip, undo)] == [(403, "paused"), (403, "paused")]
    assert _writes(study) == before and before[2] == 0  # the pause released the held lease


def test_a_gold_check_pause_does_not_tell_the_annotator_about_gold_items():
    """The gold check pauses an annotator after a wrong answer on a gold item: the researcher
    sees why; the annotator is told only that their work is paused (the reason would say which
    item was gold and that the answer was wrong)."""
    from django.test import Client

    from annotate.models import StudyMembership

    (user,) = annotators(1)
    study = open_rating(members=[user], prompts=4, per_prompt=1, gold_share=1.0, gold_min_answers=1,
                        gold_min_accuracy=0.99, truth=lambda ckpt, p, i: ckpt == "alpha-ckpt")
    api = client_for(user)
    item = api.post(next_url(study), {}, format="json").json()
    gold = Study.objects.get(pk=study.pk).items.get(public_id=item["item"]).gold_answer
    assert gold in ("aligned", "not_aligned")
    wrong = "not_aligned" if gold == "aligned" else "aligned"
    api.post(submit_url(study), {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": wrong},
             format="json")
    membership = StudyMembership.objects.get(study=study, annotator=user)
    assert membership.is_paused and membership.paused_reason.startswith("gold accuracy 0/1")
    paused = api.post(next_url(study), {}, format="json")
    assert (paused.status_code, paused.json()) == (403, {"error": "paused", "detail": ""})
    web = Client()
    web.force_login(user)
    for page in (web.get("/"), web.get(reverse("annotate-study", args=[study.public_id]))):
        assert "gold" not in page.content.decode().lower() and "0/1" not in page.content.decode()
    # A researcher's own reason is the annotator's to read.
    membership.paused_reason = "please re-read the instructions"
    membership.save()
    assert api.post(next_url(study), {}, format="json").json()["detail"] == "please re-read the instructions"


# --- blinding ------------------------------------------------------------------------------

def collect_annotator_responses(user, study) -> list[str]:
    """Everything an annotator's browser receives while working through a study."""
    web = APIClient()
    web.force_login(user)
    bodies = [web.get("/").content.decode(), web.get(reverse("annotate-study", args=[study.public_id])).content.decode()]
    exclude = []
    while True:
        response = web.post(next_url(study), {"exclude": exclude}, format="json")
        bodies.append(response.content.decode())
        data = response.json()
        if data.get("done"):
            break
        for image in data["images"]:
            fetched = web.get(image["url"])
            assert fetched.status_code == 200
            bodies.append(image["url"] + " " + repr(dict(fetched.headers)))
        answer = web.post(submit_url(study), {"item": data["item"], "lease": data["lease"], "client_id": str(uuid.uuid4()),
                                              "choice": "left" if study.kind == "pairwise" else "aligned"},
                          format="json")
        bodies.append(answer.content.decode())
    bodies.append(web.post(reverse("api-undo", args=[study.public_id]), {}, format="json").content.decode())
    bodies.append(web.get(reverse("api-annotator-studies")).content.decode())
    return bodies


@pytest.mark.parametrize("opener", [open_pairwise, open_rating])
def test_no_checkpoint_or_image_identity_reaches_an_annotator(opener, media_root):
    (user,) = annotators(1)
    study = opener(members=[user], prompts=3, per_prompt=1)
    for image in Image.objects.all():  # real files, so that the image view serves them
        path = media_root / image.file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff\xe0 fake jpeg")
    text = "\n".join(collect_annotator_responses(user, study))
    for checkpoint in Checkpoint.objects.all():
        assert checkpoint.name not in text
        assert not re.search(rf"generated/{checkpoint.id}/", text)
    for image in Image.objects.all():
        assert image.file.name not in text and image.sha256 not in text
    assert "gold" not in text.lower() and "image_a" not in text and "image_b" not in text


def test_annotator_token_auth_matches_drf_semantics(researcher):
    from annotate.authentication import FastTokenAuthentication
    from rest_framework.test import APIRequestFactory

    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    token = Token.objects.create(user=user)
    factory = APIRequestFactory()
    found, key = FastTokenAuthentication().authenticate(
        factory.post("/", HTTP_AUTHORIZATION=f"Token {token.key}"))
    assert (found.pk, found.username, found.is_superuser, found.is_staff, key) == (user.pk, "ann0", False, False,
                                                                                   token.key)
    admin_token = Token.objects.create(user=researcher)
    found, _ = FastTokenAuthentication().authenticate(factory.post("/", HTTP_AUTHORIZATION=f"Token {admin_token.key}"))
    assert found.is_staff and not found.is_superuser
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.post(next_url(study), {}, format="json").status_code == 200
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert api.post(next_url(study), {}, format="json").status_code == 401
    user.is_active = False
    user.save()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.post(next_url(study), {}, format="json").status_code == 401


def test_from_db_orders_values_by_field_and_defers_the_rest():
    from annotate.services.queue_sql import from_db

    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    light = from_db(Study, {"redundancy": 5, "id": study.pk, "name": "x"})  # any order in, field order kept
    assert (light.pk, light.redundancy, light.name) == (study.pk, 5, "x")
    assert light.get_deferred_fields() >= {"lease_seconds", "kind"}
    assert light.lease_seconds == 600  # deferred: loaded from the database, not a default
    with pytest.raises(ValueError, match="not fields"):
        from_db(Study, {"id": 1, "nonsense": 2})


def test_token_request_reads_user_and_membership_in_one_statement(django_assert_max_num_queries):
    member, outsider = annotators(2)
    study = open_pairwise(members=[member])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=member).key}")
    with django_assert_max_num_queries(1):
        progress = api.get(reverse("api-progress", args=[study.public_id]))
    assert progress.status_code == 200 and progress.json() == {"answered": 0, "skipped": 0,
                                                               "target": study.item_count}
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=outsider).key}")
    assert api.get(reverse("api-progress", args=[study.public_id])).status_code == 404
    assert api.post(next_url(study), {}, format="json").status_code == 404


HOT_BODIES = [
    {"item": str(uuid.uuid4()), "lease": 7, "client_id": str(uuid.uuid4()), "choice": "left", "time_spent_ms": 1200},
    {"item": str(uuid.uuid4()), "lease": " 12 ", "client_id": str(uuid.uuid4()), "choice": " tie ",
     "reason": "both_good", "score": "3", "time_spent_ms": " 12 "},
    {"item": str(uuid.uuid4()), "client_id": str(uuid.uuid4()), "choice": "left"},
    {"item": str(uuid.uuid4()), "lease": None, "client_id": str(uuid.uuid4()), "choice": "left"},
    {"item": str(uuid.uuid4()), "lease": 0, "client_id": str(uuid.uuid4()), "choice": "left"},
    {"item": str(uuid.uuid4()), "lease": 2**64, "client_id": str(uuid.uuid4()), "choice": "left"},
    {"item": str(uuid.uuid4()), "lease": True, "client_id": str(uuid.uuid4()), "choice": "left"},
    {"item": str(uuid.uuid4()), "lease": "x", "client_id": str(uuid.uuid4()), "choice": "left"},
    {"item": "nope", "client_id": 7, "choice": "", "score": 1.5, "time_spent_ms": -1},
    {"item": None, "choice": None, "reason": None, "score": True, "time_spent_ms": 24 * 3600 * 1000 + 1},
    {"choice": "x" * 17, "reason": "y" * 65, "score": None, "time_spent_ms": None},
    {"item": str(uuid.uuid4()), "client_id": str(uuid.uuid4()), "choice": ["left"], "reason": {"a": 1}, "score": 2.0},
    {"item": uuid.uuid4().hex, "client_id": "{" + str(uuid.uuid4()) + "}", "choice": 1, "reason": 5},
    {}, [], "text",
]
NEXT_BODIES = [{}, {"exclude": []}, {"exclude": [str(uuid.uuid4()), "bad", 5]}, {"exclude": "x"},
               {"exclude": [str(uuid.uuid4())] * 51}, {"exclude": {"a": 1}}, [], None]


@pytest.mark.parametrize("body", HOT_BODIES)
def test_submit_validation_agrees_with_the_documented_serializer(body):
    """The hot endpoints validate by hand (cheaper): same values, same errors, as the schema's serializers."""
    from annotate.apis import HotInput, SubmitApi

    serializer = SubmitApi.Input(data=body)
    data = HotInput(body)
    values = SubmitApi.hot_fields(data)
    if serializer.is_valid():
        assert not data.errors and values == dict(serializer.validated_data)
    else:
        assert data.errors == serializer.errors


@pytest.mark.parametrize("body", NEXT_BODIES)
def test_next_validation_agrees_with_the_documented_serializer(body):
    from annotate.apis import HotInput, NextItemApi

    serializer = NextItemApi.Input(data=body)
    data = HotInput(body)
    exclude = data.uuid_list("exclude", 50)
    if serializer.is_valid():
        assert not data.errors and exclude == serializer.validated_data["exclude"]
    else:
        assert data.errors == serializer.errors
