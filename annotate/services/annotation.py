"""The assignment engine and the annotator's answers.

An annotator asks for the next item and gets a lease on one they have not answered, that
still needs judgments and is not leased to enough others. On PostgreSQL the candidate row
is locked with SKIP LOCKED, so concurrent requests never pick the same item at once and
never over-fill it; on SQLite writers are serialised by the database.

Policy for answers (stated once, relied on by the UI and the API):
- a submission is identified by its client-made id: resending it returns the stored
  judgment and changes nothing;
- one judgment per annotator and item; a second, different answer is refused (409);
- a submission whose lease has expired is accepted while the item still has room
  (judgments + other open leases < redundancy), and refused (409) once it is full: no item
  ever holds more judgments than its redundancy;
- the last judgment can be undone while its lease has not expired.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce, Mod
from django.utils import timezone

from annotate.models import Assignment, Judgment, Skip, Study, StudyItem, StudyMembership


class AnnotationError(Exception):
    status = 400
    code = "invalid"


class NotAMember(AnnotationError):
    status, code = 403, "not_a_member"


class AnnotatorPaused(AnnotationError):
    status, code = 403, "paused"


class StudyNotOpen(AnnotationError):
    status, code = 409, "study_not_open"


class ItemUnavailable(AnnotationError):
    status, code = 409, "item_unavailable"


class InvalidAnswer(AnnotationError):
    status, code = 400, "invalid_answer"


PAIRWISE_CHOICES = {"left", "right", "tie"}
TIE_REASONS = {"", "both_good", "both_bad"}


def membership_get(*, study: Study, annotator) -> StudyMembership:
    try:
        return StudyMembership.objects.get(study=study, annotator=annotator)
    except StudyMembership.DoesNotExist:
        raise NotAMember("you are not a member of this study") from None


def _open_leases(now: datetime, **filters) -> Subquery:
    leases = (Assignment.objects.filter(item=OuterRef("pk"), state=Assignment.State.ACTIVE,
                                        expires_at__gt=now, **filters)
              .order_by().values("item").annotate(n=Count("pk")).values("n"))
    return Coalesce(Subquery(leases, output_field=IntegerField()), Value(0))


def answered_count(*, study: Study, annotator) -> int:
    return (Judgment.objects.filter(item__study=study, annotator=annotator).count()
            + Skip.objects.filter(item__study=study, annotator=annotator).count())


def assignment_next(*, study: Study, annotator, exclude: list[uuid.UUID] = (), now: datetime | None = None
                    ) -> Assignment | None:
    """The annotator's lease on the next item, or None when nothing is left for them.

    An open lease of theirs is returned again (a reloaded page resumes where it was);
    ``exclude`` names items the client already holds, to lease one more for preloading.
    """
    now = now or timezone.now()
    if study.status != Study.Status.OPEN:
        raise StudyNotOpen("this study is not open")
    membership = membership_get(study=study, annotator=annotator)
    if membership.is_paused:
        raise AnnotatorPaused(membership.paused_reason or "you are paused in this study")
    with transaction.atomic():
        mine = Assignment.objects.filter(annotator=annotator, item__study=study, state=Assignment.State.ACTIVE)
        mine.filter(expires_at__lte=now).update(state=Assignment.State.EXPIRED)
        held = mine.filter(expires_at__gt=now).exclude(item__public_id__in=list(exclude)).order_by("leased_at")
        if (lease := held.select_related("item").first()) is not None:
            return lease
        if study.items_per_annotator is not None:
            in_hand = mine.filter(expires_at__gt=now).count()
            if answered_count(study=study, annotator=annotator) + in_hand >= study.items_per_annotator:
                return None
        candidates = (
            StudyItem.objects.filter(study=study)
            .alias(
                judged=Exists(Judgment.objects.filter(item=OuterRef("pk"), annotator=annotator)),
                skipped=Exists(Skip.objects.filter(item=OuterRef("pk"), annotator=annotator)),
                holding=Exists(Assignment.objects.filter(item=OuterRef("pk"), annotator=annotator,
                                                         state=Assignment.State.ACTIVE, expires_at__gt=now)),
                taken=F("judgment_count") + _open_leases(now),
                # A fixed shuffle per annotator: everyone sees the items in a different order.
                shuffle=Mod(F("id") * 2654435761 + annotator.pk * 40503, 1000003),
            )
            .filter(judged=False, skipped=False, holding=False, taken__lt=study.redundancy)
        )
        if study.item_order == Study.ItemOrder.CLOSEST_TO_COMPLETION:
            candidates = candidates.order_by("-judgment_count", "shuffle")
        else:
            candidates = candidates.order_by("shuffle")
        # The lock keeps others off the row from here on, but the count above was read before
        # a lease that another request committed just before we locked: count again, afresh.
        passed_over: list[int] = []
        while True:
            item = candidates.exclude(pk__in=passed_over).select_for_update(skip_locked=True).first()
            if item is None:
                return None
            open_leases = Assignment.objects.filter(item=item, state=Assignment.State.ACTIVE,
                                                    expires_at__gt=now).count()
            if item.judgment_count + open_leases < study.redundancy:
                break
            passed_over.append(item.pk)
        return Assignment.objects.create(
            item=item, annotator=annotator, leased_at=now,
            expires_at=now + timedelta(seconds=study.lease_seconds),
            a_on_left=random.random() < 0.5 if study.kind == Study.Kind.PAIRWISE else None,
        )


def _locked_item(study: Study, item_public_id) -> StudyItem:
    try:
        return StudyItem.objects.select_for_update().get(study=study, public_id=item_public_id)
    except (StudyItem.DoesNotExist, ValueError, TypeError):
        raise ItemUnavailable("no such item in this study") from None


def _usable_lease(study: Study, item: StudyItem, annotator, now: datetime) -> Assignment:
    """The annotator's lease that this answer settles; an expired one only while the item has room."""
    lease = (Assignment.objects.filter(item=item, annotator=annotator)
             .exclude(state__in=[Assignment.State.ANSWERED, Assignment.State.SKIPPED])
             .order_by("-leased_at").first())
    if lease is None:
        raise ItemUnavailable("this item was not assigned to you")
    if lease.state != Assignment.State.ACTIVE or lease.expires_at <= now:
        others = Assignment.objects.filter(item=item, state=Assignment.State.ACTIVE, expires_at__gt=now
                                           ).exclude(annotator=annotator).count()
        if item.judgment_count + others >= study.redundancy:
            raise ItemUnavailable("your lease on this item expired and the item has been completed by others")
    return lease


