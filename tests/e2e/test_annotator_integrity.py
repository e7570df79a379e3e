"""The annotator's screen takes answers only for what the annotator sees (issue 13): no answer
before the item's images are shown, every answer tied to the display (lease) it was given to,
and unsent answers kept per user, never sent under someone else's session."""
import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, Request, Route, expect

from annotate.models import Assignment, Judgment, Skip, Study, StudyItem
from annotate.roles import ANNOTATORS
from annotate.services import queue_sql
from annotate.services.accounts import user_create_with_role
from annotate.services.studies import study_add_members
from tests.e2e.test_annotator_browser import image_bytes, shown_item
from tests.e2e.test_annotator_screen import (  # noqa: F401 - pairs is a fixture
    TIMEOUT_MS, USER, annotator, draw_files, expect_announced, expect_shown, open_study, pairs, pending_key, sign_in,
)
from tests.factories import open_rating

pytestmark = pytest.mark.django_db(transaction=True)

SUBMIT_OR_SKIP = re.compile(r"/(submit|skip)/$")
WAIT = "Wait for the images to be shown: answers are taken from then on."


class HeldImages:
    """A slow connection for the items' images: each item's are held back until the test lets
    them through (a preload of the next item included)."""

    def __init__(self, page: Page):
        self.held: list[tuple[str, Route]] = []
        self.free: set[str] = set()
        page.route("**/items/**", self._route)

    @staticmethod
    def _item(url: str) -> str:
        return re.search(r"/items/([0-9a-f-]{36})/", url).group(1)

    def _route(self, route: Route) -> None:
        item = self._item(route.request.url)
        if item in self.free:
            route.continue_()
        else:
            self.held.append((item, route))

    def release(self, item: str) -> None:
        self.free.add(item)
        for _, route in [h for h in self.held if h[0] == item]:
            route.continue_()
        self.held = [h for h in self.held if h[0] != item]


def answers_sent(page: Page) -> list[dict]:
    """The bodies of every submit and skip the page sends, in order."""
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if SUBMIT_OR_SKIP.search(r.url) else None)
    return sent


def left_is_a(page: Page, judgment: Judgment, left_url: str) -> bool:
    """Whether a left image the page showed is the item's image A: its URL names the lease that
    placed it, and the server answers with that lease's image."""
    left = image_bytes(page, left_url)
    a, b = judgment.item.image_a.file.read(), judgment.item.image_b.file.read()
    assert left in (a, b) and a != b
    return left == a


