"""The assignment engine and the answer policy (annotate/services/annotation.py)."""
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from annotate.models import Assignment, Judgment, Skip, StudyItem, StudyMembership
from annotate.services import annotation
from annotate.services.annotation import (
    AnnotatorPaused, InvalidAnswer, ItemUnavailable, NotAMember, StudyNotOpen, assignment_next,
    canonical_answer, judgment_submit, judgment_undo, skip_submit,
)
from annotate.services.studies import study_close
from tests.factories import annotators, open_pairwise, open_rating

pytestmark = pytest.mark.django_db


def answer(study, user, lease, choice="left", **kw):
    return judgment_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                           client_id=kw.pop("client_id", uuid.uuid4()), choice=choice, **kw)


def test_next_leases_an_unanswered_item_and_resumes_it():
    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    lease = assignment_next(study=study, annotator=user)
    assert lease.state == "active" and lease.a_on_left in (True, False)
    assert lease.expires_at - lease.leased_at == timedelta(seconds=study.lease_seconds)
    assert assignment_next(study=study, annotator=user) == lease  # a reload resumes
    other = assignment_next(study=study, annotator=user, exclude=[lease.item.public_id])
    assert other.item != lease.item  # prefetch: a second lease
    answer(study, user, lease)
    assert assignment_next(study=study, annotator=user, exclude=[other.item.public_id]).item not in (
        lease.item, other.item)


def test_an_annotator_never_gets_an_item_twice_and_items_fill_to_redundancy():
    users = annotators(4)
    study = open_pairwise(members=users, prompts=2, per_prompt=1, redundancy=3)  # 2 items
    for user in users[:3]:
        seen = []
        while (lease := assignment_next(study=study, annotator=user)) is not None:
            assert lease.item_id not in seen
            seen.append(lease.item_id)
            answer(study, user, lease, choice="tie")
        assert len(seen) == 2
    assert list(StudyItem.objects.values_list("judgment_count", flat=True)) == [3, 3]
    assert assignment_next(study=study, annotator=users[3]) is None  # all full


def test_open_leases_count_towards_redundancy_until_released(monkeypatch):
    monkeypatch.setattr(annotation, "_last_release", time.monotonic())  # no periodic release in this test
    users = annotators(3)
    study = open_pairwise(members=users, prompts=1, per_prompt=1, redundancy=2)  # 1 item
    item = study.items.get()
    now = timezone.now()
    first = assignment_next(study=study, annotator=users[0], now=now)
    assert assignment_next(study=study, annotator=users[1], now=now)
    assert assignment_next(study=study, annotator=users[2], now=now) is None  # leased to enough others
    later = now + timedelta(seconds=study.lease_seconds + 1)
    # A lapsed lease keeps its slot until released: its holder resumes it, renewed in place.
    again = assignment_next(study=study, annotator=users[0], now=later)
    assert again.pk == first.pk and again.expires_at > first.expires_at
    # Finding nothing, the third annotator has the study's lapsed leases released: the second's
    # abandoned slot comes back to them.
    third = assignment_next(study=study, annotator=users[2], now=later)
    assert third is not None and third.item_id == item.pk
    assert Assignment.objects.get(annotator=users[1]).state == Assignment.State.EXPIRED
    item.refresh_from_db()
    assert item.taken == 2 == Assignment.objects.filter(item=item, state=Assignment.State.ACTIVE).count()
    assert Assignment.objects.filter(annotator=users[0]).count() == 1


def test_lapsed_leases_are_released_now_and_then(monkeypatch):
    users = annotators(2)
    study = open_pairwise(members=users, prompts=2, per_prompt=1, redundancy=1)  # 2 items
    now = timezone.now()
    monkeypatch.setattr(annotation, "_last_release", time.monotonic())
    lease = assignment_next(study=study, annotator=users[0], now=now)
    later = now + timedelta(seconds=study.lease_seconds + 1)
    # Not yet due: the lapsed lease keeps its slot while another item is free.
    other = assignment_next(study=study, annotator=users[1], now=later)
    assert other.item_id != lease.item_id
    assert Assignment.objects.get(pk=lease.pk).state == Assignment.State.ACTIVE
    monkeypatch.setattr(annotation, "_last_release", time.monotonic() - annotation.RELEASE_LAPSED_EVERY_S)
    assignment_next(study=study, annotator=users[1], now=later)  # held: no new lease, but a release round
    assert Assignment.objects.get(pk=lease.pk).state == Assignment.State.EXPIRED
    assert StudyItem.objects.get(pk=lease.item_id).taken == 0