def _validate_answer(study: Study, choice: str, score: int | None, reason: str) -> None:
    if study.kind == Study.Kind.PAIRWISE:
        if choice not in PAIRWISE_CHOICES:
            raise InvalidAnswer("choice must be left, right or tie")
        if reason not in TIE_REASONS or (reason and choice != "tie"):
            raise InvalidAnswer("reason must be empty, both_good or both_bad (ties only)")
    elif study.rating_scale == Study.RatingScale.LIKERT5:
        if choice != Judgment.Choice.SCORE or score not in range(1, 6):
            raise InvalidAnswer("choice must be 'score' with a score from 1 to 5")
    elif choice not in (Judgment.Choice.ALIGNED, Judgment.Choice.NOT_ALIGNED):
        raise InvalidAnswer("choice must be aligned or not_aligned")
    if study.kind != Study.Kind.PAIRWISE and reason:
        raise InvalidAnswer("reason applies to pairwise ties only")


def canonical_answer(judgment: Judgment) -> str:
    """The answer in the item's own terms: a / b / tie for pairs, aligned / not_aligned for ratings."""
    if judgment.choice == "tie":
        return "tie"
    if judgment.choice in ("left", "right"):
        return "a" if (judgment.choice == "left") == judgment.a_on_left else "b"
    if judgment.choice == Judgment.Choice.SCORE:
        return "aligned" if judgment.score >= 4 else "not_aligned" if judgment.score <= 2 else "unsure"
    return judgment.choice


def _record_gold(study: Study, annotator, judgment: Judgment, delta: int = 1) -> None:
    membership = StudyMembership.objects.select_for_update().get(study=study, annotator=annotator)
    membership.gold_answered += delta
    membership.gold_correct += delta * int(bool(judgment.gold_correct))
    if (delta > 0 and not membership.is_paused and membership.gold_answered >= study.gold_min_answers
            and membership.gold_correct / membership.gold_answered < study.gold_min_accuracy):
        membership.is_paused = True
        membership.paused_reason = (
            f"gold accuracy {membership.gold_correct}/{membership.gold_answered} is below "
            f"{study.gold_min_accuracy:.0%}"
        )
        # Flagged, never deleted: the report decides whether to count them.
        Judgment.objects.filter(item__study=study, annotator=annotator).update(
            is_flagged=True, flag_reason="annotator paused: " + membership.paused_reason)
    membership.save()


@dataclass
class Submitted:
    judgment: Judgment
    created: bool


