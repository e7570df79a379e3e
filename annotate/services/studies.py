"""Studies: creation from checkpoints or imported images, lifecycle, membership."""
from __future__ import annotations

import itertools
import random
import secrets
from collections import defaultdict
from typing import NamedTuple

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from annotate.audit import audit
from annotate.models import Assignment, Checkpoint, Dataset, Image, Study, StudyItem, StudyMembership

PAIRWISE_QUESTION = "Which image matches the description better?"
RATING_QUESTION = "Does the image match the description?"
LIKERT_QUESTION = "How well does the image match the description?"


class StudyError(ValueError):
    """A study cannot be made or changed as asked; the message says why."""


class NothingToCompare(StudyError):
    """Every pair a pairwise study would hold shows one image twice."""


class _Img(NamedTuple):
    id: int
    checkpoint_id: int
    prompt_id: int
    seed: int
    index: int
    metadata: dict
    file: str
    sha256: str

    def same_as(self, other: _Img) -> bool:
        """The same picture: one stored file, or the same bytes (a best-of-n pick, a rerun)."""
        return self.file == other.file or bool(self.sha256) and self.sha256 == other.sha256


def image_truth(image, positive_labels: int | None = None) -> bool | None:
    """Whether an image is known to match its prompt: the generator's ground truth, or
    unanimous imported labels (3 of 3 aligned, or none). None when unknown."""
    if "matches_prompt" in image.metadata:
        return bool(image.metadata["matches_prompt"])
    if positive_labels is not None and image.n_labels == 3:
        if positive_labels == 3:
            return True
        if positive_labels == 0:
            return False
    return None


# What a study's settings may be, wherever they are set (services, API, admin add and change).
SETTING_BOUNDS = {"redundancy": (1, 100), "gold_share": (0.0, 1.0), "gold_min_accuracy": (0.0, 1.0),
                  "gold_min_answers": (1, 1000), "lease_seconds": (10, 24 * 3600),
                  "items_per_annotator": (1, 2**31 - 1), "max_open_leases": (1, 20)}


# A crowd worker's completion code pays for a quota of answers; without one, a worker who
# skipped every item but one would have finished.
CROWD_LINK_NEEDS_QUOTA = ("items_per_annotator: a study with a crowd link needs the number of items each "
                          "worker answers (the work their completion code pays for)")


def study_settings_check(fields: dict) -> None:
    """StudyError naming the first setting out of its bounds (None is "no limit" where allowed)."""
    for name, (low, high) in SETTING_BOUNDS.items():
        value = fields.get(name)
        if value is not None and not low <= value <= high:
            raise StudyError(f"{name}: must be from {low:g} to {high:g}, not {value}")
    if fields.get("crowd_link") and fields.get("items_per_annotator") is None:
        raise StudyError(CROWD_LINK_NEEDS_QUOTA)


def _study_fields(kind: str, fields: dict) -> dict:
    study_settings_check(fields)
    question = fields.pop("question", "") or {
        Study.Kind.PAIRWISE: PAIRWISE_QUESTION,
        Study.Kind.RATING: LIKERT_QUESTION if fields.get("rating_scale") == Study.RatingScale.LIKERT5
        else RATING_QUESTION,
    }[kind]
    return {**fields, "kind": kind, "question": question,
            "completion_code": fields.get("completion_code") or secrets.token_hex(4).upper()}


def _choose_gold(items: list[StudyItem], answers: dict[int, str], share: float, rng: random.Random) -> None:
    """Mark ``share`` of the items as gold, among those whose answer is known."""
    wanted = round(share * len(items))
    known = [i for i, _ in enumerate(items) if answers.get(i)]
    for i in rng.sample(known, min(wanted, len(known))):
        items[i].is_gold = True
        items[i].gold_answer = answers[i]


