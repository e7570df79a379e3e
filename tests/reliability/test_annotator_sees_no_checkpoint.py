"""Annotators judge blind: nothing an annotator's browser or script receives names the
checkpoint behind an image, the image, or the known answer of a gold item.

A pairwise and a rating study (with gold items) are made from two checkpoints with
distinctive names, locations, base models, descriptions and fingerprints, whose images are
made by the generation job itself (so their bytes are what production serves). An annotator
then goes everywhere they can: home, the annotate pages, every annotation API call (next,
submit, skip, undo, progress, the list of studies, refused and invalid ones), every image
they are shown, the scripts and styles those pages load, the crowd link, the API schema and
docs, the login page, and the 404 and 403 answers of what they may not see. Every body and
every header is kept and searched.
"""
from __future__ import annotations

import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.models import Checkpoint, Dataset, GenerationJob, Image, Prompt, Study, StudyItem
from annotate.services.generation import generation_job_create
from annotate.services.studies import (
    study_add_members, study_create_pairwise, study_create_rating, study_crowd_link_set, study_open,
)
from tests.factories import annotators

pytestmark = pytest.mark.django_db

CHECKPOINTS = [
    {"name": "zq-Aurora-XL-7731", "location": "/models/zq-aurora-weights-5521", "base_model": "zq-base-pipe-9043",
     "description": "zq aurora notes 1187", "fingerprint": "a7" * 32},
    {"name": "zq-Borealis-v2-8842", "location": "/models/zq-borealis-weights-6632", "base_model": "zq-base-pipe-1928",
     "description": "zq borealis notes 4410", "fingerprint": "b8" * 32},
]
PROMPTS = ["a realistic photo of two cups", "a realistic photo of a cat and a chair",
           "a realistic photo of three apples", "a realistic photo of a dog and a ball"]
CONTEXT = r"[\W_]{0,3}(?:id)?[\W_]{0,3}"  # "checkpoint 7", "checkpoint_id": 7, "image-a/7"


@pytest.fixture
def blind_world(django_capture_on_commit_callbacks, media_root):
    """Two checkpoints with real generated images; a pairwise and a rating study with gold
    items, open, with one annotator; a third study they are not a member of."""
    dataset = Dataset.objects.create(name="blind scenes")
    for i, text in enumerate(PROMPTS):
        Prompt.objects.create(dataset=dataset, text=text, source_index=i)
    checkpoints = [Checkpoint.objects.create(backend="procedural", config={"error_rate": 0.4}, **c)
                   for c in CHECKPOINTS]
    with django_capture_on_commit_callbacks(execute=True):
        for checkpoint in checkpoints:
            generation_job_create(checkpoint=checkpoint, dataset=dataset, seeds=[0], images_per_seed=2, width=64,
                                  height=64, dtype=GenerationJob.DType.FLOAT32)
    assert Image.objects.exclude(file="").count() == 16
    user, stranger = annotators(2, prefix="blind")
    # Gold items, but no pause for missing them: the annotator here answers without looking.
    gold = {"gold_share": 0.5, "gold_min_accuracy": 0.0, "redundancy": 1}
    pairwise = study_create_pairwise(name="Which picture fits?", dataset=dataset, checkpoints=checkpoints, **gold)
    rating = study_create_rating(name="Does the picture fit?", dataset=dataset, checkpoints=checkpoints, **gold)
    elsewhere = study_create_pairwise(name="Not yours", dataset=dataset, checkpoints=checkpoints)
    for study in (pairwise, rating):
        study_add_members(study=study, usernames=[user.username])
        study_open(study=study)
    study_add_members(study=elsewhere, usernames=[stranger.username])
    study_open(study=elsewhere)
    assert StudyItem.objects.filter(is_gold=True, study__in=[pairwise, rating]).count() >= 4
    return {"user": user, "studies": [pairwise, rating], "elsewhere": elsewhere, "checkpoints": checkpoints}


class Received:
    """Every response, as text (headers and body) and, for images, bytes."""

    def __init__(self):
        self.texts: list[tuple[str, str]] = []  # (what, text)
        self.images: list[tuple[str, bytes]] = []
        self.described: list[tuple[str, str]] = []  # the API's schema and docs: field names, no rows

    def keep(self, what: str, response, *, image: bool = False, description: bool = False):
        headers = "\n".join(f"{k}: {v}" for k, v in response.items())
        if response.cookies:
            headers += "\n" + response.cookies.output()
        body = b"".join(response.streaming_content) if response.streaming else response.content
        if image:
            self.images.append((what, body))
            self.texts.append((what, headers))
        else:
            (self.described if description else self.texts).append((what, headers + "\n\n" + body.decode()))
        return response


