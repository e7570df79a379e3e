"""The assignment engine and the annotator's answers.

An annotator asks for the next item and gets a lease on one they have not answered, that
still needs judgments and is not leased to enough others. On PostgreSQL the candidate row
is locked with SKIP LOCKED, so concurrent requests never pick the same item at once and
never over-fill it; on SQLite writers are serialised by the database.

Policy for answers (stated once, relied on by the UI and the API):
- a submission is identified by its client-made id: resending it returns the stored
  judgment and changes nothing;
- one judgment per annotator and item; a second, different answer is refused (409);
- an item has ``redundancy`` slots; a lease takes one until it is answered (the judgment
  keeps it), skipped or released. A lease that lapsed (past ``expires_at``) keeps its slot
  until it is released, which happens within ~15 s (any request releases lapsed leases now
  and then, and a study's own when an annotator finds nothing left);
- a submission under a lapsed lease is accepted while its slot is still held; once the
  lease is released, it is accepted only if the item has a free slot, and refused (409)
  when it is full: no item ever holds more judgments than its redundancy;
- the last judgment can be undone while its lease has not expired.

Next-item and submit are the hot paths (one pair per judgment): they are a handful of SQL
statements each (``annotate.services.queue_sql``), because the ORM's query compilation
alone cost more than the whole budget per judgment. Rare paths use the ORM.
"""
from __future__ import annotations

import hashlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from annotate.models import Assignment, Judgment, Skip, Study, StudyItem, StudyMembership
from annotate.services import queue_sql
from annotate.services.queue_sql import GOLD_PAUSE_PREFIX


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


class StaleDisplay(AnnotationError):
    """The answer was given to a display of the item that is no longer the annotator's: the item
    was leased to them again since (another tab, a lapsed lease), its sides drawn anew."""
    status, code = 409, "stale_display"


class TooManyLeases(AnnotationError):
    status, code = 409, "too_many_leases"


class AnswerTakenBack(AnnotationError):
    """A resend of an answer that its annotator took back since (undo, perhaps in another tab)."""
    status, code = 409, "answer_taken_back"


PAIRWISE_CHOICES = {"left", "right", "tie"}
TIE_REASONS = {"", "both_good", "both_bad"}


def membership_get(*, study: Study, annotator) -> StudyMembership:
    try:
        return StudyMembership.objects.select_related("study").get(study=study, annotator=annotator)
    except StudyMembership.DoesNotExist:
        raise NotAMember("you are not a member of this study") from None


def pause_reason_for_annotator(membership: StudyMembership) -> str:
    reason = membership.paused_reason
    return "" if reason.startswith(GOLD_PAUSE_PREFIX) else reason


def _active_membership(study: Study, annotator, membership: StudyMembership | None) -> StudyMembership:
    """The annotator's membership, refused when paused or when the study does not take answers."""
    membership = membership or membership_get(study=study, annotator=annotator)
    if study.status != Study.Status.OPEN:
        raise StudyNotOpen("this study is not open")
    if membership.is_paused:
        raise AnnotatorPaused(pause_reason_for_annotator(membership))
    return membership


def progress_of(membership: StudyMembership) -> dict:
    study = membership.study
    return {"answered": membership.answered_count, "skipped": membership.skipped_count,
            "target": study.items_per_annotator or study.item_count}