def test_no_answer_is_taken_until_the_items_images_are_shown(page: Page, live_server, pairs):
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    held = HeldImages(page)
    sent = answers_sent(page)
    open_study(page, live_server.url, pairs, shown=False)
    first, _ = shown_item(page, "left")
    held.release(first)
    with page.expect_response(lambda r: r.url.endswith("/submit/")) as submitted:
        page.locator("button[data-choice=left]").click()  # waits until the button takes answers
    assert submitted.value.status == 201

    # The next item's prompt is on screen while its images are still on their way (held).
    expect_announced(page, 2)
    second, second_left = shown_item(page, "left")
    assert second != first
    for key in ("1", "2", "ArrowLeft", "0", "g", "s"):
        page.keyboard.press(key)
    for selector in ("button[data-choice=left]", "button[data-choice=right]", "button[data-skip=unsure]"):
        page.locator(selector).first.click(force=True)  # a tap: disabled buttons take none
    page.wait_for_timeout(1500)  # the slow connection: the images are still held
    assert [body["item"] for body in sent] == [first], "an answer was sent for an item not yet seen"
    assert not Judgment.objects.filter(item__public_id=second).exists()
    assert not Skip.objects.exists()

    # What the annotator sees meanwhile: no pixels of the previous item, a loading note, and
    # answers that say they are not taken yet.
    images = page.locator("#task .images")
    expect(images).to_have_attribute("aria-busy", "true")
    expect(page.locator("#loading")).to_be_visible()
    expect(page.locator("#loading")).to_have_text("Loading images\u2026")
    for slot in ("left", "right"):
        assert page.locator(f"#img-{slot}").evaluate("i => getComputedStyle(i).visibility") == "hidden"
        assert first not in page.locator(f"#img-{slot}").get_attribute("src")
    expect(page.locator("button[data-choice=left]")).to_be_disabled()
    expect(page.locator("button[data-skip=unsure]")).to_be_disabled()
    expect(page.get_by_role("button", name="Image did not load")).to_be_enabled()
    expect(page.locator("#status")).to_have_text(WAIT)

    released_at = time.monotonic()
    held.release(second)
    expect_shown(page)
    expect(page.locator("#loading")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("")
    for slot in ("left", "right"):
        assert page.locator(f"#img-{slot}").evaluate(
            "i => getComputedStyle(i).visibility === 'visible' && i.complete && i.naturalWidth > 0")
    with page.expect_response(lambda r: r.url.endswith("/submit/")) as submitted:
        page.keyboard.press("2")
    assert submitted.value.status == 201
    since_shown_ms = (time.monotonic() - released_at) * 1000

    judgment = Judgment.objects.select_related("item__image_a", "item__image_b").get(item__public_id=second)
    assert judgment.choice == "right"
    assert judgment.a_on_left == left_is_a(page, judgment, second_left)
    # Counted from when the images were shown, not from the prompt (1.5 s earlier).
    assert 0 <= judgment.time_spent_ms <= since_shown_ms
    assert [body["item"] for body in sent] == [first, second]


def test_an_answer_to_a_display_redrawn_in_another_tab_is_refused_and_explained(page: Page, live_server, pairs):
    """Two tabs of one session show the same item (the second gets the held lease back). The lease
    lapses and the item is leased again in the second tab with its sides drawn the other way.
    An answer given in the first tab, to the old display, is never stored against the new sides:
    the server refuses it, the page says so and shows the item as it is now, and the answer then
    given is stored with the sides that tab showed."""
    Study.objects.filter(pk=pairs.pk).update(lease_seconds=10)
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    open_study(page, live_server.url, pairs)
    item, first_display = shown_item(page, "left")
    other = page.context.new_page()
    other.set_default_timeout(TIMEOUT_MS)
    open_study(other, live_server.url, pairs)
    assert shown_item(other, "left") == (item, first_display)
    old = Assignment.objects.get(item__public_id=item, state=Assignment.State.ACTIVE)

    # The lease lapses (10 s on the clock the service is given) and is released; the second tab
    # is reloaded and leases the item anew, until the draw puts its sides the other way round.
    for _ in range(30):
        queue_sql.leases_release_lapsed(now=timezone.now() + timedelta(seconds=11), study_id=pairs.pk)
        other.reload()
        expect_shown(other)
        new = Assignment.objects.filter(item__public_id=item, state=Assignment.State.ACTIVE).first()
        if new is not None and shown_item(other, "left")[0] == item and new.a_on_left != old.a_on_left:
            break
    else:
        pytest.fail("the item was never leased again with its sides the other way round")
    second_display = shown_item(other, "left")[1]
    assert second_display != first_display

    sent = answers_sent(page)
    with page.expect_response(lambda r: r.url.endswith("/submit/")) as refused:
        page.keyboard.press("1")  # "left is better", given to the first display
    assert refused.value.status == 409 and refused.value.json()["error"] == "stale_display"
    assert sent[0]["lease"] == old.pk
    status = page.locator("#status")
    expect(status).to_contain_text("That answer was not stored: the item was shown again since")
    expect(status).to_contain_text("answer it as you see it")
    expect(status).to_have_class(re.compile(r"\berror\b"))
    assert not Judgment.objects.filter(item__public_id=item).exists()
    # The item comes back in this tab as it is now: the second tab's display, the same sides.
    expect(page.locator("#img-left")).to_have_attribute("src", second_display)
    expect_shown(page)
    assert page.evaluate("key => JSON.parse(localStorage.getItem(key) || '[]')", pending_key(page)) == []

    with page.expect_response(lambda r: r.url.endswith("/submit/")) as stored:
        page.keyboard.press("1")
    assert stored.value.status == 201, stored.value.text()
    judgment = Judgment.objects.select_related("item__image_a", "item__image_b").get(item__public_id=item)
    assert sent[1]["lease"] == judgment.assignment_id == new.pk
    assert judgment.choice == "left"
    assert judgment.a_on_left == new.a_on_left == left_is_a(page, judgment, second_display)


def test_a_preload_refused_for_too_many_leases_is_no_error(page: Page, live_server, pairs):
    """409 too_many_leases on the preload (other tabs hold the study's most items): no preload
    for now, nothing said, and the next item is asked for once the one on screen is answered."""
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    refused: list[str] = []

    def refuse_the_preload(route: Route) -> None:
        if not refused and (route.request.post_data_json or {}).get("exclude"):
            refused.append(route.request.url)
            route.fulfill(status=409, json={"error": "too_many_leases", "detail": "you hold 3 items already"})
        else:
            route.continue_()

    page.route("**/next/", refuse_the_preload)
    open_study(page, live_server.url, pairs)
    page.wait_for_load_state("networkidle")
    assert refused
    expect(page.locator("#status")).to_have_text("")
    with page.expect_response(lambda r: r.url.endswith("/submit/")):
        page.keyboard.press("1")
    expect_announced(page, 2)
    expect_shown(page)
    expect(page.locator("#status")).to_have_text("")


OTHER, OTHER_PASSWORD = "second-annotator", "second-pass-456"


def sign_out(page: Page) -> None:
    page.locator(".topbar form button[type=submit]").click()
    page.wait_for_load_state()


def test_unsent_answers_are_kept_per_user_and_never_sent_under_another_session(page: Page, live_server, media_root):
    """A leaves two answers unsent; on the same browser A signs out and B signs in. A's open page
    does not send them under B's session, B's page does not send them either (nor the old
    per-study key's), and they go out when A is back."""
    a = annotator()
    b = user_create_with_role(username=OTHER, password=OTHER_PASSWORD, role=ANNOTATORS)
    study = open_rating(prompts=4, per_prompt=2)
    study_add_members(study=study, usernames=[USER, OTHER])
    draw_files(media_root)
    page.set_default_timeout(TIMEOUT_MS)
    seen: list[Request] = []
    page.context.on("request", lambda r: seen.append(r) if SUBMIT_OR_SKIP.search(r.url) else None)

    page.clock.install()  # the page's retry waits are fast-forwarded below
    sign_in(page, live_server.url)
    page.route("**/submit/", lambda route: route.abort())  # the connection drops: answers stay pending
    open_study(page, live_server.url, study)
    key_a = pending_key(page)
    assert key_a == f"calibra-pending-{a.pk}-{study.public_id}"
    for n, key in enumerate(("y", "n"), start=1):
        expect_shown(page)
        page.keyboard.press(key)
        page.wait_for_function("([key, n]) => JSON.parse(localStorage.getItem(key) || '[]').length === n",
                               arg=[key_a, n])
        if n == 1:
            expect_announced(page, 2)
    entries = page.evaluate("key => JSON.parse(localStorage.getItem(key))", key_a)
    assert [e["user"] for e in entries] == [str(a.pk)] * 2
    a_ids = {e["body"]["client_id"] for e in entries}
    # An answer under the old per-study key (whose, no one can tell): never sent.
    unknown = "00000000-0000-4000-8000-000000000001"
    page.evaluate("([key, entry]) => localStorage.setItem(key, JSON.stringify([entry]))",
                  [f"calibra-pending-{study.public_id}", {"path": "submit/", "body": {
                      "item": str(StudyItem.objects.filter(study=study).first().public_id), "client_id": unknown,
                      "choice": "aligned"}}])

    # In another tab A signs out and B signs in; A's page, still open, then gets its connection back.
    other = page.context.new_page()
    other.set_default_timeout(TIMEOUT_MS)
    b_sent = answers_sent(other)
    other.goto(live_server.url + "/")
    sign_out(other)
    sign_in(other, live_server.url, OTHER, OTHER_PASSWORD)
    page.unroute("**/submit/")
    with page.expect_response(lambda r: r.url.endswith("/submit/")) as retried:
        page.clock.fast_forward(60_000)
    assert retried.value.status == 403  # not B's page: refused, not stored as B's
    expect(page.locator("#signed-out")).to_be_visible()
    assert not Judgment.objects.filter(annotator=b).exists()

    open_study(other, live_server.url, study)
    other.wait_for_load_state("networkidle")
    assert pending_key(other) == f"calibra-pending-{b.pk}-{study.public_id}"
    with other.expect_response(lambda r: r.url.endswith("/submit/")) as own:
        other.keyboard.press("y")
    assert own.value.status == 201
    assert Judgment.objects.filter(annotator=b).count() == 1
    assert len(b_sent) == 1 and b_sent[0]["client_id"] not in a_ids | {unknown}
    assert len(other.evaluate("key => JSON.parse(localStorage.getItem(key))", key_a)) == 2  # still A's

    # A is back: A's answers go out, as A's.
    sign_out(other)
    sign_in(other, live_server.url)
    open_study(other, live_server.url, study)
    other.wait_for_function("key => localStorage.getItem(key) === '[]'", arg=key_a)
    assert {str(c) for c in Judgment.objects.filter(annotator=a).values_list("client_id", flat=True)} == a_ids
    assert unknown not in [r.post_data_json["client_id"] for r in seen]
    assert not Judgment.objects.filter(client_id=unknown).exists()