def test_items_closest_to_completion_come_first_and_order_differs_per_annotator():
    users = annotators(6)
    study = open_pairwise(members=users, prompts=6, per_prompt=2, redundancy=3)  # 12 items
    StudyItem.objects.filter(pk=study.items.order_by("pk")[5].pk).update(judgment_count=2, taken=2)
    assert assignment_next(study=study, annotator=users[0]).item == study.items.order_by("pk")[5]
    firsts = {assignment_next(study=study, annotator=u).item_id for u in users[1:]}
    assert len(firsts) >= 2  # the rest: shuffled per annotator


def test_random_order_and_quota():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=5, per_prompt=1, item_order="random", items_per_annotator=2)
    first = assignment_next(study=study, annotator=user)
    second = assignment_next(study=study, annotator=user, exclude=[first.item.public_id])
    assert assignment_next(study=study, annotator=user, exclude=[first.item.public_id, second.item.public_id]) is None
    answer(study, user, first)
    answer(study, user, second)
    assert assignment_next(study=study, annotator=user) is None


def test_members_only_open_studies_only_paused_annotators_get_nothing():
    member, outsider = annotators(2)
    study = open_pairwise(members=[member])
    with pytest.raises(NotAMember):
        assignment_next(study=study, annotator=outsider)
    StudyMembership.objects.filter(annotator=member).update(is_paused=True)
    with pytest.raises(AnnotatorPaused):
        assignment_next(study=study, annotator=member)
    study_close(study=study)
    with pytest.raises(StudyNotOpen):
        assignment_next(study=study, annotator=member)


def test_submit_is_idempotent_by_client_id_and_records_side_and_time():
    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    lease = assignment_next(study=study, annotator=user)
    client_id = uuid.uuid4()
    first = answer(study, user, lease, choice="right", client_id=client_id, time_spent_ms=1234)
    again = answer(study, user, lease, choice="right", client_id=client_id, time_spent_ms=1234)
    assert first.created and not again.created and again.judgment.pk == first.judgment.pk
    assert Judgment.objects.count() == 1 and StudyItem.objects.get(pk=lease.item_id).judgment_count == 1
    j = first.judgment
    assert (j.a_on_left, j.time_spent_ms, j.assignment_id) == (lease.a_on_left, 1234, lease.pk)
    assert canonical_answer(j) == ("b" if lease.a_on_left else "a")
    assert Assignment.objects.get(pk=lease.pk).state == "answered"
    with pytest.raises(ItemUnavailable, match="already answered"):
        answer(study, user, lease, choice="left")
    other = assignment_next(study=study, annotator=user)
    with pytest.raises(InvalidAnswer, match="another item"):
        answer(study, user, other, choice="left", client_id=client_id)


@pytest.mark.parametrize("kwargs", [dict(choice="up"), dict(choice="left", reason="both_good"),
                                    dict(choice="tie", reason="meh"), dict(choice="aligned")])
def test_invalid_pairwise_answers_are_refused(kwargs):
    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    lease = assignment_next(study=study, annotator=user)
    with pytest.raises(InvalidAnswer):
        answer(study, user, lease, **kwargs)
    assert not Judgment.objects.exists()


def test_rating_answers_binary_and_likert():
    (user,) = annotators(1)
    binary = open_rating(members=[user])
    lease = assignment_next(study=binary, annotator=user)
    with pytest.raises(InvalidAnswer):
        answer(binary, user, lease, choice="left")
    assert answer(binary, user, lease, choice="not_aligned").judgment.a_on_left is None
    likert = open_rating(members=[user], rating_scale="likert5")
    lease = assignment_next(study=likert, annotator=user)
    with pytest.raises(InvalidAnswer):
        answer(likert, user, lease, choice="score", score=6)
    judgment = answer(likert, user, lease, choice="score", score=4).judgment
    assert canonical_answer(judgment) == "aligned"


def test_an_item_not_leased_to_you_cannot_be_answered():
    owner, thief = annotators(2)
    study = open_pairwise(members=[owner, thief])
    lease = assignment_next(study=study, annotator=owner)
    with pytest.raises(ItemUnavailable, match="not assigned"):
        answer(study, thief, lease)
    assert not Judgment.objects.exists()


def test_late_submission_is_accepted_while_there_is_room_and_refused_when_full():
    users = annotators(3)
    study = open_pairwise(members=users, prompts=1, per_prompt=1, redundancy=2)
    now = timezone.now()
    late = assignment_next(study=study, annotator=users[0], now=now)
    expired = now + timedelta(seconds=study.lease_seconds + 5)
    # Room left: the late answer counts.
    assert judgment_submit(study=study, annotator=users[0], item_public_id=late.item.public_id, lease_id=late.pk,
                           client_id=uuid.uuid4(), choice="left", now=expired).created
    # Now fill the item while user 2's lease has expired.
    lease2 = assignment_next(study=study, annotator=users[1], now=now)
    lease3 = assignment_next(study=study, annotator=users[2], now=expired)
    answer(study, users[2], lease3)
    with pytest.raises(ItemUnavailable, match="expired"):
        judgment_submit(study=study, annotator=users[1], item_public_id=lease2.item.public_id, lease_id=lease2.pk,
                        client_id=uuid.uuid4(), choice="left", now=expired)
    assert StudyItem.objects.get().judgment_count == 2 == Judgment.objects.count()