def start_rank(study: Study, annotator, membership: StudyMembership | None = None) -> int:
    """Where this annotator's walk of the study's random item order goes on from: the rank of
    the item they last answered, or at first a start drawn per annotator (items are walked by
    rank from here, wrapping around), so that orders differ per annotator, concurrent
    annotators start in different places, and no one walks back over what they answered."""
    if membership is not None and membership.cursor_rank is not None:
        return membership.cursor_rank
    digest = hashlib.sha256(f"{study.pk}:{annotator.pk}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


# Lapsed leases keep their slots until released. Any process releases them now and then
# (and a study's own when an annotator finds nothing left), so no scheduler is needed.
RELEASE_LAPSED_EVERY_S = 15.0
_last_release = 0.0


def _release_lapsed_now_and_then(now: datetime) -> None:
    global _last_release
    if time.monotonic() - _last_release >= RELEASE_LAPSED_EVERY_S:
        _last_release = time.monotonic()
        queue_sql.leases_release_lapsed(now=now)


def assignment_next(*, study: Study, annotator, exclude: list[uuid.UUID] = (), now: datetime | None = None,
                    membership: StudyMembership | None = None) -> Assignment | None:
    """The annotator's lease on the next item, or None when nothing is left for them.

    An unsettled lease of theirs is returned again, renewed if it has lapsed (a reloaded page
    resumes where it was); ``exclude`` names items the client already holds, to lease one
    more for preloading.
    """
    now = now or timezone.now()
    if study.status != Study.Status.OPEN:
        raise StudyNotOpen("this study is not open")
    membership = _active_membership(study, annotator, membership)
    _release_lapsed_now_and_then(now)
    queue_sql.plans_refresh_now_and_then()
    ask = dict(study=study, annotator=annotator, now=now, exclude=list(exclude),
               closest=study.item_order == Study.ItemOrder.CLOSEST_TO_COMPLETION,
               start=start_rank(study, annotator, membership), expires_at=now + timedelta(seconds=study.lease_seconds),
               a_on_left=random.random() < 0.5 if study.kind == Study.Kind.PAIRWISE else None)
    passed_over: list[int] = []
    released = False
    with transaction.atomic():
        queue_sql.next_requests_serialise(membership_id=membership.pk)
        new, in_hand = True, 0
        if study.items_per_annotator is not None or exclude:
            in_hand = queue_sql.open_lease_count(study=study, annotator=annotator)
            # Only answers fill the quota: a skip is no work done, and must not earn a completion code.
            if study.items_per_annotator is not None:
                new = membership.answered_count + in_hand < study.items_per_annotator
            # Only a preload (exclude) asks for one more: otherwise the held lease comes back.
            new = new and not (exclude and in_hand >= study.max_open_leases)
        while True:
            lease, passed = queue_sql.lease_held_or_new(**ask, new=new, passed_over=passed_over,
                                                        with_held=not passed_over)
            if lease is not None:
                return lease
            if passed is not None:  # leased by a concurrent request of the same annotator
                passed_over.append(passed)
            elif new and not released and queue_sql.leases_release_lapsed(now=now, study_id=study.pk):
                released = True  # abandoned slots came back: look again
            elif exclude and not new and in_hand >= study.max_open_leases:
                raise TooManyLeases(f"you hold {in_hand} items of this study already; answer one first")
            else:
                return None


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
    return answer_in_item_terms(judgment.choice, judgment.score, judgment.a_on_left)


def answer_in_item_terms(choice: str, score: int | None, a_on_left: bool | None) -> str:
    if choice == "tie":
        return "tie"
    if choice in ("left", "right"):
        return "a" if (choice == "left") == a_on_left else "b"
    if choice == Judgment.Choice.SCORE:
        return "aligned" if score >= 4 else "not_aligned" if score <= 2 else "unsure"
    return choice


def _flag_after_gold_pause(study: Study, annotator) -> None:
    """The answer just stored paused its annotator (gold accuracy fell below the study's):
    their judgments are flagged, never deleted; the report decides whether to count them."""
    reason = StudyMembership.objects.values_list("paused_reason", flat=True).get(study=study, annotator=annotator)
    Judgment.objects.filter(item__study=study, annotator=annotator).update(
        is_flagged=True, flag_reason="annotator paused: " + reason)


def _lease_for_answer(study: Study, annotator, item_public_id, lease_id, client_id, membership,
                      repeat_of) -> tuple[queue_sql.LockedItem, queue_sql.AnswerLease | None, object]:
    """The item, locked, and the lease the answer names, checked to be the display the annotator
    answered; or (item, None, the stored outcome) for a resend of a stored answer."""
    item, lease = queue_sql.item_lock_with_lease(study=study, item_public_id=item_public_id, annotator=annotator,
                                                 lease_id=lease_id)
    if item is None:
        raise ItemUnavailable("no such item in this study")
    queue_sql.membership_lock(membership_id=membership.pk)
    repeat = repeat_of(annotator, client_id, item_public_id, membership)
    if repeat is not None:
        return item, None, repeat
    if lease is None:  # not a lease of theirs on this item
        _raise_not_leased(item, annotator)
    if not lease.latest:
        raise StaleDisplay("this item was shown to you again since, with its images placed anew; "
                           "that answer was not stored: answer the item as it is shown now")
    if lease.state in (Assignment.State.ANSWERED, Assignment.State.SKIPPED):
        _raise_not_leased(item, annotator)
    if lease.taken_back_client_id == client_id:
        raise AnswerTakenBack("this answer was taken back (undo) since it was first sent, so it is not stored "
                              "again: answer the item anew")
    return item, lease, None


def _raise_not_leased(item, annotator) -> None:
    """Why an item without an open lease of the annotator's cannot be answered."""
    if Judgment.objects.filter(item_id=item.id, annotator=annotator).exists():
        raise ItemUnavailable("you already answered this item")
    if Skip.objects.filter(item_id=item.id, annotator=annotator).exists():
        raise ItemUnavailable("you skipped this item; undo the skip to answer it")
    raise ItemUnavailable("this item was not assigned to you (under that lease)")


@dataclass
class Submitted:
    judgment_id: int
    client_id: uuid.UUID
    created: bool
    progress: dict

    @property
    def judgment(self) -> Judgment:
        return Judgment.objects.get(pk=self.judgment_id)


def judgment_submit(*, study: Study, annotator, item_public_id, lease_id: int, client_id: uuid.UUID, choice: str,
                    score: int | None = None, reason: str = "", time_spent_ms: int | None = None,
                    now: datetime | None = None, membership: StudyMembership | None = None) -> Submitted:
    """Store an answer to the display that lease ``lease_id`` made: that lease's sides, or a
    refusal (StaleDisplay) when the item has been leased to the annotator again since.

    Gold items take the same statements as any other (graded inside them), so that nothing
    in the response, its timing included, tells an annotator which items are gold.
    """
    now = now or timezone.now()
    membership = membership or membership_get(study=study, annotator=annotator)
    try:
        _validate_answer(study, choice, score, reason)
        membership = _active_membership(study, annotator, membership)
    except AnnotationError:
        # A resent answer is recognised by its client id, whatever has changed since.
        repeat = _repeat(annotator, client_id, item_public_id, membership)
        if repeat is not None:
            return repeat
        raise
    score = score if choice == Judgment.Choice.SCORE else None
    fast = queue_sql.answer_in_one_statement(
        study=study, item_public_id=item_public_id, lease_id=lease_id, annotator=annotator,
        membership_id=membership.id, client_id=client_id, choice=choice, score=score, reason=reason,
        time_spent_ms=time_spent_ms, now=now, answer=answer_in_item_terms(choice, score, None))
    if fast is not None:
        judgment_id, membership.answered_count, membership.skipped_count, paused = fast
    else:
        with transaction.atomic():
            item, lease, repeat = _lease_for_answer(study, annotator, item_public_id, lease_id, client_id,
                                                    membership, _repeat)
            if repeat is not None:
                return repeat
            # A lease released after it lapsed gave its slot back: the answer needs a free one.
            takes_slot = not lease.unsettled
            if takes_slot and item.taken >= study.redundancy:
                raise ItemUnavailable("your lease on this item expired and the item has been completed by others")
            gold_correct = None
            if item.is_gold:
                gold_correct = answer_in_item_terms(choice, score, lease.a_on_left) == item.gold_answer
            judgment_id = queue_sql.judgment_insert(
                item_id=item.id, annotator=annotator, assignment_id=lease.id, client_id=client_id, choice=choice,
                score=score, reason=reason, a_on_left=lease.a_on_left, time_spent_ms=time_spent_ms,
                gold_correct=gold_correct, now=now)
            if judgment_id is None:
                # A unique constraint held: its client id used for another item, or the item answered.
                repeat = _repeat(annotator, client_id, item_public_id, membership)
                if repeat is not None:
                    return repeat
                raise ItemUnavailable("you already answered this item")
            membership.answered_count, membership.skipped_count, paused = queue_sql.answer_settle(
                study=study, lease_id=lease.id, item_id=item.id, membership_id=membership.id,
                takes_slot=takes_slot, gold=item.is_gold, correct=bool(gold_correct))
    if paused:  # by this answer: the annotator was not paused before it
        _flag_after_gold_pause(study, annotator)
    return Submitted(judgment_id, client_id, True, progress_of(membership))


def _repeat(annotator, client_id, item_public_id, membership: StudyMembership) -> Submitted | None:
    existing = queue_sql.judgment_by_client_id(annotator=annotator, client_id=client_id)
    if existing is None:
        return None
    judgment_id, existing_item = existing
    if str(existing_item) != str(item_public_id):
        raise InvalidAnswer("this client_id was already used for another item")
    membership.refresh_from_db(fields=["answered_count", "skipped_count"])
    return Submitted(judgment_id, client_id, False, progress_of(membership))


def _repeat_skip(annotator, client_id, item_public_id, membership) -> Skip | None:
    existing = Skip.objects.filter(annotator=annotator, client_id=client_id).select_related("item").first()
    if existing is not None and str(existing.item.public_id) != str(item_public_id):
        raise InvalidAnswer("this client_id was already used for another item")
    return existing


def skip_submit(*, study: Study, annotator, item_public_id, lease_id: int, client_id: uuid.UUID, reason: str,
                note: str = "", now: datetime | None = None) -> tuple[Skip, bool]:
    """Record that the annotator passed on the display that lease ``lease_id`` made, with why."""
    now = now or timezone.now()
    if reason not in Skip.Reason.values:
        raise InvalidAnswer(f"reason must be one of {', '.join(Skip.Reason.values)}")
    existing = _repeat_skip(annotator, client_id, item_public_id, None)
    if existing is not None:
        return existing, False  # a resent skip, whatever has changed since
    membership = _active_membership(study, annotator, None)
    with transaction.atomic():
        item, lease, existing = _lease_for_answer(study, annotator, item_public_id, lease_id, client_id, membership,
                                                  _repeat_skip)
        if existing is not None:  # the same skip, stored by a concurrent request
            return existing, False
        skip = Skip.objects.create(item_id=item.id, annotator=annotator, assignment_id=lease.id,
                                   client_id=client_id, reason=reason, note=note[:300])
        Assignment.objects.filter(pk=lease.id).update(state=Assignment.State.SKIPPED)
        if lease.unsettled:  # its slot goes back to the item (a released lease's already has)
            StudyItem.objects.filter(pk=item.id).update(taken=F("taken") - 1)
        StudyMembership.objects.filter(pk=membership.pk).update(skipped_count=F("skipped_count") + 1)
    return skip, True


def _last_outcome(study: Study, annotator) -> Judgment | Skip | None:
    """The annotator's last answer in the study, a judgment or a skip."""
    last = (Judgment.objects.filter(item__study=study, annotator=annotator)
            .select_related("assignment", "item__prompt").order_by("-created_at", "-pk").first())
    skipped = (Skip.objects.filter(item__study=study, annotator=annotator)
               .select_related("assignment", "item__prompt").order_by("-created_at", "-pk").first())
    if skipped is not None and (last is None or skipped.created_at >= last.created_at):
        return skipped
    return last


def judgment_undo(*, study: Study, annotator, now: datetime | None = None) -> Assignment:
    """Take back the annotator's last answer, a judgment or a skip, while its lease holds;
    returns the lease, open again.

    Under the item's lock and then the annotator's (the order every answer takes), so that
    concurrent undos (two tabs, a double press) take back one answer each, and counts always
    equal rows. A gold answer is taken back with the same statements as any other.
    A skip gave its slot back to the item: taking it back takes the slot again, unless the item
    has been given to others since (then it cannot be undone)."""
    now = now or timezone.now()
    membership = _active_membership(study, annotator, None)
    for _ in range(5):
        last = _last_outcome(study, annotator)
        if last is None:
            raise ItemUnavailable("there is nothing to undo")
        with transaction.atomic():
            queue_sql.item_lock(item_id=last.item_id)
            if queue_sql.membership_lock(membership_id=membership.pk):
                raise AnnotatorPaused(pause_reason_for_annotator(membership_get(study=study, annotator=annotator)))
            again = _last_outcome(study, annotator)
            if again is None:
                raise ItemUnavailable("there is nothing to undo")
            if (type(again), again.pk) != (type(last), last.pk):
                continue  # another request answered or undid meanwhile: look again, under the locks
            lease = last.assignment
            if lease is None or lease.expires_at <= now:
                raise ItemUnavailable("the lease of your last answer has expired; it can no longer be undone")
            if isinstance(last, Skip):
                return _skip_undo(study, membership, last, lease)
            queue_sql.answer_take_back(judgment_id=last.pk, client_id=last.client_id, item_id=last.item_id,
                                       lease_id=lease.pk, membership_id=membership.pk, gold=last.item.is_gold,
                                       correct=bool(last.gold_correct))
            lease.refresh_from_db()
            lease.item = last.item
            return lease
    raise ItemUnavailable("your answers changed while this undo ran; try again")


def _skip_undo(study: Study, membership: StudyMembership, skipped: Skip, lease: Assignment) -> Assignment:
    item = StudyItem.objects.get(pk=skipped.item_id)  # locked by the caller
    if item.taken >= study.redundancy:
        raise ItemUnavailable("the item you skipped has been given to others since; it can no longer be undone")
    StudyItem.objects.filter(pk=item.pk).update(taken=F("taken") + 1)
    StudyMembership.objects.filter(pk=membership.pk).update(skipped_count=F("skipped_count") - 1)
    skipped.delete()
    Assignment.objects.filter(pk=lease.pk).update(state=Assignment.State.ACTIVE,
                                                  taken_back_client_id=skipped.client_id)
    lease.refresh_from_db()
    lease.item = skipped.item
    return lease
