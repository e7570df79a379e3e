"""Reads. Views, APIs and commands ask here instead of building querysets themselves."""
import functools
import hashlib
import hmac

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.urls import get_script_prefix, reverse

from annotate.models import (
    Assignment, Checkpoint, ContrastivePromptSet, Dataset, GenerationJob, Image, Judgment, Prompt, Report, ScoringJob,
    Study, StudyItem, StudyMembership,
)


def count_of(rows, fk: str) -> Coalesce:
    """How many of ``rows`` (a model or a queryset) point at the outer row by ``fk``: a
    correlated subquery, which the database evaluates for the rows read (one index range
    each), with no join or GROUP BY over the whole table and no query per row."""
    queryset = rows.objects.all() if isinstance(rows, type) else rows
    counted = (queryset.filter(**{fk: OuterRef("pk")}).order_by().values(fk)
               .annotate(n=Count("*")).values("n"))
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def datasets_with_counts() -> QuerySet[Dataset]:
    """Every dataset with its numbers of prompts and images: one query, whatever their number."""
    return Dataset.objects.annotate(
        prompt_count=count_of(Prompt, "dataset"),
        image_count=count_of(Image, "prompt__dataset"),
        image_file_count=count_of(Image.objects.exclude(file=""), "prompt__dataset"),
    ).order_by("name")


def prompt_sets_by_dataset() -> dict[int, list[dict]]:
    """The contrastive prompt sets (TextNorm's) there are, per dataset: source, version and how
    many of its prompts have one. One query for all datasets."""
    rows = (ContrastivePromptSet.objects.order_by().values("prompt__dataset_id", "source", "version")
            .annotate(prompts=Count("prompt_id", distinct=True)).order_by("prompt__dataset_id", "source", "version"))
    out: dict[int, list[dict]] = {}
    for row in rows:
        out.setdefault(row["prompt__dataset_id"], []).append(
            {"source": row["source"], "version": row["version"], "prompts": row["prompts"]})
    return out


def dataset_list_with_counts() -> QuerySet[Dataset]:
    return Dataset.objects.annotate(n_prompts=Count("prompts", distinct=True)).order_by("name")


def study_list_with_reports(*, limit: int = 50, reports_per_study: int = 3) -> list[Study]:
    """The latest studies, each with ``recent_reports`` (its last few reports, one query for
    all) and ``judgments`` (the sum of its items' counts: one grouped query over the items of
    these studies only, through the index that leads with the study)."""
    studies = list(Study.objects.order_by("-created_at")[:limit])
    judged = dict(StudyItem.objects.filter(study__in=studies).values("study").annotate(n=Sum("judgment_count"))
                  .values_list("study", "n"))
    for study in studies:
        study.judgments = judged.get(study.pk) or 0
        study.target = study.item_count * study.redundancy
    recent: dict[int, list] = {}
    for report in Report.objects.filter(study__in=studies).order_by("-created_at"):
        if len(recent.setdefault(report.study_id, [])) < reports_per_study:
            recent[report.study_id].append(report)
    for study in studies:
        study.recent_reports = recent.get(study.pk, [])
    return studies


def generation_job_list(*, limit: int = 50) -> QuerySet[GenerationJob]:
    return GenerationJob.objects.select_related("checkpoint", "dataset").order_by("-created_at")[:limit]


def scoring_job_list(*, limit: int = 50) -> QuerySet[ScoringJob]:
    return ScoringJob.objects.select_related("reward_model", "checkpoint", "dataset").order_by("-created_at")[:limit]


def checkpoint_list(*, limit: int = 200) -> QuerySet[Checkpoint]:
    return Checkpoint.objects.select_related("derived_from").order_by("name")[:limit]


def dataset_prompts_with_images(*, dataset: Dataset, limit: int = 60) -> list[Prompt]:
    prompts = list(Prompt.objects.filter(dataset=dataset).order_by("source_index")[:limit])
    images = (
        Image.objects.filter(prompt__in=prompts)
        .select_related("checkpoint")
        .order_by("checkpoint__name", "seed", "index")
    )
    by_prompt: dict[int, list[Image]] = {}
    for image in images:
        by_prompt.setdefault(image.prompt_id, []).append(image)
    for prompt in prompts:
        prompt.image_list = by_prompt.get(prompt.id, [])
    return prompts