def judgment_submit(*, study: Study, annotator, item_public_id, client_id: uuid.UUID, choice: str,
                    score: int | None = None, reason: str = "", time_spent_ms: int | None = None,
                    now: datetime | None = None) -> Submitted:
    now = now or timezone.now()
    existing = Judgment.objects.filter(annotator=annotator, client_id=client_id).select_related("item").first()
    if existing is not None:
        return _repeat(existing, item_public_id)
    _validate_answer(study, choice, score, reason)
    membership = membership_get(study=study, annotator=annotator)
    if membership.is_paused:
        raise AnnotatorPaused(membership.paused_reason or "you are paused in this study")
    try:
        with transaction.atomic():
            item = _locked_item(study, item_public_id)
            # Re-read under the item's lock: a concurrent retry of the same answer lands here.
            existing = Judgment.objects.filter(annotator=annotator, client_id=client_id).select_related("item").first()
            if existing is not None:
                return _repeat(existing, item_public_id)
            if Judgment.objects.filter(item=item, annotator=annotator).exists():
                raise ItemUnavailable("you already answered this item")
            lease = _usable_lease(study, item, annotator, now)
            judgment = Judgment(
                item=item, annotator=annotator, assignment=lease, client_id=client_id, choice=choice,
                score=score if choice == Judgment.Choice.SCORE else None, reason=reason,
                a_on_left=lease.a_on_left, time_spent_ms=time_spent_ms,
                is_flagged=membership.is_paused,
            )
            if item.is_gold:
                judgment.gold_correct = canonical_answer(judgment) == item.gold_answer
            judgment.save()
            Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.ANSWERED)
            StudyItem.objects.filter(pk=item.pk).update(judgment_count=F("judgment_count") + 1)
            if item.is_gold:
                _record_gold(study, annotator, judgment)
    except IntegrityError:
        # The same client id committed by a concurrent request first.
        existing = Judgment.objects.filter(annotator=annotator, client_id=client_id).select_related("item").first()
        if existing is None:
            raise
        return _repeat(existing, item_public_id)
    return Submitted(judgment, True)


def _repeat(existing: Judgment, item_public_id) -> Submitted:
    if str(existing.item.public_id) != str(item_public_id):
        raise InvalidAnswer("this client_id was already used for another item")
    return Submitted(existing, False)


def skip_submit(*, study: Study, annotator, item_public_id, client_id: uuid.UUID, reason: str,
                note: str = "", now: datetime | None = None) -> tuple[Skip, bool]:
    now = now or timezone.now()
    if reason not in Skip.Reason.values:
        raise InvalidAnswer(f"reason must be one of {', '.join(Skip.Reason.values)}")
    existing = Skip.objects.filter(annotator=annotator, client_id=client_id).first()
    if existing is not None:
        return existing, False
    membership_get(study=study, annotator=annotator)
    with transaction.atomic():
        item = _locked_item(study, item_public_id)
        if (Judgment.objects.filter(item=item, annotator=annotator).exists()
                or Skip.objects.filter(item=item, annotator=annotator).exists()):
            raise ItemUnavailable("you already answered this item")
        lease = (Assignment.objects.filter(item=item, annotator=annotator)
                 .exclude(state__in=[Assignment.State.ANSWERED, Assignment.State.SKIPPED])
                 .order_by("-leased_at").first())
        if lease is None:
            raise ItemUnavailable("this item was not assigned to you")
        skip = Skip.objects.create(item=item, annotator=annotator, assignment=lease, client_id=client_id,
                                   reason=reason, note=note[:300])
        Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.SKIPPED)
    return skip, True


def judgment_undo(*, study: Study, annotator, now: datetime | None = None) -> Assignment:
    """Take back the annotator's last judgment while its lease holds; returns the lease, open again."""
    now = now or timezone.now()
    with transaction.atomic():
        last = (Judgment.objects.filter(item__study=study, annotator=annotator)
                .select_related("assignment", "item").order_by("-created_at", "-pk").first())
        if last is None:
            raise ItemUnavailable("there is nothing to undo")
        lease = last.assignment
        if lease is None or lease.expires_at <= now:
            raise ItemUnavailable("the lease of your last answer has expired; it can no longer be undone")
        StudyItem.objects.filter(pk=last.item_id).update(
            judgment_count=F("judgment_count") - 1)
        if last.item.is_gold:
            _record_gold(study, annotator, last, delta=-1)
        last.delete()
        Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.ACTIVE)
        lease.refresh_from_db()
        return lease