def identities(world) -> tuple[list[str], list[re.Pattern]]:
    """What would tell a checkpoint, an image or a gold answer: literal strings and patterns."""
    literal: list[str] = []
    patterns: list[re.Pattern] = [re.compile(r"gold", re.I)]
    for checkpoint in Checkpoint.objects.all():
        literal += [checkpoint.name, checkpoint.location, checkpoint.base_model, checkpoint.description,
                    checkpoint.fingerprint, checkpoint.fingerprint[:12]]
        patterns += [re.compile(rf"(checkpoint|ckpt){CONTEXT}{checkpoint.pk}\b", re.I),
                     re.compile(rf"generated/{checkpoint.pk}/")]
    for image in Image.objects.exclude(file=""):
        literal += [image.file.name, image.file.name.rsplit("/", 1)[-1], image.sha256]
        patterns += [re.compile(rf"image(?:s|_a|_b|-a|-b)?{CONTEXT}{image.pk}\b", re.I),
                     re.compile(rf"/images/{image.pk}\b")]
    return [s for s in literal if s], patterns


def leaks(world, received: Received) -> list[str]:
    literal, patterns = identities(world)
    found = []
    for what, text in received.texts:
        lowered = text.lower()
        found += [f"{what}: {s!r}" for s in literal if s.lower() in lowered]
        found += [f"{what}: /{p.pattern}/ {p.search(text).group(0)!r}" for p in patterns if p.search(text)]
    for what, text in received.described:  # field names such as "checkpoint" are documentation here
        found += [f"{what}: {s!r}" for s in literal if s.lower() in text.lower()]
    for what, data in received.images:
        found += [f"{what} (bytes): {s!r}" for s in literal if s.encode() in data]
        found += [f"{what}: {problem}" for problem in image_metadata(data)]
    return found


def image_metadata(data: bytes) -> list[str]:
    """Metadata an image file could carry a model's name in: EXIF, XMP and other APPn segments
    and comments of a JPEG (JFIF's APP0 is allowed); text chunks of a PNG."""
    if data.startswith(b"\x89PNG"):
        return [f"PNG {c.decode()} chunk" for c in (b"tEXt", b"iTXt", b"zTXt", b"eXIf") if c in data]
    if not data.startswith(b"\xff\xd8"):
        return ["neither a JPEG nor a PNG"]
    problems, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: the headers are over
            return problems
        if 0xE1 <= marker <= 0xEF or marker == 0xFE:
            problems.append(f"JPEG segment 0x{marker:02X} ({data[i + 4:i + 10]!r})")
        i += 2 + length
    return problems + ["JPEG headers end without a scan"]


def work_through(received: Received, web: APIClient, study: Study, *, label: str) -> None:
    """An annotator's session on a study: every item, images included; answers, a skip, an
    undo, progress; and the API's refusals of invalid input."""
    base = f"/api/annotate/{study.public_id}/"
    page = received.keep(f"{label} page", web.get(reverse("annotate-study", args=[study.public_id])))
    assert page.status_code == 200
    assets = re.findall(r'<(?:script[^>]* src|link[^>]* href)="(/static/[^"]+)"', page.content.decode())
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"annotate.js", "app.css"}
    for asset in assets:
        assert received.keep(asset, web.get(asset)).status_code == 200
    choice = "left" if study.kind == Study.Kind.PAIRWISE else "aligned"
    n = 0
    while True:
        item = received.keep(f"{label} next", web.post(base + "next/", {"exclude": []}, format="json")).json()
        if item.get("done"):
            break
        for image in item["images"]:
            fetched = web.get(image["url"])
            assert fetched.status_code == 200 and fetched["Content-Type"] == "image/jpeg"
            received.keep(f"{label} image {image['slot']}", fetched, image=True)
        body = {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4())}
        if n == 1:
            received.keep(f"{label} skip", web.post(base + "skip/", {**body, "reason": "unsure"}, format="json"))
        else:
            received.keep(f"{label} submit", web.post(base + "submit/", {**body, "choice": choice}, format="json"))
        if n == 2:
            undone = received.keep(f"{label} undo", web.post(base + "undo/", {}, format="json"))
            assert undone.status_code == 200
            received.keep(f"{label} submit again", web.post(base + "submit/", {**body, "client_id": str(uuid.uuid4()),
                                                                              "choice": choice}, format="json"))
        n += 1
    assert n >= 8
    received.keep(f"{label} progress", web.get(base + "progress/"))
    for what, body in [("bad choice", {"item": str(uuid.uuid4()), "client_id": str(uuid.uuid4()),
                                       "choice": "sideways"}),
                       ("unknown item", {"item": str(uuid.uuid4()), "client_id": str(uuid.uuid4()), "choice": choice}),
                       ("no body", {})]:
        refused = received.keep(f"{label} submit: {what}", web.post(base + "submit/", body, format="json"))
        assert 400 <= refused.status_code < 500
    received.keep(f"{label} next: bad exclude", web.post(base + "next/", {"exclude": "x"}, format="json"))
    received.keep(f"{label} undo: nothing", web.post(base + "undo/", {}, format="json"))