@transaction.atomic
def study_create_pairwise(
    *, name: str, dataset: Dataset, checkpoints: list[Checkpoint], pairing: str = "matched",
    gold_share: float = 0.0, seed: int = 0, created_by=None, **fields,
) -> Study:
    """Side-by-side items for every pair of checkpoints and every prompt of the dataset.

    ``pairing="matched"`` pairs images with the same seed and index; ``"random"`` draws one
    image of each checkpoint per prompt. Which checkpoint is image A is drawn per item, and
    the side A is shown on is drawn again for every lease.

    A pair that shows one picture twice (two checkpoints that made the same image, such as
    raw and TextNorm best-of-n picks that agree) is left out: it asks annotators for nothing
    and would only add ties. ``study.identical_pairs`` says how many were left out.
    """
    checkpoints = list(dict.fromkeys(checkpoints))
    if len(checkpoints) < 2:
        raise StudyError("a pairwise study needs two or more checkpoints")
    if pairing not in ("matched", "random"):
        raise StudyError("pairing must be 'matched' or 'random'")
    rng = random.Random(seed)
    images: dict[tuple[int, int], list[_Img]] = defaultdict(list)  # (checkpoint, prompt) -> images
    for row in (Image.objects.filter(prompt__dataset=dataset, checkpoint__in=checkpoints).exclude(file="")
                .order_by("prompt_id", "seed", "index")
                .values_list("id", "checkpoint_id", "prompt_id", "seed", "index", "metadata", "file", "sha256")):
        image = _Img(*row)
        images[(image.checkpoint_id, image.prompt_id)].append(image)
    study = Study.objects.create(**_study_fields(Study.Kind.PAIRWISE, dict(
        name=name, dataset=dataset, gold_share=gold_share, created_by=created_by, **fields)))
    study.checkpoints.set(checkpoints)
    items, answers, identical = [], {}, 0
    for first, second in itertools.combinations(checkpoints, 2):
        for prompt_id in dataset.prompts.order_by("source_index").values_list("id", flat=True):
            left, right = images.get((first.id, prompt_id), []), images.get((second.id, prompt_id), [])
            if pairing == "matched":
                by_key = {(i.seed, i.index): i for i in right}
                pairs = [(i, by_key[(i.seed, i.index)]) for i in left if (i.seed, i.index) in by_key]
            else:
                pairs = [(rng.choice(left), rng.choice(right))] if left and right else []
            for a, b in pairs:
                if a.same_as(b):
                    identical += 1
                    continue
                if rng.random() < 0.5:
                    a, b = b, a
                truth_a, truth_b = image_truth(a), image_truth(b)
                if truth_a is not None and truth_b is not None and truth_a != truth_b:
                    answers[len(items)] = "a" if truth_a else "b"
                items.append(StudyItem(study=study, prompt_id=prompt_id, image_a_id=a.id, image_b_id=b.id))
    if not items and identical:
        raise NothingToCompare(f"every pair of images shows the same picture twice ({identical} pairs): "
                               "the checkpoints made the same images; there is nothing to compare")
    if not items:
        raise StudyError(f"the checkpoints have no images with files for the prompts of {dataset.name}")
    study.identical_pairs = identical
    return _study_items_save(study, items, answers, gold_share, rng, created_by)


def _study_items_save(study: Study, items: list[StudyItem], answers: dict[int, str], gold_share: float,
                      rng: random.Random, created_by) -> Study:
    _choose_gold(items, answers, gold_share, rng)
    StudyItem.objects.bulk_create(items, batch_size=2000)
    study.item_count = len(items)
    study.save(update_fields=["item_count"])
    audit(created_by, "study.create", study, kind=study.kind, dataset=study.dataset_id,
          checkpoints=sorted(c.pk for c in study.checkpoints.all()),
          **({"identical_pairs_left_out": study.identical_pairs} if getattr(study, "identical_pairs", 0) else {}))
    return study


@transaction.atomic
def study_create_rating(
    *, name: str, dataset: Dataset, checkpoints: list[Checkpoint] | None = None,
    gold_share: float = 0.0, seed: int = 0, created_by=None, **fields,
) -> Study:
    """One item per image of the dataset that has a file: imported images (such as TIA2)
    when no checkpoint is given, otherwise the given checkpoints' images."""
    rng = random.Random(seed)
    images: QuerySet[Image] = Image.objects.filter(prompt__dataset=dataset).exclude(file="")
    images = images.filter(checkpoint__in=checkpoints) if checkpoints else images.filter(checkpoint__isnull=True)
    images = images.annotate(
        n_labels=Count("human_labels"), n_positive=Count("human_labels", filter=Q(human_labels__value=1)),
    ).order_by("prompt_id", "checkpoint_id", "seed", "index")
    study = Study.objects.create(**_study_fields(Study.Kind.RATING, dict(
        name=name, dataset=dataset, gold_share=gold_share, created_by=created_by, **fields)))
    if checkpoints:
        study.checkpoints.set(checkpoints)
    items, answers = [], {}
    for image in images:
        truth = image_truth(image, image.n_positive)
        if truth is not None:
            answers[len(items)] = "aligned" if truth else "not_aligned"
        items.append(StudyItem(study=study, prompt_id=image.prompt_id, image_a=image))
    if not items:
        raise StudyError(f"{dataset.name} has no images with files to rate")
    return _study_items_save(study, items, answers, gold_share, rng, created_by)