def annotator_open_memberships(*, annotator) -> QuerySet[StudyMembership]:
    """The annotator's memberships of open studies, with the studies (progress counts included)."""
    return (StudyMembership.objects.filter(annotator=annotator, study__status=Study.Status.OPEN)
            .select_related("study").order_by("study__name"))


def annotator_study_get(*, annotator, public_id) -> Study | None:
    """The study if the user is a member of it: non-members cannot tell it exists."""
    try:
        return Study.objects.filter(public_id=public_id, memberships__annotator=annotator).first()
    except (ValueError, ValidationError):
        return None


def annotator_progress(*, study: Study, annotator) -> dict:
    from annotate.services.annotation import progress_of

    membership = StudyMembership.objects.select_related("study").get(study=study, annotator=annotator)
    return progress_of(membership)


_STUDY_MARK, _ITEM_MARK = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"


@functools.lru_cache(maxsize=8)
def _image_url_template(script_prefix: str) -> str:
    return reverse("annotate-image", args=[_STUDY_MARK, _ITEM_MARK, "SLOT"])


def _image_url(study_public_id, item_public_id, slot: str, lease_id) -> str:
    """reverse("annotate-image", ...) by substitution into the reversed pattern, reversed once
    per script prefix (a hot path: twice per next item), with the lease's token (below)."""
    template = _image_url_template(get_script_prefix())
    return (template.replace(_STUDY_MARK, str(study_public_id)).replace(_ITEM_MARK, str(item_public_id))
            .replace("SLOT", slot)) + "?v=" + lease_image_token(lease_id)


@functools.lru_cache(maxsize=4)
def _lease_token_key(secret: str) -> bytes:
    return hashlib.sha256(b"calibra annotator image lease\0" + secret.encode()).digest()


def lease_image_token(lease_id) -> str:
    """An opaque token for a lease in its images' URLs: an item's left and right are drawn
    anew for each lease, so the URL of a slot names the lease, and a browser's cached image of
    an earlier lease (the other side, perhaps another annotator's on a shared computer) is
    never shown for this one. Keyed with SECRET_KEY; it tells an annotator nothing."""
    key = _lease_token_key(settings.SECRET_KEY)
    return hashlib.blake2b(str(lease_id).encode(), key=key, digest_size=9).hexdigest()


def annotator_item_payload(*, lease: Assignment, study: Study) -> dict:
    """What the annotator's browser receives for one item: no image, checkpoint or gold identity."""
    item = lease.item
    slots = ["left", "right"] if study.kind == Study.Kind.PAIRWISE else ["single"]
    return {
        "item": str(item.public_id),
        # The display this payload makes (its sides): answers name it, and are stored against it.
        "lease": lease.pk,
        "kind": study.kind,
        "rating_scale": study.rating_scale,
        "prompt": item.prompt.text,
        "question": study.question,
        "images": [{"slot": slot, "url": _image_url(study.public_id, item.public_id, slot, lease.pk)}
                   for slot in slots],
        "expires_at": lease.expires_at.isoformat(),
    }


def annotator_image_for_slot(*, study: Study, annotator, item_public_id, slot: str,
                             token: str | None = None) -> Image | None:
    """The image behind a slot of an item the annotator holds or held a lease on: as the lease
    named by ``token`` placed it (None when no lease of theirs has that token), or without a
    token as their latest lease does."""
    try:
        item = StudyItem.objects.select_related("image_a", "image_b").get(study=study, public_id=item_public_id)
    except (StudyItem.DoesNotExist, ValueError, ValidationError):
        return None
    leases = Assignment.objects.filter(item=item, annotator=annotator).order_by("-leased_at", "-pk")
    if token is None:
        lease = leases.only("a_on_left").first()
    else:
        lease = next((lease for lease in leases.only("a_on_left")
                      if hmac.compare_digest(lease_image_token(lease.pk), token)), None)
    if lease is None:
        return None
    if slot == "single" and item.image_b_id is None:
        return item.image_a
    if slot in ("left", "right") and item.image_b_id is not None:
        return item.image_a if (slot == "left") == lease.a_on_left else item.image_b
    return None


def study_judgments_export(*, study: Study) -> QuerySet[Judgment]:
    return (Judgment.objects.filter(item__study=study)
            .select_related("item__prompt", "item__image_a__checkpoint", "item__image_b__checkpoint", "annotator")
            .order_by("pk"))
