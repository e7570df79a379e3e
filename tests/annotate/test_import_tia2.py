"""import_tia2 on the official files and on bad input."""
import hashlib
import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image as PILImage

from annotate.models import ContrastivePromptSet, Dataset, HumanLabel, Image, Prompt

pytestmark = pytest.mark.django_db

# SPEC.md section 1, "Figures any correct importer reproduces".
SPEC = {
    "comprehensive": dict(prompts=100, images=5000, no_label=133, majority=2361, rate=0.472,
                          contrastive=750, listed=751),
    "counting": dict(prompts=150, images=7500, no_label=0, majority=3245, rate=0.433,
                     contrastive=525, listed=525),
    "composition": dict(prompts=300, images=15000, no_label=1917, majority=5845, rate=0.390,
                        contrastive=9559, listed=9600),
}
MODELS = (Dataset, Prompt, Image, HumanLabel, ContrastivePromptSet)


def run_import(*args) -> dict:
    out = io.StringIO()
    call_command("import_tia2", *map(str, args), "--json", stdout=out)
    return json.loads(out.getvalue())


def db_state() -> dict:
    return {m.__name__: sorted(m.objects.values_list("pk", flat=True)) for m in MODELS}


def test_official_release_reproduces_spec_figures_and_second_run_creates_nothing(tia2_root):
    first = run_import(tia2_root)
    assert first["created"] == {"datasets": 3, "prompts": 550, "images": 27500, "labels": 82500,
                                "contrastive_sets": 550, "files_attached": 0}
    for category, want in SPEC.items():
        got = first["categories"][category]
        assert got["prompts"] == want["prompts"]
        assert got["images"] == want["images"]
        assert got["images_with_file"] == 0
        assert got["labels"]["-1"] == want["no_label"]
        assert sum(got["labels"].values()) == 3 * want["images"]
        assert got["majority_positive_images"] == want["majority"]
        assert round(got["majority_positive_rate"], 3) == want["rate"]
        assert got["contrastive_prompts"] == want["contrastive"]
        assert got["contrastive_prompts_listed"] == want["listed"]
    before = db_state()
    second = run_import(tia2_root)
    assert second["created_anything"] is False
    assert not any(second["created"].values())
    assert second["categories"] == first["categories"]
    assert db_state() == before
    # The three slots are kept as slots, and the original prompt is never its own contrast.
    assert set(HumanLabel.objects.values_list("slot", flat=True).distinct()) == {0, 1, 2}
    for s in ContrastivePromptSet.objects.select_related("prompt"):
        assert s.prompt.text not in s.texts and len(set(s.texts)) == len(s.texts)


