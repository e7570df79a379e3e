"""Media never tells an annotator more than the pixels: no URL serves the media folder (DEBUG
included), stored names carry no checkpoint, study, prompt or seed, and every image an
annotator can be shown was re-encoded without its metadata (issue 13, cases 6 and 8)."""
import hashlib
import importlib
import io
import re
import uuid

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.urls import clear_url_caches
from PIL import Image as PILImage
from PIL import PngImagePlugin
from rest_framework.test import APIClient

from annotate.media import keyed_image_name
from annotate.models import Checkpoint, Dataset, Image, Prompt, Report
from annotate.services.generation import generation_job_create
from annotate.services.reports import report_build
from annotate.services.studies import study_add_members, study_create_rating, study_open
from workers import jobs
from workers.jobs import generation_job_execute
from workers.ml.backends import ProceduralBackend

pytestmark = pytest.mark.django_db

MODEL = "secret-model-xl"  # what a generator or an editor wrote beside the pixels
IMAGE_NAME = re.compile(r"images/([0-9a-f]{2})/\1[0-9a-f]{30}\.(jpg|png)")


def client_for(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


# --- images that carry metadata ---------------------------------------------------------------

def pixels(size=(40, 20)) -> PILImage.Image:
    img = PILImage.new("RGB", size, (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, size[0] // 2, size[1]))  # left half blue: orientation shows
    return img


def xmp() -> str:
    return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            f'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description CreatorTool="{MODEL}"/></rdf:RDF></x:xmpmeta>')


def png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"a red cube, Steps: 30, Model: {MODEL}")
    info.add_itxt("XML:com.adobe.xmp", xmp())
    buffer = io.BytesIO()
    pixels().save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def jpeg_with_exif() -> bytes:
    exif = PILImage.Exif()
    exif[0x0131] = MODEL  # Software
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise
    buffer = io.BytesIO()
    pixels().save(buffer, format="JPEG", exif=exif, comment=MODEL.encode(), xmp=xmp().encode(),
                  icc_profile=b"fake profile of " + MODEL.encode())
    return buffer.getvalue()


def test_the_fixtures_carry_what_must_be_stripped():
    png = PILImage.open(io.BytesIO(png_with_text()))
    assert MODEL in png.info["parameters"] and MODEL in png.info["XML:com.adobe.xmp"]
    jpeg = PILImage.open(io.BytesIO(jpeg_with_exif()))
    assert jpeg.getexif()[0x0131] == MODEL and MODEL.encode() in jpeg.info["comment"]
    assert {"xmp", "icc_profile", "exif"} <= set(jpeg.info)


def assert_pixels_only(data: bytes, what: str) -> None:
    assert MODEL.encode() not in data, what
    img = PILImage.open(io.BytesIO(data))
    assert len(img.getexif()) == 0, what
    kept = set(img.info) & {"parameters", "XML:com.adobe.xmp", "xmp", "comment", "exif", "icc_profile"}
    assert not kept, f"{what}: {kept}"


def upload(researcher, prompt, content: bytes, name: str):
    file = io.BytesIO(content)
    file.name = name
    response = client_for(researcher).post(f"/api/datasets/{prompt.dataset_id}/images/",
                                           {"file": file, "prompt": prompt.pk}, format="multipart")
    assert response.status_code == 201, response.content
    return Image.objects.get(pk=response.json()["id"])


def annotator_fetches_every_image(study, annotator) -> list[bytes]:
    """The annotator's way to the images: next/ hands out a lease, its URLs the image view."""
    study_add_members(study=study, usernames=[annotator.username])
    study_open(study=study)
    web = client_for(annotator)
    base = f"/api/annotate/{study.public_id}/"
    received = []
    while not (item := web.post(base + "next/", {"exclude": []}, format="json").json()).get("done"):
        for image in item["images"]:
            fetched = web.get(image["url"])
            assert fetched.status_code == 200
            received.append(b"".join(fetched.streaming_content))
        answer = {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()),
                  "choice": "aligned"}
        assert web.post(base + "submit/", answer, format="json").status_code == 201
    return received