@transaction.atomic
def study_open(*, study: Study) -> Study:
    if study.status == Study.Status.OPEN:
        return study
    if not study.items.exists():
        raise StudyError("a study without items cannot be opened")
    study.status, study.opened_at, study.closed_at = Study.Status.OPEN, timezone.now(), None
    study.save(update_fields=["status", "opened_at", "closed_at"])
    audit(None, "study.open", study)
    return study


@transaction.atomic
def study_close(*, study: Study) -> Study:
    if study.status == Study.Status.DRAFT:
        # Closing a draft would let "reopen" open it without its opening (no opened_at).
        raise StudyError("a draft cannot be closed: open it first, or leave it as a draft")
    study.status, study.closed_at = Study.Status.CLOSED, timezone.now()
    study.save(update_fields=["status", "closed_at"])
    audit(None, "study.close", study)
    return study


@transaction.atomic
def study_reopen(*, study: Study) -> Study:
    """A closed study open again (closed_at cleared, opened_at kept); an open one is left as it is."""
    if study.status == Study.Status.OPEN:
        return study
    if study.status != Study.Status.CLOSED:
        raise StudyError("only a closed study can be reopened; a draft is opened")
    if not study.items.exists():
        raise StudyError("a study without items cannot be opened")
    study.status, study.closed_at = Study.Status.OPEN, None
    study.save(update_fields=["status", "closed_at"])
    audit(None, "study.reopen", study)
    return study


PAUSED_REASON_MAX = StudyMembership._meta.get_field("paused_reason").max_length


@transaction.atomic
def membership_pause(*, membership: StudyMembership, reason: str = "") -> StudyMembership:
    """Stop an annotator getting items in one study (the engine refuses a paused member new
    leases and answers). The leases they hold are released, so their slots go back to the
    items now rather than when they lapse."""
    reason = reason.strip()
    if len(reason) > PAUSED_REASON_MAX:
        raise StudyError(f"the reason must be at most {PAUSED_REASON_MAX} characters")
    StudyMembership.objects.filter(pk=membership.pk).update(is_paused=True, paused_reason=reason)
    # The items and the leases locked together, as the lapsed-lease release does, so that an
    # answer being stored under one of the leases finishes first or sees it released.
    items = list(StudyItem.objects.select_for_update()
                 .filter(study_id=membership.study_id, assignments__annotator_id=membership.annotator_id,
                         assignments__state=Assignment.State.ACTIVE).values_list("pk", flat=True))
    if items:
        Assignment.objects.filter(item_id__in=items, annotator_id=membership.annotator_id,
                                  state=Assignment.State.ACTIVE).update(state=Assignment.State.RELEASED)
        # One active lease per annotator and item: each item gives back one slot.
        StudyItem.objects.filter(pk__in=items).update(taken=F("taken") - 1)
    membership.is_paused, membership.paused_reason = True, reason
    audit(None, "membership.pause", membership, study=membership.study_id, annotator=membership.annotator_id,
          username=membership.annotator.username, reason=reason, leases_released=len(items))
    return membership


@transaction.atomic
def membership_resume(*, membership: StudyMembership) -> StudyMembership:
    """Let a paused annotator get items again; the reason is cleared. A pause for low gold
    accuracy comes back at their next gold answer if the accuracy is still below the bar,
    and the judgments it flagged stay flagged (the report decides whether to count them)."""
    StudyMembership.objects.filter(pk=membership.pk).update(is_paused=False, paused_reason="")
    membership.is_paused, membership.paused_reason = False, ""
    audit(None, "membership.resume", membership, study=membership.study_id, annotator=membership.annotator_id,
          username=membership.annotator.username)
    return membership


@transaction.atomic
def study_add_members(*, study: Study, usernames: list[str]) -> list[StudyMembership]:
    users = {u.username: u for u in get_user_model().objects.filter(username__in=usernames)}
    unknown = sorted(set(usernames) - set(users))
    if unknown:
        raise StudyError(f"unknown usernames: {', '.join(unknown)}")
    memberships, added = [], []
    for user in users.values():
        membership, created = StudyMembership.objects.get_or_create(study=study, annotator=user)
        memberships.append(membership)
        if created:
            added.append(user.username)
    if added:
        audit(None, "study.members_add", study, usernames=sorted(added))
    return memberships


@transaction.atomic
def study_crowd_link_set(*, study: Study, enabled: bool) -> Study:
    """Let crowd workers join by the study's link, or stop them (those who joined stay members)."""
    if enabled and study.items_per_annotator is None:
        raise StudyError(CROWD_LINK_NEEDS_QUOTA)
    study.crowd_link = bool(enabled)
    study.save(update_fields=["crowd_link"])
    audit(None, "study.crowd_link", study, enabled=study.crowd_link)
    return study

