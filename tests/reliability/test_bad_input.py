"""Bad input gets a clear 4xx or a clear error naming where it is, and writes nothing:
image uploads, CSV prompt imports, TIA2 files (the cases tests/annotate/test_import_tia2.py
does not cover) and paths outside the allowed input roots."""
import hashlib
import io
import json
import random
import re
import resource
import struct
import uuid
import zlib
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import Image as PILImage
from rest_framework.test import APIClient

from annotate.models import Checkpoint, ContrastivePromptSet, Dataset, HumanLabel, Image, Prompt, RewardModel

pytestmark = pytest.mark.django_db

MODELS = (Dataset, Prompt, Image, HumanLabel, ContrastivePromptSet, Checkpoint, RewardModel)


def db_state() -> dict:
    return {m.__name__: sorted(m.objects.values_list("pk", flat=True)) for m in MODELS}


def stored_files(media_root: Path) -> list[Path]:
    return [p for p in media_root.rglob("*") if p.is_file()]


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- image uploads --------------------------------------------------------------------------

def image_bytes(fmt: str = "PNG", size=(64, 48), seed: int = 0) -> bytes:
    rng = random.Random(seed)  # noise: a file long enough to cut short and still have a header
    img = PILImage.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def png_of_blank_pixels(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels, written a row at a time: a few KB on
    disk however many pixels it holds (a decompression bomb when they are many)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    return png_of_blank_pixels(20_000, 20_000)


@pytest.fixture
def prompt(db) -> Prompt:
    dataset = Dataset.objects.create(name="uploads")
    return Prompt.objects.create(dataset=dataset, text="a red cube", source_index=3)


def upload(user, to_prompt, content: bytes, *, name: str = "image.png", **fields):
    data = {"file": io.BytesIO(content), "prompt": to_prompt.pk, **fields}
    data["file"].name = name
    return client_for(user).post(reverse("api-dataset-images", args=[to_prompt.dataset_id]), data,
                                 format="multipart")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_image_is_stored_with_its_row_and_the_same_file_again_adds_nothing(fmt, researcher, prompt, media_root):
    content = image_bytes(fmt)
    response = upload(researcher, prompt, content, name=f"cube.{fmt.lower()}", seed=7)
    assert response.status_code == 201, response.content
    image = Image.objects.get()
    assert (image.prompt, image.checkpoint, image.seed, image.index) == (prompt, None, 7, 0)
    stored = Path(media_root, image.file.name).read_bytes()  # re-encoded from the pixels
    assert (image.width, image.height, image.size_bytes) == (64, 48, len(stored))
    assert image.sha256 == hashlib.sha256(stored).hexdigest()
    assert response.json()["sha256"] == image.sha256 and len(image.sha256) == 64
    from rest_framework.authtoken.models import Token

    script = APIClient()  # the API's client follows the link with its token (media is not served as such)
    script.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=researcher)[0].key}")
    served = script.get(response.json()["url"])
    assert served.status_code == 200 and b"".join(served.streaming_content) == stored
    script.credentials(HTTP_AUTHORIZATION="Token not-a-key")
    assert script.get(response.json()["url"]).status_code == 401
    again = upload(researcher, prompt, content, seed=7, index=0)
    assert again.status_code == 200 and again.json()["id"] == image.pk
    assert Image.objects.count() == 1 and len(stored_files(media_root)) == 1
    assert upload(researcher, prompt, image_bytes(fmt, seed=1), seed=7).json()["index"] == 1