def test_uploaded_images_reach_the_annotator_without_their_metadata(researcher, annotator, media_root):
    dataset = Dataset.objects.create(name="uploads")
    prompts = [Prompt.objects.create(dataset=dataset, text=f"cube {i}", source_index=i) for i in range(2)]
    png = upload(researcher, prompts[0], png_with_text(), f"{MODEL}.png")
    jpeg = upload(researcher, prompts[1], jpeg_with_exif(), f"{MODEL}.jpg")
    for image in (png, jpeg):
        assert IMAGE_NAME.fullmatch(image.file.name), image.file.name
        stored = default_storage.open(image.file.name).read()
        assert (image.size_bytes, image.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    # Upright: the EXIF orientation was applied to the pixels before it was dropped.
    assert (png.width, png.height, jpeg.width, jpeg.height) == (40, 20, 20, 40)
    study = study_create_rating(name="uploaded", dataset=dataset)
    received = annotator_fetches_every_image(study, annotator)
    assert len(received) == 2
    for data in received:
        assert_pixels_only(data, "uploaded image as served")
    assert {PILImage.open(io.BytesIO(d)).format for d in received} == {"PNG", "JPEG"}


def test_imported_tia2_images_reach_the_annotator_without_their_metadata(small_tia2, tmp_path, annotator,
                                                                         media_root):
    folder = tmp_path / "images" / "counting"
    folder.mkdir(parents=True)
    (folder / "image_0_0_0.jpg").write_bytes(jpeg_with_exif())
    (folder / "image_1_0_0.jpg").write_bytes(png_with_text())  # a PNG under a .jpg name: read by its content
    call_command("import_tia2", str(small_tia2), "--images", str(tmp_path / "images"), stdout=io.StringIO())
    images = Image.objects.exclude(file="")
    assert images.count() == 2
    for image in images:
        assert IMAGE_NAME.fullmatch(image.file.name), image.file.name
        assert_pixels_only(default_storage.open(image.file.name).read(), f"stored {image.source_name}")
    study = study_create_rating(name="imported", dataset=Dataset.objects.get(name="tia2-counting"))
    received = annotator_fetches_every_image(study, annotator)
    assert len(received) == 2
    for data in received:
        assert_pixels_only(data, "imported image as served")


class Annotated(ProceduralBackend):
    """A backend that writes its settings beside the pixels, as many generators do."""

    def warm_up(self, params, batch_size):
        return 0.0

    def generate(self, prompts, seeds, params):
        made = super().generate(prompts, seeds, params)
        for g in made:
            g.image.info.update(comment=MODEL.encode(), parameters=MODEL, icc_profile=MODEL.encode())
        return made


def test_generated_images_are_stored_without_what_the_backend_wrote_beside_them(monkeypatch, media_root):
    monkeypatch.setattr(jobs, "get_backend", lambda *a, **k: Annotated(0.2))
    dataset = Dataset.objects.create(name="scenes")
    Prompt.objects.create(dataset=dataset, text="a realistic photo of two cups", source_index=0)
    checkpoint = Checkpoint.objects.create(name="careful", backend="procedural", config={"error_rate": 0.2})
    job = generation_job_create(checkpoint=checkpoint, dataset=dataset, seeds=[0], images_per_seed=2,
                                width=32, height=32, enqueue=False)
    assert generation_job_execute(job.id) == 2
    for image in Image.objects.filter(job=job):
        assert IMAGE_NAME.fullmatch(image.file.name), image.file.name
        assert_pixels_only(default_storage.open(image.file.name).read(), "generated image")


# --- names ------------------------------------------------------------------------------------

def test_generated_names_are_keyed_hashes_the_same_on_every_worker(settings):
    name = jobs.generated_image_name(checkpoint_id=3, prompt_id=17, seed=42, index=1)
    assert IMAGE_NAME.fullmatch(name) and name.endswith(".jpg")
    # Deterministic per image (a rerun overwrites its own file) and different for any other.
    assert name == jobs.generated_image_name(checkpoint_id=3, prompt_id=17, seed=42, index=1)
    others = {jobs.generated_image_name(checkpoint_id=c, prompt_id=p, seed=s, index=i)
              for c, p, s, i in [(4, 17, 42, 1), (3, 18, 42, 1), (3, 17, 43, 1), (3, 17, 42, 2)]}
    assert len(others) == 4 and name not in others
    # Without the key nobody can compute it: another SECRET_KEY, or an explicit key, names it otherwise.
    settings.SECRET_KEY = "another-secret"
    derived = jobs.generated_image_name(checkpoint_id=3, prompt_id=17, seed=42, index=1)
    settings.CALIBRA_MEDIA_NAME_KEY = "shared-by-every-worker"
    keyed = jobs.generated_image_name(checkpoint_id=3, prompt_id=17, seed=42, index=1)
    assert len({name, derived, keyed}) == 3
    settings.SECRET_KEY = "yet-another"
    assert jobs.generated_image_name(checkpoint_id=3, prompt_id=17, seed=42, index=1) == keyed
    assert keyed_image_name("generated", 3, 17, 42, 1) == keyed


def test_report_files_are_named_by_nothing_of_the_study(media_root):
    from tests.factories import open_rating

    study = open_rating(prompts=2, per_prompt=1)
    report = Report.objects.create(study=study, format="json", params={"rounds": 1000, "seed": 0})
    report = report_build(report.pk)
    assert re.fullmatch(r"reports/[0-9a-f]{32}\.json", report.file.name), report.file.name


# --- no URL serves the media folder ---------------------------------------------------------

@pytest.fixture
def debug_urls(settings):
    """The URLconf as the embedded default (DEBUG, local storage) builds it."""
    import webapp.urls

    settings.DEBUG = True
    importlib.reload(webapp.urls)
    clear_url_caches()
    yield
    settings.DEBUG = False
    importlib.reload(webapp.urls)
    clear_url_caches()


def test_no_url_serves_media_with_debug_on(debug_urls, researcher, annotator, media_root, monkeypatch):
    from tests.factories import open_rating

    monkeypatch.setattr(jobs, "get_backend", lambda *a, **k: ProceduralBackend(0.2))
    study = open_rating(prompts=2, per_prompt=1)
    job = generation_job_create(checkpoint=study.checkpoints.first(), dataset=study.dataset, seeds=[5],
                                images_per_seed=1, width=32, height=32, enqueue=False)
    generation_job_execute(job.id)
    generated = Image.objects.filter(job=job).first().file.name
    # A file under the old naming scheme still sits in storage, as rows made before point at it.
    old = default_storage.save("generated/1/1_0_0.jpg", ContentFile(default_storage.open(generated).read()))
    report = report_build(Report.objects.create(study=study, format="html", params={"rounds": 1000}).pk)
    legacy_report = default_storage.save(f"reports/{study.public_id}/report-1.html", ContentFile(b"<p>r</p>"))
    for name in (generated, old, report.file.name, legacy_report):
        assert default_storage.exists(name)
        for who in (None, annotator, researcher):
            response = client_for(who).get(f"/media/{name}")
            assert response.status_code == 404, (name, who)
    # Through the view that checks rights, the researcher still gets the report.
    download = client_for(researcher).get(f"/api/reports/{report.pk}/download")
    assert download.status_code == 200 and b"Report: ratings" in b"".join(download.streaming_content)


# --- files stored under the old names -----------------------------------------------------

def test_rename_media_moves_old_names_and_a_second_run_does_nothing(media_root,
                                                                    django_capture_on_commit_callbacks):
    from tests.factories import open_rating

    study = open_rating(prompts=2, per_prompt=1)  # its rows point at generated/<checkpoint>/... names
    generated = list(Image.objects.filter(checkpoint__isnull=False).order_by("pk"))
    encoded = jobs.encode_jpeg(pixels())
    for image in generated:
        default_storage.save(image.file.name, ContentFile(encoded))
    missing = generated.pop()  # a row whose file is gone stays as it is
    default_storage.delete(missing.file.name)
    # A best-of-n pick shares its file with the image it picked.
    derived = Checkpoint.objects.create(name="best-of-2", backend="procedural")
    picked = Image.objects.create(prompt=generated[0].prompt, checkpoint=derived, seed=0, index=0,
                                  file=generated[0].file.name, sha256=generated[0].sha256, size_bytes=1)
    prompt = generated[0].prompt
    uploaded = Image.objects.create(prompt=prompt, seed=9, index=0, sha256="0" * 64, size_bytes=1,
                                    file=f"uploads/{prompt.dataset_id}/ab_0_9_0.png")
    default_storage.save(uploaded.file.name, ContentFile(png_with_text()))
    report = Report.objects.create(study=study, format="html", status=Report.Status.SUCCEEDED,
                                   file=f"reports/reports/{study.public_id}/report-1.html")
    default_storage.save(report.file.name, ContentFile(b"<p>report</p>"))
    old_names = {i.file.name for i in [*generated, uploaded]} | {report.file.name}

    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("rename_media", "--batch-size", "2", stdout=out)
    assert "images: 5 row(s) renamed; reports: 1 row(s) renamed; 1 row(s) whose file" in out.getvalue()
    assert not any(default_storage.exists(n) for n in old_names)
    for image in [*generated, picked]:
        image.refresh_from_db()
        assert IMAGE_NAME.fullmatch(image.file.name)
        assert default_storage.open(image.file.name).read() == encoded  # the worker's file, as it was
    picked.refresh_from_db()
    assert picked.file.name == Image.objects.get(pk=generated[0].pk).file.name
    uploaded.refresh_from_db()
    stored = default_storage.open(uploaded.file.name).read()
    assert IMAGE_NAME.fullmatch(uploaded.file.name) and uploaded.file.name.endswith(".png")
    assert_pixels_only(stored, "renamed upload")
    assert (uploaded.sha256, uploaded.size_bytes) == (hashlib.sha256(stored).hexdigest(), len(stored))
    report.refresh_from_db()
    assert re.fullmatch(r"reports/[0-9a-f]{32}\.html", report.file.name)
    assert default_storage.open(report.file.name).read() == b"<p>report</p>"
    missing.refresh_from_db()
    assert missing.file.name.startswith("generated/")

    again = io.StringIO()
    call_command("rename_media", stdout=again)
    assert "images: 0 row(s) renamed; reports: 0 row(s) renamed; 1 row(s)" in again.getvalue()