def test_skip_is_an_outcome_not_a_judgment():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=1, per_prompt=2)
    lease = assignment_next(study=study, annotator=user)
    client_id = uuid.uuid4()
    skip, created = skip_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                                client_id=client_id, reason="image_not_loaded")
    assert created and skip_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                                   client_id=client_id, reason="image_not_loaded") == (skip, False)
    assert Skip.objects.count() == 1 and not Judgment.objects.exists()
    assert StudyItem.objects.get(pk=lease.item_id).judgment_count == 0
    assert assignment_next(study=study, annotator=user).item != lease.item  # not offered again
    with pytest.raises(InvalidAnswer):
        skip_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                    client_id=uuid.uuid4(), reason="bored")


def test_undo_while_the_lease_holds():
    (user,) = annotators(1)
    study = open_pairwise(members=[user])
    lease = assignment_next(study=study, annotator=user)
    answer(study, user, lease)
    back = judgment_undo(study=study, annotator=user)
    assert back.pk == lease.pk and back.state == "active"
    assert not Judgment.objects.exists() and StudyItem.objects.get(pk=lease.item_id).judgment_count == 0
    assert assignment_next(study=study, annotator=user) == back
    answer(study, user, back, choice="tie")
    with pytest.raises(ItemUnavailable, match="expired"):
        judgment_undo(study=study, annotator=user, now=lease.expires_at + timedelta(seconds=1))
    assert Judgment.objects.count() == 1


def test_undo_takes_back_the_last_skip_then_the_answer_before_it():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1, redundancy=1)
    first = assignment_next(study=study, annotator=user)
    answer(study, user, first)
    second = assignment_next(study=study, annotator=user)
    annotation.skip_submit(study=study, annotator=user, item_public_id=second.item.public_id, lease_id=second.pk,
                           client_id=uuid.uuid4(), reason="unsure")
    item = StudyItem.objects.get(pk=second.item_id)
    assert (item.taken, StudyMembership.objects.get(annotator=user).skipped_count) == (0, 1)
    with pytest.raises(ItemUnavailable, match="you skipped this item"):
        answer(study, user, second)
    back = judgment_undo(study=study, annotator=user)  # the skip, the last thing done
    assert back.pk == second.pk and back.state == "active" and back.item.public_id == second.item.public_id
    assert not Skip.objects.exists() and StudyItem.objects.get(pk=second.item_id).taken == 1
    assert StudyMembership.objects.get(annotator=user).skipped_count == 0
    assert assignment_next(study=study, annotator=user) == back  # held again, not passed over
    again = judgment_undo(study=study, annotator=user)  # then the answer before it
    assert again.pk == first.pk and not Judgment.objects.exists()
    with pytest.raises(ItemUnavailable, match="nothing to undo"):
        judgment_undo(study=study, annotator=user)


def test_a_skip_whose_item_went_to_someone_else_cannot_be_undone():
    user, other = annotators(2)
    study = open_pairwise(members=[user, other], prompts=1, per_prompt=1, redundancy=1)
    lease = assignment_next(study=study, annotator=user)
    annotation.skip_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                           client_id=uuid.uuid4(), reason="unsure")
    taken = assignment_next(study=study, annotator=other)
    assert taken.item_id == lease.item_id
    with pytest.raises(ItemUnavailable, match="given to others"):
        judgment_undo(study=study, annotator=user)
    assert Skip.objects.count() == 1 and StudyItem.objects.get(pk=lease.item_id).taken == 1
    with pytest.raises(ItemUnavailable, match="expired"):  # nor one whose lease lapsed
        judgment_undo(study=study, annotator=user, now=lease.expires_at + timedelta(seconds=1))


def test_gold_accuracy_below_threshold_pauses_and_flags_without_deleting():
    (user,) = annotators(1)
    # alpha always right, beta always wrong: every item has a known answer.
    study = open_pairwise(members=[user], prompts=8, per_prompt=1, gold_share=1.0,
                          truth=lambda ckpt, p, i: ckpt == "alpha-ckpt")
    study.gold_min_answers, study.gold_min_accuracy = 3, 0.7
    study.save()
    assert study.items.filter(is_gold=True).count() == 8
    for _ in range(3):
        lease = assignment_next(study=study, annotator=user)
        item = lease.item
        wrong_is_left = (item.gold_answer == "a") != lease.a_on_left  # point at the wrong image
        answer(study, user, lease, choice="left" if wrong_is_left else "right")
    membership = StudyMembership.objects.get(annotator=user)
    assert (membership.gold_answered, membership.gold_correct, membership.is_paused) == (3, 0, True)
    assert "gold accuracy 0/3" in membership.paused_reason
    assert Judgment.objects.filter(is_flagged=True).count() == 3 == Judgment.objects.count()
    assert not any(Judgment.objects.values_list("gold_correct", flat=True))
    with pytest.raises(AnnotatorPaused):
        assignment_next(study=study, annotator=user)


