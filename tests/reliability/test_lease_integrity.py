"""What is stored is what the annotator saw, and counters always equal rows (issue 13, cases 2-4,
7 and the lease cap of 9): an answer names the lease of the display it was given to and gets
exactly that lease's sides or a 409; undo, skip and submit settle one after another under row
locks; a removed annotator's slots come back; one account holds a few items at most; gold
answers are graded in the same statements as any other. These run on SQLite and, in CI's
second pass, on PostgreSQL; the races only on PostgreSQL."""
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.models import Assignment, Judgment, Skip, StudyItem, StudyMembership
from annotate.services import queue_sql
from annotate.services.annotation import assignment_next
from tests.factories import annotators, open_pairwise
from tests.reliability.faults import api_client, check_study_consistent, race

pytestmark = pytest.mark.django_db


def next_item(api, study, **body):
    return api.post(reverse("api-next", args=[study.public_id]), body, format="json")


def submit(api, study, shown: dict, choice: str = "left", **extra):
    return api.post(reverse("api-submit", args=[study.public_id]),
                    {"item": shown["item"], "lease": shown["lease"], "client_id": str(uuid.uuid4()),
                     "choice": choice, **extra}, format="json")


def skip(api, study, shown: dict):
    return api.post(reverse("api-skip", args=[study.public_id]),
                    {"item": shown["item"], "lease": shown["lease"], "client_id": str(uuid.uuid4()),
                     "reason": "unsure"}, format="json")


def undo(api, study):
    return api.post(reverse("api-undo", args=[study.public_id]), {}, format="json")


def lapse(lease_id: int) -> None:
    """The lease runs out and the release sweep gives its slot back."""
    now = timezone.now()
    Assignment.objects.filter(pk=lease_id).update(leased_at=now - timedelta(seconds=30),
                                                  expires_at=now - timedelta(seconds=1))
    queue_sql.leases_release_lapsed(now=now)


# --- case 2: an answer is stored against the display it was given to ------------------------

def test_an_answer_to_a_display_drawn_anew_since_is_refused_not_stored_against_the_new_sides():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=1, per_prompt=1, redundancy=1)
    api = api_client(user)
    old = next_item(api, study).json()
    lapse(old["lease"])
    new = next_item(api, study).json()  # the same item again, its sides drawn anew
    assert new["item"] == old["item"] and new["lease"] != old["lease"]
    old_a_on_left = Assignment.objects.get(pk=old["lease"]).a_on_left
    Assignment.objects.filter(pk=new["lease"]).update(a_on_left=not old_a_on_left)  # the draw went the other way

    refused = submit(api, study, old, "left")  # "left" as the old display placed the images
    assert refused.status_code == 409 and refused.json()["error"] == "stale_display", refused.content
    assert "not stored" in refused.json()["detail"]
    assert not Judgment.objects.exists()
    assert skip(api, study, old).status_code == 409 and not Skip.objects.exists()

    assert submit(api, study, new, "left").status_code == 201
    assert Judgment.objects.get().a_on_left is (not old_a_on_left)  # the sides of the display answered
    check_study_consistent(study)


def test_two_tabs_on_one_display_store_one_answer_with_its_sides():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1, redundancy=1)
    first_tab, second_tab = api_client(user), api_client(user)
    shown = next_item(first_tab, study).json()
    assert next_item(second_tab, study).json()["lease"] == shown["lease"]  # the held lease, same sides
    assert submit(first_tab, study, shown, "left").status_code == 201
    late = submit(second_tab, study, shown, "right")
    assert late.status_code == 409 and "already answered" in late.json()["detail"]
    assert Judgment.objects.get().a_on_left == Assignment.objects.get(pk=shown["lease"]).a_on_left
    check_study_consistent(study)


