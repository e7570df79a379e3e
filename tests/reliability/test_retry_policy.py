"""The answer policy (README.md) where tests/annotate does not reach: a resent answer stays a
repeat whatever happened since (another body, the item filled, its lease released), and
simultaneous copies of one answer, or different answers to one item, store one judgment."""
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.models import Judgment, StudyItem
from annotate.services import queue_sql
from annotate.services.annotation import assignment_next, judgment_submit
from tests.factories import annotators, open_pairwise
from tests.reliability.faults import api_client, check_study_consistent, race


def submit_url(study) -> str:
    return reverse("api-submit", args=[study.public_id])


@pytest.mark.django_db(transaction=True)
def test_a_resent_late_answer_stays_a_repeat_after_the_item_filled_and_its_lease_was_released():
    """A late answer is accepted while its slot is held; the client, which got no response
    (a 503 after the commit), resends it after the item filled up and the lapsed lease was
    released: the resend is recognised by its client id (200), not refused as late (409), and
    a changed body does not change the stored answer."""
    late_user, *others = annotators(3)
    study = open_pairwise(members=[late_user, *others], prompts=1, per_prompt=1, redundancy=2)
    now = timezone.now()
    lease = assignment_next(study=study, annotator=late_user, now=now)
    expired = now + timedelta(seconds=study.lease_seconds + 5)
    client_id = uuid.uuid4()
    first = judgment_submit(study=study, annotator=late_user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                            client_id=client_id, choice="left", now=expired)
    assert first.created
    second = assignment_next(study=study, annotator=others[0], now=expired)
    judgment_submit(study=study, annotator=others[0], item_public_id=second.item.public_id, lease_id=second.pk,
                    client_id=uuid.uuid4(), choice="right", now=expired)
    assert assignment_next(study=study, annotator=others[1], now=expired) is None  # full
    queue_sql.leases_release_lapsed(now=expired + timedelta(seconds=study.lease_seconds + 5))
    again = api_client(late_user).post(submit_url(study), {"item": str(lease.item.public_id), "lease": lease.pk,
                                                           "client_id": str(client_id), "choice": "tie"},
                                       format="json")
    assert again.status_code == 200 and again.json()["created"] is False and again.json()["progress"]["answered"] == 1
    assert Judgment.objects.get(client_id=client_id).choice == "left"
    assert StudyItem.objects.get().judgment_count == 2 == Judgment.objects.count()
    check_study_consistent(study)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_simultaneous_copies_of_one_answer_store_it_once():
    """A double click and a retry in flight at once: one 201, the others 200, one judgment."""
    user, = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1, redundancy=1)
    shown = api_client(user).post(reverse("api-next", args=[study.public_id]), {}, format="json").json()
    body = {"item": shown["item"], "lease": shown["lease"], "client_id": str(uuid.uuid4()), "choice": "left"}
    clients = [api_client(user) for _ in range(8)]
    statuses = race(8, lambda i: clients[i].post(submit_url(study), body, format="json").status_code)
    assert statuses == Counter({201: 1, 200: 7})
    assert Judgment.objects.count() == 1
    check_study_consistent(study)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_simultaneous_different_answers_to_one_item_store_one():
    """Two tabs answering the same item: the first answer stands, the others get 409."""
    user, = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1, redundancy=1)
    shown = api_client(user).post(reverse("api-next", args=[study.public_id]), {}, format="json").json()
    clients = [api_client(user) for _ in range(8)]
    statuses = race(8, lambda i: clients[i].post(submit_url(study), {
        "item": shown["item"], "lease": shown["lease"], "client_id": str(uuid.uuid4()),
        "choice": ("left", "right")[i % 2]}, format="json").status_code)
    assert statuses == Counter({201: 1, 409: 7})
    assert Judgment.objects.count() == 1
    check_study_consistent(study)