def collect(world) -> Received:
    received = Received()
    user = world["user"]
    web = APIClient()
    web.force_login(user)
    received.keep("home", web.get("/"))
    received.keep("annotator studies", web.get(reverse("api-annotator-studies")))
    for study in world["studies"]:
        work_through(received, web, study, label=study.name)
    # What they may not see answers 404 or 403 (or sends them to a login page), naming nothing.
    pairwise, elsewhere = world["studies"][0], world["elsewhere"]
    item = pairwise.items.first()
    image = Image.objects.exclude(file="").first()
    checkpoint = world["checkpoints"][0]
    refused = {
        "someone else's study": reverse("annotate-study", args=[elsewhere.public_id]),
        "an unknown study": reverse("annotate-study", args=[uuid.uuid4()]),
        "another study's image": reverse("annotate-image", args=[elsewhere.public_id, elsewhere.items.first().public_id,
                                                                 "left"]),
        "a guessed item's image": reverse("annotate-image", args=[pairwise.public_id, uuid.uuid4(), "left"]),
        "the study page": reverse("study-detail", args=[pairwise.pk]),
        "a checkpoint's gallery": reverse("checkpoint-gallery", args=[checkpoint.pk]),
        "a researcher's image": reverse("researcher-image", args=[image.pk]),
        "the jobs": reverse("jobs"),
        "the admin": "/admin/",
        "the studies API": reverse("api-studies"),
        "the checkpoints API": reverse("api-checkpoints"),
        "the judgments export": reverse("api-study-judgments", args=[pairwise.pk]),
        "the generation jobs API": reverse("api-generation-jobs"),
        "an unknown page": "/no/such/page/",
    }
    for what, url in refused.items():
        response = received.keep(what, web.get(url))
        assert response.status_code in (302, 403, 404), (what, response.status_code)
    received.keep("submit to someone else's study", web.post(f"/api/annotate/{elsewhere.public_id}/submit/",
                                                            {"item": str(item.public_id), "choice": "left",
                                                             "client_id": str(uuid.uuid4())}, format="json"))
    # A script with the annotator's token gets what the browser gets.
    script = APIClient()
    script.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    received.keep("token: studies", script.get(reverse("api-annotator-studies")))
    received.keep("token: next", script.post(f"/api/annotate/{pairwise.public_id}/next/", {}, format="json"))
    received.keep("token: progress", script.get(f"/api/annotate/{pairwise.public_id}/progress/"))
    received.keep("api schema", web.get(reverse("api-schema")), description=True)
    received.keep("api docs", web.get(reverse("api-docs")), description=True)
    # Signed out: the login page; and a crowd worker arriving by the study's link.
    anonymous = Client()
    received.keep("login page", anonymous.get(reverse("login")))
    pairwise.items_per_annotator = 2
    study_crowd_link_set(study=pairwise, enabled=True)
    crowd = anonymous.get(reverse("crowd-start", args=[pairwise.public_id]), {"PROLIFIC_PID": "worker-77"}, follow=True)
    assert crowd.status_code == 200
    received.keep("crowd link", crowd)
    return received


def test_nothing_an_annotator_receives_identifies_a_checkpoint_an_image_or_a_gold_answer(blind_world):
    received = collect(blind_world)
    assert len(received.images) >= 2 * 8 + 8 and len(received.texts) > 80
    assert leaks(blind_world, received) == []


def test_the_scan_finds_what_it_looks_for(blind_world):
    """The scan is not vacuous: a checkpoint named in a study's name, an image id in a URL and
    EXIF in an image are each found."""
    study = blind_world["studies"][0]
    Study.objects.filter(pk=study.pk).update(name=f"{CHECKPOINTS[0]['name'].upper()} against the other")
    received = Received()
    web = Client()
    web.force_login(blind_world["user"])
    received.keep("home", web.get("/"))
    image = Image.objects.exclude(file="").first()
    received.texts.append(("planted", f'{{"image_id": {image.pk}}}'))
    received.texts.append(("planted", f"<a href='/checkpoints/'>checkpoint #{blind_world['checkpoints'][1].pk}</a>"))
    jpeg = image.file.open("rb").read()
    received.images.append(("planted", jpeg[:2] + b"\xff\xe1\x00\x10Exif\x00\x00zq-Aurora" + jpeg[2:]))
    found = leaks(blind_world, received)
    assert any(f"home: {CHECKPOINTS[0]['name']!r}" == f for f in found), found
    assert any("image" in f and f.startswith("planted: /image") for f in found), found
    assert any(f.startswith("planted: /(checkpoint|ckpt)") for f in found), found
    assert any("JPEG segment 0xE1" in f for f in found), found