BAD_IMAGES = {
    "not an image": (lambda: b"%PDF-1.4 this is not an image", "not an image"),
    "GIF": (lambda: image_bytes("GIF"), "GIF images are not accepted"),
    "truncated PNG": (lambda: image_bytes("PNG")[:-2000], "cannot be read"),
    "truncated JPEG": (lambda: image_bytes("JPEG")[:-300], "cannot be read"),
    "empty": (lambda: b"", "empty"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_a_bad_image_file_is_a_400_naming_the_field_and_writes_nothing(case, researcher, prompt, media_root):
    make, message = BAD_IMAGES[case]
    before = db_state()
    response = upload(researcher, prompt, make())
    assert response.status_code == 400, response.content
    assert message in response.json()["file"][0]
    assert db_state() == before and not stored_files(media_root)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_a_400_without_decoding_it(researcher, prompt, media_root, bomb_png):
    assert len(bomb_png) < 200_000  # 400 megapixels in a small file
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    response = upload(researcher, prompt, bomb_png)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert response.status_code == 400, response.content
    assert "decompression bomb" in response.json()["file"][0]
    assert grown_mib < 150  # decoding would take 400 MB
    assert not Image.objects.exists() and not stored_files(media_root)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixels_over_the_configured_limit_are_a_400_below_pillows_own_limit(researcher, prompt, settings, media_root):
    # 64 megapixels: under Pillow's default guard (89M), over the default upload limit (50M).
    response = upload(researcher, prompt, png_of_blank_pixels(8_000, 8_000))
    assert response.status_code == 400
    assert "8000 x 8000 pixels is more than the limit of 50,000,000 pixels" in response.json()["file"][0]
    settings.CALIBRA_UPLOAD_MAX_PIXELS = 1000
    small = upload(researcher, prompt, image_bytes("PNG"))
    assert small.status_code == 400 and "64 x 48 pixels" in small.json()["file"][0]
    assert not Image.objects.exists() and not stored_files(media_root)


def test_a_file_over_the_byte_limit_is_a_413_with_a_message(researcher, prompt, settings, media_root):
    content = image_bytes("PNG", size=(96, 96))
    settings.CALIBRA_UPLOAD_MAX_BYTES = len(content) - 1  # within the envelope: the file's size decides
    response = upload(researcher, prompt, content)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large" and "more than the limit" in response.json()["detail"]
    assert not Image.objects.exists() and not stored_files(media_root)


def test_a_body_over_the_default_limit_is_refused_before_it_is_read(researcher, prompt, media_root):
    class Unreadable(io.RawIOBase):
        def read(self, *args):
            raise AssertionError("the body was read")

    url = reverse("api-dataset-images", args=[prompt.dataset_id])
    response = client_for(researcher).generic(
        "POST", url, b"x", content_type="multipart/form-data; boundary=b",
        CONTENT_LENGTH=str(21 * 1024 * 1024), **{"wsgi.input": Unreadable()})
    assert response.status_code == 413 and "20.0 MB" in response.json()["detail"]
    # A real 21 MB file says the same.
    big = upload(researcher, prompt, image_bytes("PNG") + b"\x00" * (21 * 1024 * 1024))
    assert big.status_code == 413
    assert not Image.objects.exists() and not stored_files(media_root)


def test_other_bad_fields_name_the_field(researcher, prompt, media_root):
    other = Prompt.objects.create(dataset=Dataset.objects.create(name="other"), text="x", source_index=0)
    content = image_bytes("PNG")
    wrong = upload(researcher, prompt, content, prompt=other.pk)
    assert wrong.status_code == 400 and "is not a prompt of dataset 'uploads'" in wrong.json()["prompt"][0]
    assert upload(researcher, prompt, content, seed=-1).json().keys() == {"seed"}
    missing = client_for(researcher).post(reverse("api-dataset-images", args=[prompt.dataset_id]),
                                          {"prompt": prompt.pk}, format="multipart")
    assert missing.status_code == 400 and "file" in missing.json()
    nowhere = client_for(researcher).post(reverse("api-dataset-images", args=[999_999]),
                                          {"prompt": prompt.pk}, format="multipart")
    assert nowhere.status_code == 404
    assert upload(researcher, prompt, content, index=0).status_code == 201
    taken = upload(researcher, prompt, image_bytes("PNG", seed=5), index=0)
    assert taken.status_code == 409 and "index" in taken.json()["detail"]
    assert Image.objects.count() == 1 and len(stored_files(media_root)) == 1


def test_annotators_may_not_upload(annotator, prompt, media_root):
    assert upload(annotator, prompt, image_bytes("PNG")).status_code == 403
    assert APIClient().post(reverse("api-dataset-images", args=[prompt.dataset_id])).status_code in (401, 403)
    assert not Image.objects.exists() and not stored_files(media_root)


def test_a_failed_write_leaves_no_file_behind(researcher, prompt, media_root, monkeypatch):
    def broken(**fields):
        raise RuntimeError("database gone")

    monkeypatch.setattr(Image.objects, "create", broken)
    with pytest.raises(RuntimeError):
        upload(researcher, prompt, image_bytes("PNG"))
    assert not stored_files(media_root)


# --- CSV prompt imports ---------------------------------------------------------------------

GOOD_CSV = "text,category,source_index\na red cube,colour,0\n\"two cats, one dog\",counting,1\nthree cups,,\n"


def csv_file(tmp_path: Path, content: str | bytes, name: str = "prompts.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def import_prompts(*args) -> str:
    out = io.StringIO()
    call_command("import_prompts", *map(str, args), stdout=out)
    return out.getvalue()


def test_the_command_creates_the_dataset_and_a_second_run_adds_nothing(tmp_path):
    path = csv_file(tmp_path, GOOD_CSV)
    out = import_prompts("mine", path)
    mine = Dataset.objects.get(name="mine")
    assert f"CREATED a new dataset named 'mine' (id {mine.pk})" in out and "3 prompts added, 0 already there" in out
    rows = list(Prompt.objects.order_by("source_index").values_list("text", "category", "source_index"))
    assert rows == [("a red cube", "colour", 0), ("two cats, one dog", "counting", 1), ("three cups", "", 2)]
    before = db_state()
    again = import_prompts("mine", path)
    assert "0 prompts added, 3 already there" in again and "CREATED" not in again
    assert db_state() == before
    # New rows are added after the ones already there, without source_index given or with.
    csv_file(tmp_path, GOOD_CSV + "four cups,,\nfive cups,,9\n")
    import_prompts("mine", path)
    assert dict(Prompt.objects.values_list("text", "source_index"))["four cups"] == 10
    assert Prompt.objects.count() == 5


def test_digits_name_a_dataset_by_id_only_when_no_dataset_has_them_as_its_name(tmp_path):
    by_name = Dataset.objects.create(name="by name")
    out = import_prompts(by_name.pk, csv_file(tmp_path, GOOD_CSV))
    assert f"using dataset id {by_name.pk} ('by name')" in out and "CREATED" not in out
    assert by_name.prompts.count() == 3 and Dataset.objects.count() == 1
    # A dataset called with those digits wins over the id.
    digits = Dataset.objects.create(name=str(by_name.pk))
    out = import_prompts(by_name.pk, csv_file(tmp_path, "text\nfour cups\n"))
    assert "using dataset id" not in out and digits.prompts.count() == 1 and by_name.prompts.count() == 3
    # Digits that are neither a name nor an id: a new dataset of that name, said plainly.
    out = import_prompts(999_999, csv_file(tmp_path, "text\nfive cups\n"))
    assert "CREATED a new dataset named '999999'" in out and "no dataset had that name or id" in out
    assert Dataset.objects.get(name="999999").prompts.count() == 1


def test_no_create_refuses_a_new_dataset_and_writes_nothing(tmp_path):
    existing = Dataset.objects.create(name="existing")
    before = db_state()
    for ref, message in (("typo", "no dataset is named 'typo', and --no-create"),
                         ("999999", "no dataset is named '999999' and none has that id")):
        with pytest.raises(CommandError) as err:
            import_prompts(ref, csv_file(tmp_path, GOOD_CSV), "--no-create")
        assert message in str(err.value) and "Nothing was written" in str(err.value)
    assert db_state() == before
    # With a dataset that exists, by name or by id, --no-create changes nothing.
    assert "3 prompts added" in import_prompts("existing", csv_file(tmp_path, GOOD_CSV), "--no-create")
    assert "0 prompts added, 3 already there" in import_prompts(existing.pk, csv_file(tmp_path, GOOD_CSV),
                                                                 "--no-create")
    assert Dataset.objects.count() == 1


def test_a_new_dataset_is_not_kept_when_its_import_fails(tmp_path, monkeypatch):
    """The dataset is created in the import's transaction: an error while writing leaves neither."""
    from annotate.services import prompt_import

    def broken(*args, **kwargs):
        raise prompt_import.PromptImportError("prompts.csv: disk full")

    monkeypatch.setattr(prompt_import.Prompt.objects, "bulk_create", broken)
    with pytest.raises(CommandError, match="disk full"):
        import_prompts("brand new", csv_file(tmp_path, GOOD_CSV))
    assert not Dataset.objects.exists() and not Prompt.objects.exists()


BAD_CSV = {
    "empty text": ("text,category\n" + "".join(f"cat {i},x\n" for i in range(5)) + " ,x\n",
                   "prompts.csv line 7: text is empty"),
    "source_index not a number": ("text,source_index\na,0\nb,x\n", "prompts.csv line 3: source_index 'x' is not a whole number"),
    "negative source_index": ("text,source_index\na,-1\n", "line 2: source_index '-1' is not a whole number"),
    "huge source_index": ("text,source_index\na,99999999999\n", "line 2: source_index 99999999999 is more than"),
    "duplicate source_index": ("text,source_index\na,4\nb,5\nc,4\n", "prompts.csv line 4: source_index 4 repeats line 2"),
    "duplicate text": ("text\na cat\na dog\na cat\n", "line 4: text repeats line 2"),
    "missing header": ("a cat,animals\na dog,animals\n", "prompts.csv line 1: no 'text' column in the header"),
    "unknown column": ("text,colour\na,red\n", "line 1: unknown column 'colour'"),
    "column twice": ("text,text\na,b\n", "line 1: column 'text' appears twice"),
    "wrong field count": ("text,category\na,b\nc,d,e\n", "prompts.csv line 3: 3 fields, but the header names 2"),
    "wrong encoding": ("text\na cat\ncaf\xe9 au lait\n".encode("latin-1"), "prompts.csv line 3: not UTF-8"),
    "empty file": ("", "prompts.csv: empty file"),
    "NUL": ("text\na\x00b\n", "line 2: text contains a NUL character"),
    "long category": ("text,category\na," + "c" * 65 + "\n", "line 2: category is longer than 64"),
    "unclosed quote": ('text\n"a cat\n', "prompts.csv line"),
    "too many rows": ("text\n" + "".join(f"p{i}\n" for i in range(7)), "prompts.csv line 8: more than 6 prompts"),
}


@pytest.mark.parametrize("case", BAD_CSV)
def test_a_bad_csv_names_the_line_and_column_and_writes_nothing(case, tmp_path, settings):
    settings.CALIBRA_PROMPT_IMPORT_MAX_ROWS = 6
    content, message = BAD_CSV[case]
    import_prompts("existing", csv_file(tmp_path, "text\nalready here\n", "first.csv"))
    before = db_state()
    with pytest.raises(CommandError) as err:
        import_prompts("new-dataset", csv_file(tmp_path, content))
    assert message in str(err.value) and "Nothing was written" in str(err.value)
    with pytest.raises(CommandError, match=re.escape(message)):
        import_prompts("existing", csv_file(tmp_path, content))
    assert db_state() == before


def test_a_row_that_contradicts_the_database_is_refused(tmp_path):
    import_prompts("d", csv_file(tmp_path, GOOD_CSV))
    before = db_state()
    with pytest.raises(CommandError, match="line 3: source_index 1 is 'two cats, one dog' in the database, not 'x'"):
        import_prompts("d", csv_file(tmp_path, "text,source_index\nnew one,7\nx,1\n"))
    with pytest.raises(CommandError, match="line 2: category 'other' differs from 'colour'"):
        import_prompts("d", csv_file(tmp_path, "text,category\na red cube,other\n"))
    assert db_state() == before


def test_the_command_reads_no_file_outside_the_allowed_roots(tmp_path, settings):
    settings.CALIBRA_ALLOWED_INPUT_ROOTS = [str(tmp_path / "datasets")]
    with pytest.raises(CommandError, match="prompts file .* outside the allowed input roots"):
        import_prompts("d", csv_file(tmp_path, GOOD_CSV))
    with pytest.raises(CommandError, match="cannot read"):
        import_prompts("d", tmp_path / "datasets" / "missing.csv")
    assert not Dataset.objects.exists()


def post_csv(user, dataset_id: int, content: bytes | str, name: str = "prompts.csv"):
    file = io.BytesIO(content.encode() if isinstance(content, str) else content)
    file.name = name
    return client_for(user).post(reverse("api-dataset-prompts-csv", args=[dataset_id]), {"file": file},
                                 format="multipart")


def test_the_api_imports_once_and_refuses_bad_files_and_annotators(researcher, annotator, settings):
    dataset = Dataset.objects.create(name="api")
    first = post_csv(researcher, dataset.pk, GOOD_CSV)
    assert first.status_code == 201 and first.json() == {"dataset": dataset.pk, "created": 3, "existing": 0}
    again = post_csv(researcher, dataset.pk, GOOD_CSV)
    assert again.status_code == 200 and again.json()["created"] == 0
    before = db_state()
    bad = post_csv(researcher, dataset.pk, "text,category\na,b\n,x\n", name="mine.csv")
    assert bad.status_code == 400 and bad.json() == {"file": ["mine.csv line 3: text is empty"]}
    assert post_csv(annotator, dataset.pk, "text\nnew\n").status_code == 403
    assert post_csv(researcher, 999_999, "text\nnew\n").status_code == 404
    settings.CALIBRA_PROMPT_IMPORT_MAX_BYTES = 10
    too_big = post_csv(researcher, dataset.pk, "text\nlonger than ten bytes\n")
    assert too_big.status_code == 413 and "more than the limit" in too_big.json()["detail"]
    assert db_state() == before


# --- TIA2 files: what tests/annotate/test_import_tia2.py leaves out ---------------------------

def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


def first_entry(data: dict) -> dict:
    return data[next(iter(data))]


def _set(mapping: dict, key, value) -> dict:
    mapping[key] = value
    return mapping


LABELS = "human_annotations/human_labels_counting.json"
SETS = "prompts/prompt_set_counting.json"
BAD_TIA2 = {
    "labels not an object": (LABELS, lambda d: list(d.values()), ["expected an object keyed by image file name"]),
    "entry not an object": (LABELS, lambda d: _set(d, next(iter(d)), "aligned"), ["image_0_0_0.jpg", "expected an object"]),
    "labels a string": (LABELS, lambda d: _set(first_entry(d), "human_labels", "1,1,0") and d,
                        ["image_0_0_0.jpg", "'human_labels' must be a list of three labels"]),
    "two labels": (LABELS, lambda d: _set(first_entry(d), "human_labels", [1, 0]) and d, ["list of three labels"]),
    "label a boolean": (LABELS, lambda d: _set(first_entry(d), "human_labels", [True, 1, 0]) and d,
                        ["human_labels[0] is True"]),
    "label a string": (LABELS, lambda d: _set(first_entry(d), "human_labels", ["1", 1, 0]) and d,
                       ["human_labels[0] is '1'"]),
    "caption a number": (LABELS, lambda d: _set(first_entry(d), "caption", 7) and d, ["missing 'caption'"]),
    "bad image name": (LABELS, lambda d: {"cat.png" if k == next(iter(d)) else k: v for k, v in d.items()},
                       ["'cat.png'", "image_<prompt>_<seed>_<index>.jpg"]),
    "image differs from key": (LABELS, lambda d: _set(first_entry(d), "image", "image_9_9_9.jpg") and d,
                               ["image_0_0_0.jpg", "'image' is 'image_9_9_9.jpg'"]),
    "captions of one prompt differ": (LABELS, lambda d: _set(d["image_0_0_1.jpg"], "caption", "another") and d,
                                      ["image_0_0_1.jpg", "differs from"]),
    "one caption for two prompts": (LABELS, lambda d: [_set(v, "caption", "same") for v in d.values()] and d,
                                    ["'same' belongs to 2 prompt indices"]),
    "truncated prompt sets": (SETS, None, ["invalid JSON"]),
    "prompt sets a list": (SETS, lambda d: list(d), ["expected an object keyed by prompt"]),
    "contrastive prompts a string": (SETS, lambda d: {k: "a photo" for k in d}, ["expected a list of non-empty prompts"]),
    "empty contrastive prompt": (SETS, lambda d: {k: [""] for k in d}, ["expected a list of non-empty prompts"]),
}


@pytest.mark.parametrize("case", BAD_TIA2)
def test_a_malformed_tia2_file_is_named_with_its_key_and_nothing_is_written(case, small_tia2):
    relative, edit, fragments = BAD_TIA2[case]
    path = small_tia2 / relative
    if edit is None:
        path.write_text(path.read_text()[:len(path.read_text()) // 2])
    else:
        edit_json(path, edit)
    with pytest.raises(CommandError) as err:
        call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    message = str(err.value)
    assert str(path) in message and "Nothing was written" in message
    for fragment in fragments:
        assert fragment in message
    assert db_state() == {m.__name__: [] for m in MODELS}


def test_a_labels_file_naming_a_prompt_missing_from_the_prompt_sets_is_refused(small_tia2):
    sets = small_tia2 / SETS
    edit_json(sets, lambda d: dict(list(d.items())[1:]))
    with pytest.raises(CommandError, match="prompt_set_counting.json"):
        call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    assert not Dataset.objects.exists()


# --- paths outside the allowed input roots ---------------------------------------------------

@pytest.fixture
def outside(tmp_path, settings) -> dict[str, Path]:
    """Allowed: tmp_path/allowed. Outside it: a diffusers folder, a weights file, a model folder,
    and a link from inside the root to the folder outside."""
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    (elsewhere / "pipe").mkdir(parents=True)
    (elsewhere / "pipe" / "model_index.json").write_text("{}")
    (elsewhere / "weights.safetensors").write_bytes(b"weights")
    (elsewhere / "clip").mkdir()
    (allowed / "pipe").mkdir(parents=True)
    (allowed / "pipe" / "model_index.json").write_text("{}")
    (allowed / "lora.safetensors").write_bytes(b"lora")
    (allowed / "link").symlink_to(elsewhere / "pipe")
    settings.CALIBRA_ALLOWED_INPUT_ROOTS = [str(allowed)]
    return {"allowed": allowed, "elsewhere": elsewhere}


def test_checkpoint_registration_through_the_api_refuses_paths_outside_the_roots(researcher, outside):
    allowed, elsewhere = outside["allowed"], outside["elsewhere"]
    api = client_for(researcher)
    for body, field in [
        ({"backend": "diffusers", "location": str(elsewhere / "pipe")}, "location"),
        ({"backend": "diffusers", "location": str(allowed / "link")}, "location"),  # a link out of the root
        ({"backend": "diffusers", "location": f"{allowed}/../elsewhere/pipe"}, "location"),
        ({"backend": "single_file", "location": str(elsewhere / "weights.safetensors")}, "location"),
        ({"backend": "lora", "location": str(allowed / "lora.safetensors"), "base_model": str(elsewhere / "pipe")},
         "base_model"),
    ]:
        response = api.post(reverse("api-checkpoints"), {"name": "x", **body}, format="json")
        assert response.status_code == 400, (body, response.content)
        assert response.json()["detail"].startswith(f"{field}: ")
        assert "outside the allowed input roots" in response.json()["detail"]
    with pytest.raises(CommandError, match="outside the allowed input roots"):
        call_command("register_checkpoint", "x", "--backend", "diffusers", "--location", str(elsewhere / "pipe"),
                     stdout=io.StringIO())
    assert not Checkpoint.objects.exists()
    ok = api.post(reverse("api-checkpoints"), {"name": "inside", "backend": "diffusers",
                                               "location": str(allowed / "pipe")}, format="json")
    assert ok.status_code == 201


def test_reward_model_folders_outside_the_roots_are_refused(outside):
    from annotate.services.scoring import ScoringError, reward_model_create

    with pytest.raises(ScoringError, match="^location: reward model folder .* outside the allowed input roots"):
        reward_model_create(name="clip", kind="clip", location=str(outside["elsewhere"] / "clip"))
    with pytest.raises(ScoringError, match="outside the allowed input roots"):
        reward_model_create(name="clip", kind="clip", location=str(outside["allowed"] / "link"))
    assert not RewardModel.objects.exists()


def test_a_reward_model_path_outside_the_roots_is_refused_even_before_it_exists(outside):
    from annotate.services.scoring import ScoringError, reward_model_create

    with pytest.raises(ScoringError, match="outside the allowed input roots"):
        reward_model_create(name="clip", kind="clip", location=str(outside["elsewhere"] / "later"),
                            config={"allow_download": True})


def test_import_tia2_refuses_an_image_folder_linked_from_inside_the_roots(small_tia2, tmp_path, settings):
    (tmp_path / "images").mkdir()
    (small_tia2 / "images").symlink_to(tmp_path / "images")
    settings.CALIBRA_ALLOWED_INPUT_ROOTS = [str(small_tia2)]
    with pytest.raises(CommandError, match="image folder .* outside the allowed input roots"):
        call_command("import_tia2", str(small_tia2), "--images", str(small_tia2 / "images"), stdout=io.StringIO())
    with pytest.raises(CommandError, match="image folder .* outside the allowed input roots"):
        call_command("import_tia2", str(small_tia2), "--images", f"{small_tia2}/../images", stdout=io.StringIO())
    assert not Dataset.objects.exists()


# --- JSON bodies, query strings and admin filters that once made 500s ------------------------

def test_the_token_endpoint_refuses_json_nested_too_deep_with_a_400():
    for depth in (33, 10_000):
        response = APIClient().post(reverse("api-token"), "[" * depth + "]" * depth, content_type="application/json")
        assert response.status_code == 400
        assert response.json() == {"detail": "JSON nested deeper than 32 levels"}


def test_a_nul_in_a_json_string_is_a_400_naming_where_it_is(researcher):
    """Was a 500 on PostgreSQL (jsonb holds no \\u0000); SQLite stored it."""
    api = client_for(researcher)
    body = {"name": "nul", "backend": "procedural", "config": {"steps": 4, "note": "a\u0000b"}}
    response = api.post(reverse("api-checkpoints"), body, format="json")
    assert response.status_code == 400
    assert response.json()["detail"] == "JSON string at 'config.note' holds a NUL character (\\u0000)"
    assert not Checkpoint.objects.exists()


LONE_SURROGATES = [  # a value a response cannot encode once an error message echoes it
    ("api-checkpoints", '{"name": "s", "backend": "\\ud800"}', "'backend' holds a lone surrogate (\\ud800)"),
    ("api-checkpoints", '{"name": "s", "backend": "procedural", "config": {"\\udfff": 1}}',
     "'config.\\\\udfff' holds a lone surrogate (\\udfff)"),
    ("api-studies", '{"name": "s", "kind": "\\ud800x", "dataset": 1}', "'kind' holds a lone surrogate"),
    ("api-checkpoints", '{"name": "s", "backend": "procedural", "config": {"x": 1e999}}', "1e999 is too large"),
    ("api-checkpoints", '{"name": "s", "backend": "procedural", "config": {"x": -1e999}}', "-1e999 is too large"),
]


@pytest.mark.parametrize(("route", "body", "said"), LONE_SURROGATES)
def test_lone_surrogates_and_infinite_numbers_in_json_are_a_400_naming_where(route, body, said, researcher):
    """Were 500s: DRF echoed the value in its error and the renderer could not encode it; SQLite
    stored a config with one, after which the checkpoint list answered 500 for good."""
    response = client_for(researcher).post(reverse(route), body, content_type="application/json")
    assert response.status_code == 400 and said in response.json()["detail"], response.content
    assert not Checkpoint.objects.exists()
    assert client_for(researcher).get(reverse("api-checkpoints")).status_code == 200


def test_an_annotators_skip_with_a_lone_surrogate_is_a_400():
    from tests.factories import annotators, open_pairwise

    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=2, per_prompt=1)
    api = client_for(user)
    shown = api.post(reverse("api-next", args=[study.public_id]), {}, format="json").json()
    body = ('{"item": "%s", "lease": %d, "client_id": "%s", "reason": "\\ud800"}'
            % (shown["item"], shown["lease"], uuid.uuid4()))
    response = api.post(reverse("api-skip", args=[study.public_id]), body, content_type="application/json")
    assert response.status_code == 400 and "lone surrogate" in response.json()["detail"]


@pytest.mark.parametrize(("text", "depth"), [
    ('{"a": [1, {"b": []}]}', 4),
    ('{"a": "[[[[{{{{", "b\\"[[": ["]]]"]}', 2),  # brackets inside strings, and an escaped quote
    ("[" * 32 + "]" * 32, 32),
    ('"just a string"', 0),
])
def test_json_nesting_depth_ignores_brackets_inside_strings(text, depth):
    from annotate.parsers import nesting_depth

    assert nesting_depth(text) == depth


def test_the_json_parser_takes_32_levels_and_an_escaped_backslash_before_u0000():
    from annotate.parsers import SafeJSONParser

    def parse(text: str):
        return SafeJSONParser().parse(io.BytesIO(text.encode()))

    deepest = parse("[" * 32 + "]" * 32)
    for _ in range(31):
        (deepest,) = deepest
    assert deepest == []
    assert parse('{"path": "C:\\\\u0000"}') == {"path": "C:\\u0000"}  # a backslash, then the text u0000
    with pytest.raises(Exception, match="nested deeper than 32"):
        parse("[" * 33 + "]" * 33)
    with pytest.raises(Exception, match="JSON string at 'k' holds a NUL"):
        parse('{"k": "\\\\\\u0000"}')


def test_an_unknown_gallery_category_is_no_filter(researcher):
    from django.test import Client

    from tests.factories import make_images

    _, checkpoints = make_images(prompts=2)
    client = Client()
    client.force_login(researcher)
    url = reverse("checkpoint-gallery", args=[checkpoints[0].pk])
    everything = client.get(url)
    unknown = client.get(url, {"category": "no such category"})
    assert unknown.status_code == 200 and unknown.context["category"] == ""
    assert len(unknown.context["page"].object_list) == len(everything.context["page"].object_list) == 2


def test_an_audit_actor_that_is_not_a_user_id_is_the_admins_bad_filter_page(researcher):
    from django.contrib.auth import get_user_model
    from django.test import Client

    admin = get_user_model().objects.create_superuser("root", password="root-pass-123")
    client = Client()
    client.force_login(admin)
    url = reverse("admin:annotate_auditevent_changelist")
    for actor in ("abc", "1" * 5000):
        response = client.get(url, {"actor": actor})
        assert response.status_code == 302 and response["Location"].endswith("?e=1")
    assert client.get(url, {"actor": str(researcher.pk)}).status_code == 200
    for changelist in ("annotate_auditevent_changelist", "annotate_study_changelist", "annotate_judgment_changelist"):
        response = client.get(reverse(f"admin:{changelist}"), {"created_at__year": "99999999999"})
        assert response.status_code == 302 and response["Location"].endswith("?e=1")  # was an OverflowError


@pytest.mark.parametrize(("charset", "status"), [("rot13", 400), ("base64", 400), ("zlib", 400), ("idna", 400),
                                                 ("utf-8", 405), ("latin-1", 405)])
def test_a_charset_that_is_no_text_encoding_is_a_400_before_django_reads_the_request(charset, status):
    """Django's request raised on these (LookupError: 'rot13' is not a text encoding) before any
    middleware or error page, on every route: a bare 500 from the server."""
    from webapp.wsgi import application

    answered = {}
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/token/", "QUERY_STRING": "a=b", "SERVER_NAME": "testserver",
               "SERVER_PORT": "80", "HTTP_HOST": "testserver", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(b""), "CONTENT_TYPE": f"text/plain; charset={charset}"}
    b"".join(application(environ, lambda code, headers, exc_info=None: answered.update(code=code)))
    assert answered["code"].startswith(str(status))