def test_an_answer_must_name_a_lease_of_the_annotators_on_that_item():
    owner, other = annotators(2)
    study = open_pairwise(members=[owner, other], prompts=3, per_prompt=1, redundancy=2)
    api = api_client(other)
    shown = next_item(api, study).json()
    missing = api.post(reverse("api-submit", args=[study.public_id]),
                       {"item": shown["item"], "client_id": str(uuid.uuid4()), "choice": "left"}, format="json")
    assert missing.status_code == 400 and "lease" in missing.json()
    owners = next_item(api_client(owner), study).json()
    borrowed = submit(api, study, {"item": shown["item"], "lease": owners["lease"]})  # a lease of someone else's
    assert borrowed.status_code == 409 and "not assigned to you" in borrowed.json()["detail"]
    assert not Judgment.objects.exists()
    assert submit(api, study, shown).status_code == 201


# --- case 3: undo, skip and submit settle one after another -----------------------------------

@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("answered", [1, 3])
def test_parallel_undos_take_back_one_answer_each_and_counters_equal_rows(answered):
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=4, per_prompt=1, redundancy=2)
    api = api_client(user)
    for _ in range(answered):
        assert submit(api, study, next_item(api, study).json()).status_code == 201
    clients = [api_client(user) for _ in range(3)]
    statuses = race(3, lambda i: undo(clients[i], study).status_code)
    assert statuses == Counter({200: min(3, answered), 409: 3 - min(3, answered)}), statuses
    assert not Judgment.objects.exists()
    check_study_consistent(study)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_parallel_submits_skips_and_undos_of_one_annotator_keep_every_counter():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=6, per_prompt=1, redundancy=2, gold_share=0.5,
                          truth=lambda checkpoint, prompt, index: checkpoint == "alpha-ckpt")
    api = api_client(user)
    for _round in range(4):
        shown = [next_item(api, study).json()]
        shown.append(next_item(api, study, exclude=[shown[0]["item"]]).json())
        clients = [api_client(user) for _ in range(6)]
        actions = [lambda c: submit(c, study, shown[0]), lambda c: skip(c, study, shown[1]),
                   lambda c: undo(c, study), lambda c: undo(c, study),
                   lambda c: submit(c, study, shown[0], "right"), lambda c: skip(c, study, shown[1])]
        statuses = race(6, lambda i: actions[i](clients[i]).status_code)
        assert not any(code >= 500 for code in statuses), statuses
        check_study_consistent(study)


# --- case 4: whatever removes an annotator gives their slots back -----------------------------

def test_deleting_an_annotator_gives_their_leased_slots_back():
    leaver, stayer = annotators(2)
    study = open_pairwise(members=[leaver, stayer], prompts=1, per_prompt=1, redundancy=1)
    assert assignment_next(study=study, annotator=leaver) is not None
    assert StudyItem.objects.get().taken == 1
    leaver.delete()
    assert StudyItem.objects.get().taken == 0
    assert assignment_next(study=study, annotator=stayer) is not None
    check_study_consistent(study)


def test_a_deactivated_annotators_leases_are_released_for_others():
    leaver, stayer = annotators(2)
    study = open_pairwise(members=[leaver, stayer], prompts=1, per_prompt=1, redundancy=1)
    assert assignment_next(study=study, annotator=leaver) is not None
    leaver.is_active = False
    leaver.save()
    assert assignment_next(study=study, annotator=stayer) is not None  # the full study releases what it can
    assert Assignment.objects.get(annotator=leaver).state == Assignment.State.EXPIRED
    check_study_consistent(study)


# --- case 9 (the engine's part): a few open leases at most, a quota of answers ------------------

