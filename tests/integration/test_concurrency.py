"""Many annotators at once on PostgreSQL: row locks with SKIP LOCKED keep every item within
its redundancy and never give one annotator the same item twice."""
import threading
import uuid
from collections import Counter

import pytest
from django.db import connection

from annotate.models import Assignment, Judgment, StudyItem
from annotate.services.annotation import assignment_next, judgment_submit
from tests.factories import annotators, open_pairwise

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_threads(n: int, target) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


@pytest.mark.parametrize("round_", range(4))
def test_simultaneous_first_requests_lease_distinct_items(round_):
    users = annotators(24, prefix=f"r{round_}-")
    study = open_pairwise(members=users, prompts=12, per_prompt=3, redundancy=1)  # 36 items
    leases = {}

    def ask(i):
        leases[i] = assignment_next(study=study, annotator=users[i])
        if i % 2:  # half of them prefetch a second item at once
            leases[i + 100] = assignment_next(study=study, annotator=users[i], exclude=[leases[i].item.public_id])

    assert run_threads(len(users), ask) == []
    items = [lease.item_id for lease in leases.values() if lease is not None]
    assert len(items) == 36 and len(set(items)) == 36  # redundancy 1: no item leased twice


def test_annotators_racing_through_a_study_never_overfill_an_item():
    users = annotators(16)
    study = open_pairwise(members=users, prompts=10, per_prompt=2, redundancy=3)  # 20 items, 60 judgments
    answered: Counter = Counter()

    def work(i):
        user = users[i]
        while (lease := assignment_next(study=study, annotator=user)) is not None:
            result = judgment_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                                     client_id=uuid.uuid4(), choice="left")
            assert result.created
            answered[i] += 1

    assert run_threads(len(users), work) == []
    counts = Counter(Judgment.objects.values_list("item_id", flat=True))
    assert sum(answered.values()) == Judgment.objects.count() == 60
    assert set(counts.values()) == {3}
    for item in StudyItem.objects.filter(study=study):
        assert item.judgment_count == counts[item.id] == 3 == item.taken
    per_annotator = Counter(Judgment.objects.values_list("annotator_id", "item_id"))
    assert set(per_annotator.values()) == {1}
    assert not Assignment.objects.filter(state="active").exists()