def test_correct_gold_answers_keep_the_annotator_going():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=6, per_prompt=1, gold_share=1.0,
                          truth=lambda ckpt, p, i: ckpt == "alpha-ckpt")
    study.gold_min_answers = 2
    study.save()
    for _ in range(6):
        lease = assignment_next(study=study, annotator=user)
        right_is_left = (lease.item.gold_answer == "a") == lease.a_on_left
        answer(study, user, lease, choice="left" if right_is_left else "right")
    membership = StudyMembership.objects.get(annotator=user)
    assert (membership.gold_correct, membership.is_paused) == (6, False)
    assert all(Judgment.objects.values_list("gold_correct", flat=True))
    assert annotation.assignment_next(study=study, annotator=user) is None


def _slots_add_up(study) -> bool:
    """taken = judgments + unsettled leases, on every item."""
    return all(
        item.taken == item.judgment_count + Assignment.objects.filter(item=item, state="active").count()
        for item in study.items.all())


def test_every_write_keeps_the_slot_count(monkeypatch):
    monkeypatch.setattr(annotation, "_last_release", time.monotonic())
    users = annotators(3)
    study = open_pairwise(members=users, prompts=3, per_prompt=1, redundancy=2)  # 3 items
    now = timezone.now()
    a = assignment_next(study=study, annotator=users[0], now=now)
    answer(study, users[0], a, choice="left")
    judgment_undo(study=study, annotator=users[0], now=now)
    assert _slots_add_up(study)
    answer(study, users[0], a, choice="right")
    b = assignment_next(study=study, annotator=users[0], now=now)
    skip_submit(study=study, annotator=users[0], item_public_id=b.item.public_id, lease_id=b.pk, client_id=uuid.uuid4(),
                reason="unsure", now=now)
    assert _slots_add_up(study)
    c = assignment_next(study=study, annotator=users[1], now=now)
    later = now + timedelta(seconds=study.lease_seconds + 1)
    assert annotation.queue_sql.leases_release_lapsed(now=later) == 1
    assert _slots_add_up(study)
    # An answer under a released lease takes a free slot again.
    result = judgment_submit(study=study, annotator=users[1], item_public_id=c.item.public_id, lease_id=c.pk,
                             client_id=uuid.uuid4(), choice="tie", now=later)
    assert result.created and _slots_add_up(study)
    assert StudyItem.objects.get(pk=c.item_id).taken == StudyItem.objects.get(pk=c.item_id).judgment_count


def test_random_order_walks_by_rank_from_the_annotators_start_whatever_is_taken():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=4, per_prompt=1, item_order="random", redundancy=3)
    start = annotation.start_rank(study, user)
    first, second, wrapped, last = study.items.order_by("pk")
    for item, rank, taken in ((first, start + 5, 0), (second, start + 1, 2), (wrapped, 0, 1), (last, start + 9, 0)):
        StudyItem.objects.filter(pk=item.pk).update(rank=rank, taken=taken, judgment_count=taken)
    assert assignment_next(study=study, annotator=user).item_id == second.pk  # least rank from the start
    StudyItem.objects.filter(pk__in=[first.pk, last.pk]).update(taken=3, judgment_count=3)
    assert assignment_next(study=study, annotator=user, exclude=[second.public_id]).item_id == wrapped.pk


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_hot_path_drops_its_prepared_plans_now_and_then(monkeypatch):
    """Plans made while the tables were small are replaced: every PLANS_MAX_AGE_S the
    connection's prepared statements go, and the next requests prepare them afresh."""
    from django.db import connection

    from annotate.services import queue_sql

    users = annotators(1)
    study = open_pairwise(members=users, prompts=8, per_prompt=1, redundancy=1)

    def prepared() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements")
            return cursor.fetchone()[0]

    def work(n):
        for _ in range(n):
            lease = assignment_next(study=study, annotator=users[0])
            answer(study, users[0], lease)

    connection._calibra_plans = (None, 0.0)
    work(6)  # prepared after 5 runs (prepare_threshold)
    assert prepared() > 0
    monkeypatch.setattr(queue_sql, "PLANS_MAX_AGE_S", 0.0)
    queue_sql.plans_refresh_now_and_then()
    assert prepared() == 0
    monkeypatch.setattr(queue_sql, "PLANS_MAX_AGE_S", 3600.0)
    work(2)  # psycopg forgot its names too: no "prepared statement does not exist"
    assert Judgment.objects.count() == 8