def test_preloading_stops_at_the_studys_cap_on_open_leases():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=10, per_prompt=1, redundancy=1)
    api = api_client(user)
    held = [next_item(api, study).json()["item"]]
    while len(held) < study.max_open_leases:
        held.append(next_item(api, study, exclude=held).json()["item"])
    over = next_item(api, study, exclude=held)
    assert over.status_code == 409 and over.json()["error"] == "too_many_leases"
    for _ in range(5):  # excluding items that are not theirs brings back one they hold
        assert next_item(api, study, exclude=[str(uuid.uuid4()) for _ in range(50)]).json()["item"] in held
    assert Assignment.objects.filter(annotator=user, state="active").count() == study.max_open_leases


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("preload", [True, False])
def test_parallel_next_requests_never_pass_the_cap(preload):
    """Preloads (with exclude) stop at the cap; plain requests with no lease held yet all get
    the one the first of them made (16 racing requests once held 12 leases)."""
    (user,) = annotators(1)
    clients = [api_client(user) for _ in range(16)]
    for _round in range(6):
        study = open_pairwise(members=[user], prompts=40, per_prompt=1, redundancy=1)
        exclude = [next_item(clients[0], study).json()["item"]] if preload else []
        statuses = race(16, lambda i: next_item(clients[i], study, exclude=[*exclude, str(uuid.uuid4())]
                                                if preload else []).status_code)
        held = Assignment.objects.filter(annotator=user, state="active", item__study=study).count()
        if preload:
            assert set(statuses) <= {200, 409} and held <= study.max_open_leases, (statuses, held)
        else:
            assert statuses == Counter({200: 16}) and held == 1, (statuses, held)
        check_study_consistent(study)


def test_only_answers_fill_the_quota_and_earn_the_code():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=6, per_prompt=1, redundancy=1, items_per_annotator=2)
    StudyMembership.objects.filter(annotator=user).update(completion_code="OWN-CODE")
    api = api_client(user)
    for _ in range(3):
        assert skip(api, study, next_item(api, study).json()).status_code == 201
    for _ in range(2):
        shown = next_item(api, study).json()
        assert "item" in shown, shown  # skips did not end the quota
        assert submit(api, study, shown).status_code == 201
    done = next_item(api, study).json()
    assert done["done"] and done["reason"] == "finished" and done["completion_code"] == "OWN-CODE"


def test_skipping_to_the_end_earns_no_code():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1, redundancy=1, items_per_annotator=2)
    api = api_client(user)
    assert submit(api, study, next_item(api, study).json()).status_code == 201
    for _ in range(2):
        assert skip(api, study, next_item(api, study).json()).status_code == 201
    done = next_item(api, study).json()
    assert done["done"] and done["completion_code"] == "" and done["reason"] == "no_items_left"


# --- case 7: gold is graded inside the statements every answer takes ----------------------------

def test_gold_answers_are_graded_paused_on_and_taken_back_like_any_other():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=6, per_prompt=1, redundancy=1, gold_share=1.0,
                          gold_min_answers=2, gold_min_accuracy=0.99,
                          truth=lambda checkpoint, prompt, index: checkpoint == "alpha-ckpt")
    api = api_client(user)

    def wrong(shown) -> str:
        item = StudyItem.objects.get(public_id=shown["item"])
        a_on_left = Assignment.objects.get(pk=shown["lease"]).a_on_left
        return "right" if (item.gold_answer == "a") == a_on_left else "left"

    first = next_item(api, study).json()
    assert submit(api, study, first, wrong(first)).status_code == 201
    assert Judgment.objects.get().gold_correct is False
    check_study_consistent(study)
    assert undo(api, study).status_code == 200  # the grade goes with the answer
    check_study_consistent(study)
    assert StudyMembership.objects.get().gold_answered == 0
    assert submit(api, study, first, wrong(first)).status_code == 201
    second = next_item(api, study).json()
    assert submit(api, study, second, wrong(second)).status_code == 201
    membership = StudyMembership.objects.get()
    assert membership.is_paused and membership.paused_reason == "gold accuracy 0/2 is below 99%"
    assert set(Judgment.objects.values_list("is_flagged", flat=True)) == {True}
    assert next_item(api, study).json()["error"] == "paused"
    check_study_consistent(study)


def test_the_cap_on_open_leases_is_a_setting_of_the_api_with_bounds(researcher):
    from tests.factories import make_images

    dataset, checkpoints = make_images(prompts=2, per_prompt=1)
    api = api_client(researcher)
    body = {"name": "capped", "kind": "pairwise", "dataset": dataset.id, "checkpoints": [c.id for c in checkpoints]}
    assert api.post(reverse("api-studies"), {**body, "max_open_leases": 21}, format="json").json().keys() \
        == {"max_open_leases"}
    created = api.post(reverse("api-studies"), {**body, "max_open_leases": 1}, format="json")
    assert created.status_code == 201 and created.json()["max_open_leases"] == 1