def test_human_readable_output_says_when_nothing_was_created(small_tia2):
    call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    out = io.StringIO()
    call_command("import_tia2", str(small_tia2), stdout=out)
    assert "nothing created" in out.getvalue()
    assert "counting" in out.getvalue()


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (24, 16), (seed % 255, 40, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_folder_attaches_files_and_records_the_rest_as_missing(small_tia2, tmp_path, media_root):
    images = tmp_path / "images"
    (images / "counting").mkdir(parents=True)
    names = ["image_0_0_0.jpg", "image_0_1_3.jpg", "image_1_4_9.jpg"]
    for i, name in enumerate(names):
        (images / "counting" / name).write_bytes(jpeg_bytes(i))
    result = run_import(small_tia2, "--images", images)
    assert result["created"]["files_attached"] == 3
    assert result["categories"]["counting"]["images_with_file"] == 3
    assert result["categories"]["composition"]["images_with_file"] == 0
    attached = Image.objects.exclude(file="").get(source_name="image_1_4_9.jpg", prompt__category="counting")
    # Stored re-encoded from its pixels (metadata stripped), and the row describes the stored file.
    stored = Path(media_root, attached.file.name).read_bytes()
    assert attached.sha256 == hashlib.sha256(stored).hexdigest()
    assert (attached.width, attached.height, attached.size_bytes) == (24, 16, len(stored))
    assert PILImage.open(io.BytesIO(stored)).getpixel((5, 5)) == pytest.approx((2, 40, 90), abs=4)
    assert Image.objects.filter(file="").count() == 200 - 3
    # A later run with one more file attaches just that one, and creates no row.
    (images / "counting" / "image_1_0_0.jpg").write_bytes(jpeg_bytes(7))
    again = run_import(small_tia2, "--images", images)
    assert again["created"] == {"datasets": 0, "prompts": 0, "images": 0, "labels": 0,
                                "contrastive_sets": 0, "files_attached": 1}
    assert Image.objects.exclude(file="").count() == 4


def rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def first_key(path: Path) -> str:
    return next(iter(json.loads(path.read_text())))


def truncate(path: Path) -> None:
    path.write_text(path.read_text()[:500])


def unknown_label(path: Path) -> None:
    rewrite_json(path, lambda d: d[first_key(path)]["human_labels"].__setitem__(1, 2))


def missing_caption(path: Path) -> None:
    rewrite_json(path, lambda d: d[first_key(path)].pop("caption"))


BAD_LABELS = {
    "truncated JSON": (truncate, ["invalid JSON", "line 1"]),
    "unknown label value": (unknown_label, ["human_labels[1]", "image_0_0_0.jpg", "2"]),
    "missing caption": (missing_caption, ["image_0_0_0.jpg", "missing 'caption'"]),
}


@pytest.mark.parametrize("case", BAD_LABELS)
def test_bad_label_file_names_file_and_key_and_writes_nothing(case, small_tia2, tmp_path, media_root):
    call_command("import_tia2", str(small_tia2), stdout=io.StringIO())  # the database is not empty
    edit, expected = BAD_LABELS[case]
    bad = small_tia2 / "human_annotations/human_labels_counting.json"
    edit(bad)
    # Another category, valid and new, must not be written either.
    (small_tia2 / "human_annotations/human_labels_extra.json").write_text(
        json.dumps({"image_0_0_0.jpg": {"image": "image_0_0_0.jpg", "caption": "a cat", "human_labels": [1, 1, 0]}})
    )
    before = db_state()
    with pytest.raises(CommandError) as err:
        call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    message = str(err.value)
    assert str(bad) in message
    for fragment in expected:
        assert fragment in message
    assert db_state() == before


def test_prompt_set_for_unknown_prompt_names_file_and_prompt(small_tia2):
    sets = small_tia2 / "prompts/prompt_set_composition.json"
    rewrite_json(sets, lambda d: d.__setitem__("a realistic photo of a unicorn", ["a photo of a horse"]))
    with pytest.raises(CommandError) as err:
        call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    assert str(sets) in str(err.value) and "a realistic photo of a unicorn" in str(err.value)
    assert all(not m.objects.exists() for m in MODELS)


@pytest.mark.parametrize("content", [b"not an image at all", jpeg_bytes(3)[:-200]], ids=["not-image", "truncated"])
def test_unreadable_image_file_names_the_file_and_leaves_no_trace(content, small_tia2, tmp_path, media_root):
    images = tmp_path / "images"
    (images / "counting").mkdir(parents=True)
    (images / "counting" / "image_0_0_0.jpg").write_bytes(jpeg_bytes(1))
    bad = images / "counting" / "image_0_0_1.jpg"
    bad.write_bytes(content)
    with pytest.raises(CommandError) as err:
        call_command("import_tia2", str(small_tia2), "--images", str(images), stdout=io.StringIO())
    assert str(bad) in str(err.value)
    assert all(not m.objects.exists() for m in MODELS)
    assert not any(p.is_file() for p in media_root.rglob("*"))


def test_label_that_changed_since_the_last_import_is_refused(small_tia2):
    call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    before = db_state()
    path = small_tia2 / "human_annotations/human_labels_counting.json"
    rewrite_json(path, lambda d: d["image_0_0_0.jpg"].__setitem__(
        "human_labels", [1 - v if v >= 0 else 1 for v in d["image_0_0_0.jpg"]["human_labels"]]))
    with pytest.raises(CommandError) as err:
        call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    assert "image_0_0_0.jpg" in str(err.value) and "in the database" in str(err.value)
    assert db_state() == before


def test_changed_contrastive_prompts_become_a_new_version(small_tia2):
    call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    sets = small_tia2 / "prompts/prompt_set_counting.json"
    prompt = first_key(sets)
    rewrite_json(sets, lambda d: d[prompt].append("a realistic photo of nine airplanes"))
    result = run_import(small_tia2)
    assert result["created"]["contrastive_sets"] == 1
    versions = ContrastivePromptSet.objects.filter(prompt__text=prompt)
    assert versions.count() == 2
    assert {len(v.texts) for v in versions} == {2, 3}


def test_missing_image_folder_is_a_clear_error(small_tia2, tmp_path):
    with pytest.raises(CommandError, match="image folder does not exist"):
        call_command("import_tia2", str(small_tia2), "--images", str(tmp_path / "nope"), stdout=io.StringIO())


def test_folders_outside_the_allowed_input_roots_are_refused(small_tia2, tmp_path, settings):
    settings.CALIBRA_ALLOWED_INPUT_ROOTS = [str(tmp_path / "datasets")]
    with pytest.raises(CommandError, match="outside the allowed input roots"):
        call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    settings.CALIBRA_ALLOWED_INPUT_ROOTS = [str(tmp_path)]
    with pytest.raises(CommandError, match="image folder .* outside"):
        call_command("import_tia2", str(small_tia2), "--images", "/etc", stdout=io.StringIO())
    assert not Dataset.objects.exists()
    call_command("import_tia2", str(small_tia2), stdout=io.StringIO())
    assert Dataset.objects.count() == 2
