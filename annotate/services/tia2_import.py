"""Import of the official TIA2 release: prompts, images, human labels, contrastive sets.

Three phases, so that bad input never leaves anything half written:
1. parse and validate every JSON file (pure Python; errors name the file and the key);
2. when an image folder is given, read and check every image file it holds;
3. write everything in one transaction, creating only what is not there yet.
Image files are re-encoded from their pixels (no metadata reaches annotators:
annotate/media.py) and stored under random names before the transaction; if the
transaction fails the files this run added are deleted again.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count
from PIL import Image as PILImage

from annotate.media import CleanImage, image_file_clean, random_image_name
from annotate.models import ContrastivePromptSet, Dataset, HumanLabel, Image, Prompt
from annotate.services.paths import PathNotAllowed, input_path_check

IMAGE_NAME = re.compile(r"image_(\d+)_(\d+)_(\d+)\.jpg")
LABEL_VALUES = (1, 0, -1)
BATCH = 5000


class Tia2ImportError(Exception):
    """Bad input. The message names the file and the key."""


@dataclass
class ParsedImage:
    name: str
    prompt_index: int
    seed: int
    index: int
    labels: tuple[int, ...]


@dataclass
class ParsedCategory:
    category: str
    labels_path: Path
    prompts: dict[int, str] = field(default_factory=dict)
    images: list[ParsedImage] = field(default_factory=list)
    contrastive: dict[int, list[str]] = field(default_factory=dict)
    contrastive_listed: int = 0
    files: dict[str, Path] = field(default_factory=dict)  # checked; re-encoded only when stored

    @property
    def dataset_name(self) -> str:
        return f"tia2-{self.category}"


def _load_json(path: Path):
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise Tia2ImportError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise Tia2ImportError(f"{path}: cannot read: {exc}") from exc


def _parse_labels(path: Path, category: str) -> ParsedCategory:
    data = _load_json(path)
    if not isinstance(data, dict):
        raise Tia2ImportError(f"{path}: expected an object keyed by image file name")
    parsed = ParsedCategory(category=category, labels_path=path)
    for key, entry in data.items():
        where = f"{path}: key {key!r}"
        match = IMAGE_NAME.fullmatch(key)
        if not match:
            raise Tia2ImportError(f"{where}: image name must look like image_<prompt>_<seed>_<index>.jpg")
        if not isinstance(entry, dict):
            raise Tia2ImportError(f"{where}: expected an object")
        if entry.get("image", key) != key:
            raise Tia2ImportError(f"{where}: 'image' is {entry.get('image')!r}, not the key")
        caption = entry.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise Tia2ImportError(f"{where}: missing 'caption'")
        labels = entry.get("human_labels")
        if not isinstance(labels, list) or len(labels) != 3:
            raise Tia2ImportError(f"{where}: 'human_labels' must be a list of three labels")
        for slot, value in enumerate(labels):
            if type(value) is not int or value not in LABEL_VALUES:
                raise Tia2ImportError(
                    f"{where}: human_labels[{slot}] is {value!r}, not a known label value (1, 0 or -1)"
                )
        prompt_index, seed, index = (int(g) for g in match.groups())
        known = parsed.prompts.setdefault(prompt_index, caption)
        if known != caption:
            raise Tia2ImportError(
                f"{where}: caption {caption!r} differs from {known!r} of other images of prompt {prompt_index}"
            )
        parsed.images.append(ParsedImage(key, prompt_index, seed, index, tuple(labels)))
    texts = Counter(parsed.prompts.values())
    for text, n in texts.items():
        if n > 1:
            raise Tia2ImportError(f"{path}: caption {text!r} belongs to {n} prompt indices")
    return parsed


def _parse_prompt_sets(path: Path, parsed: ParsedCategory) -> None:
    data = _load_json(path)
    if not isinstance(data, dict):
        raise Tia2ImportError(f"{path}: expected an object keyed by prompt")
    index_of = {text: idx for idx, text in parsed.prompts.items()}
    for prompt, contrastive in data.items():
        where = f"{path}: key {prompt!r}"
        if prompt not in index_of:
            raise Tia2ImportError(f"{where}: unknown prompt (no image in {parsed.labels_path.name} has this caption)")
        if not isinstance(contrastive, list) or not all(isinstance(t, str) and t.strip() for t in contrastive):
            raise Tia2ImportError(f"{where}: expected a list of non-empty prompts")
        parsed.contrastive_listed += len(contrastive)
        # SPEC 2.1: de-duplicated, and never the original prompt itself.
        parsed.contrastive[index_of[prompt]] = [t for t in dict.fromkeys(contrastive) if t != prompt]
    missing = sorted(set(parsed.prompts) - set(parsed.contrastive))
    if missing:  # the release lists a set for every prompt; a gap is a truncated or mixed-up file
        first = parsed.prompts[missing[0]]
        raise Tia2ImportError(f"{path}: {len(missing)} prompt(s) of {parsed.labels_path.name} have no entry "
                              f"(the first: {first!r})")


def _read_image_file(path: Path, *, clean: bool) -> CleanImage | None:
    """The file's pixels re-encoded (``clean``), or only checked: a reduced decode still reads
    the whole stream, so a truncated file fails, without the cost of a full one for every file
    of a release (a rerun stores none of them again)."""
    try:
        if clean:
            return image_file_clean(path)
        with PILImage.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
        return None
    except Exception as exc:  # Pillow raises many types for bad files
        raise Tia2ImportError(f"{path}: cannot read image: {exc}") from exc


def parse_release(root: Path, images_dir: Path | None = None) -> list[ParsedCategory]:
    """Phases 1 and 2: everything read and checked, nothing written."""
    root = Path(root)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise Tia2ImportError(f"{images_dir}: image folder does not exist")
    label_files = sorted((root / "human_annotations").glob("human_labels_*.json"))
    if not label_files:
        raise Tia2ImportError(f"{root / 'human_annotations'}: no human_labels_<category>.json files")
    categories = []
    for labels_path in label_files:
        category = labels_path.stem.removeprefix("human_labels_")
        parsed = _parse_labels(labels_path, category)
        sets_path = root / "prompts" / f"prompt_set_{category}.json"
        if sets_path.exists():
            _parse_prompt_sets(sets_path, parsed)
        if images_dir is not None:
            folder = Path(images_dir) / category
            if folder.is_dir():
                for img in parsed.images:
                    path = folder / img.name
                    if path.is_file():
                        _read_image_file(path, clean=False)
                        parsed.files[img.name] = path
        categories.append(parsed)
    return categories


def _set_version(texts: list[str]) -> str:
    return "tia2-" + hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]


@dataclass
class ImportResult:
    created: Counter = field(default_factory=Counter)
    categories: dict[str, dict] = field(default_factory=dict)

    @property
    def created_anything(self) -> bool:
        return any(self.created.values())


def _write_category(parsed: ParsedCategory, result: ImportResult, saved_files: list[str]) -> None:
    dataset, created = Dataset.objects.get_or_create(
        name=parsed.dataset_name,
        defaults={"source": Dataset.Source.TIA2, "category": parsed.category,
                  "description": f"TIA2 {parsed.category} prompts (Kim et al., ICLR 2024)"},
    )
    result.created["datasets"] += created
    where = str(parsed.labels_path)

    prompts = {p.source_index: p for p in Prompt.objects.filter(dataset=dataset)}
    for idx, prompt in prompts.items():
        if idx in parsed.prompts and prompt.text != parsed.prompts[idx]:
            raise Tia2ImportError(
                f"{where}: prompt {idx} is {parsed.prompts[idx]!r} in the file but "
                f"{prompt.text!r} in the database"
            )
    new_prompts = [
        Prompt(dataset=dataset, text=text, category=parsed.category, source_index=idx)
        for idx, text in sorted(parsed.prompts.items()) if idx not in prompts
    ]
    Prompt.objects.bulk_create(new_prompts, batch_size=BATCH)
    result.created["prompts"] += len(new_prompts)
    if new_prompts:
        prompts = {p.source_index: p for p in Prompt.objects.filter(dataset=dataset)}

    existing = {
        (row["prompt_id"], row["seed"], row["index"]): row
        for row in Image.objects.filter(prompt__dataset=dataset, checkpoint__isnull=True)
        .values("id", "prompt_id", "seed", "index", "file")
    }
    new_images, to_attach = [], []
    for img in parsed.images:
        prompt_id = prompts[img.prompt_index].id
        path = parsed.files.get(img.name)
        row = existing.get((prompt_id, img.seed, img.index))
        file_fields = {}
        if path is not None and (row is None or not row["file"]):
            file = _read_image_file(path, clean=True)
            name = default_storage.save(random_image_name(file.extension), ContentFile(file.content))
            saved_files.append(name)
            file_fields = {"file": name, "sha256": file.sha256, "size_bytes": file.size_bytes,
                           "width": file.width, "height": file.height}
        if row is None:
            new_images.append(Image(prompt_id=prompt_id, seed=img.seed, index=img.index,
                                    source_name=img.name, **file_fields))
        elif file_fields:
            to_attach.append(Image(id=row["id"], **file_fields))
    Image.objects.bulk_create(new_images, batch_size=BATCH)
    Image.objects.bulk_update(to_attach, ["file", "sha256", "size_bytes", "width", "height"], batch_size=BATCH)
    result.created["images"] += len(new_images)
    result.created["files_attached"] += len(to_attach) + sum(1 for i in new_images if i.file)

    image_ids = dict(
        Image.objects.filter(prompt__dataset=dataset, checkpoint__isnull=True).values_list("source_name", "id")
    )
    known_labels = {
        (image_id, slot): value
        for image_id, slot, value in HumanLabel.objects.filter(image__prompt__dataset=dataset)
        .values_list("image_id", "slot", "value")
    }
    new_labels = []
    for img in parsed.images:
        image_id = image_ids[img.name]
        for slot, value in enumerate(img.labels):
            known = known_labels.get((image_id, slot))
            if known is None:
                new_labels.append(HumanLabel(image_id=image_id, slot=slot, value=value, source="tia2"))
            elif known != value:
                raise Tia2ImportError(
                    f"{where}: key {img.name!r}: human_labels[{slot}] is {value} in the file but "
                    f"{known} in the database"
                )
    HumanLabel.objects.bulk_create(new_labels, batch_size=BATCH)
    result.created["labels"] += len(new_labels)

    known_sets = set(
        ContrastivePromptSet.objects.filter(prompt__dataset=dataset, source=ContrastivePromptSet.Source.IMPORTED)
        .values_list("prompt_id", "version")
    )
    sets_file = f"prompts/prompt_set_{parsed.category}.json"
    new_sets = []
    for idx, texts in sorted(parsed.contrastive.items()):
        version = _set_version(texts)
        if (prompts[idx].id, version) not in known_sets:
            new_sets.append(ContrastivePromptSet(
                prompt=prompts[idx], source=ContrastivePromptSet.Source.IMPORTED,
                version=version, generator=sets_file, texts=texts,
            ))
    ContrastivePromptSet.objects.bulk_create(new_sets, batch_size=BATCH)
    result.created["contrastive_sets"] += len(new_sets)

    result.categories[parsed.category] = {
        **dataset_summary(dataset),
        "contrastive_prompts_listed": parsed.contrastive_listed,
    }


def dataset_summary(dataset: Dataset) -> dict:
    """The figures SPEC.md section 1 tabulates, read back from the database."""
    images = Image.objects.filter(prompt__dataset=dataset)
    labels = dict(
        HumanLabel.objects.filter(image__prompt__dataset=dataset)
        .values_list("value").annotate(n=Count("id")).values_list("value", "n")
    )
    majority_positive = (
        HumanLabel.objects.filter(image__prompt__dataset=dataset, value=1)
        .values("image_id").annotate(n=Count("id")).filter(n__gte=2).count()
    )
    n_images = images.count()
    contrastive = ContrastivePromptSet.objects.filter(
        prompt__dataset=dataset, source=ContrastivePromptSet.Source.IMPORTED
    ).values_list("texts", flat=True)
    return {
        "dataset": dataset.name,
        "prompts": dataset.prompts.count(),
        "images": n_images,
        "images_with_file": images.exclude(file="").count(),
        "labels": {str(v): labels.get(v, 0) for v in LABEL_VALUES},
        "majority_positive_images": majority_positive,
        "majority_positive_rate": round(majority_positive / n_images, 4) if n_images else None,
        "contrastive_prompts": sum(len(t) for t in contrastive),
    }


def tia2_import(*, root: Path, images_dir: Path | None = None) -> ImportResult:
    """Import a TIA2 release atomically and idempotently. Raises Tia2ImportError on bad input."""
    try:
        root = input_path_check(root, what="TIA2 folder")
        images_dir = input_path_check(images_dir, what="image folder") if images_dir else None
    except PathNotAllowed as exc:
        raise Tia2ImportError(str(exc)) from exc
    categories = parse_release(root, images_dir)
    result = ImportResult()
    saved_files: list[str] = []
    try:
        with transaction.atomic():
            for parsed in categories:
                _write_category(parsed, result, saved_files)
    except BaseException:
        for name in saved_files:
            default_storage.delete(name)
        raise
    return result