def test_a_crowd_link_needs_a_quota_of_answers(researcher):
    """Without one, a crowd worker who skipped every item but one had 'finished' and got a code."""
    from tests.factories import make_images

    dataset, checkpoints = make_images(prompts=2, per_prompt=1)
    api = api_client(researcher)
    body = {"name": "crowd", "kind": "pairwise", "dataset": dataset.id, "checkpoints": [c.id for c in checkpoints],
            "crowd_link": True}
    refused = api.post(reverse("api-studies"), body, format="json")
    assert refused.status_code == 400 and "items_per_annotator" in refused.content.decode()
    assert api.post(reverse("api-studies"), {**body, "items_per_annotator": 5}, format="json").status_code == 201


def test_a_held_lease_released_before_its_renewal_is_not_handed_back_as_renewed(monkeypatch):
    """A reload's next/ read a lapsed held lease, the release sweep took it back before the
    renewal: the page got a lease that held no slot, with an expiry that was never stored."""
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1, redundancy=1)
    api = api_client(user)
    first = next_item(api, study).json()
    now = timezone.now()
    Assignment.objects.filter(pk=first["lease"]).update(leased_at=now - timedelta(seconds=30),
                                                        expires_at=now - timedelta(seconds=1))
    renew = queue_sql.lease_renew

    def released_first(**kwargs):
        queue_sql.leases_release_lapsed(now=timezone.now())  # the sweep wins the race
        return renew(**kwargs)

    monkeypatch.setattr(queue_sql, "lease_renew", released_first)
    shown = next_item(api, study).json()
    lease = Assignment.objects.get(pk=shown["lease"])
    assert lease.state == Assignment.State.ACTIVE and lease.expires_at > timezone.now()
    assert Assignment.objects.get(pk=first["lease"]).state == Assignment.State.EXPIRED
    check_study_consistent(study)


def test_a_skips_client_id_names_one_item_only():
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1, redundancy=1)
    api = api_client(user)
    first = next_item(api, study).json()
    body = {"item": first["item"], "lease": first["lease"], "client_id": str(uuid.uuid4()), "reason": "unsure"}
    assert api.post(reverse("api-skip", args=[study.public_id]), body, format="json").status_code == 201
    second = next_item(api, study).json()
    reused = api.post(reverse("api-skip", args=[study.public_id]),
                      {**body, "item": second["item"], "lease": second["lease"]}, format="json")
    assert reused.status_code == 400 and "already used for another item" in reused.json()["detail"]
    assert Assignment.objects.get(pk=second["lease"]).state == Assignment.State.ACTIVE
    check_study_consistent(study)


@pytest.mark.parametrize("endpoint", ["api-submit", "api-skip"])
def test_a_late_resend_of_an_answer_taken_back_does_not_bring_it_back(endpoint):
    """Tab 1's answer is stored but its response lost; tab 2 takes it back (undo); tab 1 sends
    it again: it was stored again, and the answer then given in tab 2 was refused."""
    (user,) = annotators(1)
    study = open_pairwise(members=[user], prompts=3, per_prompt=1, redundancy=1)
    first_tab, second_tab = api_client(user), api_client(user)
    shown = next_item(first_tab, study).json()
    answer = {"item": shown["item"], "lease": shown["lease"], "client_id": str(uuid.uuid4()),
              **({"choice": "left"} if endpoint == "api-submit" else {"reason": "unsure"})}
    assert first_tab.post(reverse(endpoint, args=[study.public_id]), answer, format="json").status_code == 201
    assert undo(second_tab, study).status_code == 200
    resent = first_tab.post(reverse(endpoint, args=[study.public_id]), answer, format="json")
    assert resent.status_code == 409 and resent.json()["error"] == "answer_taken_back", resent.content
    assert not Judgment.objects.exists() and not Skip.objects.exists()
    assert submit(second_tab, study, shown, "right").status_code == 201
    check_study_consistent(study)
