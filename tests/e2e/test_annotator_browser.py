"""The annotator's page end to end, in headless Chromium: log in, answer with the keyboard, undo."""
import re

import pytest
from playwright.sync_api import Page, expect

from annotate.models import Assignment, Judgment, Study, StudyItem
from annotate.services.annotation import canonical_answer
from annotate.services.demo import DEMO_CHECKPOINTS, demo_seed
from tests.e2e.test_annotator_screen import expect_shown

pytestmark = pytest.mark.django_db(transaction=True)

PAIRWISE = "Demo: which image matches?"
RATING = "Demo: does it match?"
TIMEOUT_MS = 10_000
ITEM_URL = re.compile(r"/annotate/[0-9a-f-]{36}/items/([0-9a-f-]{36})/(left|right|single)\.jpg\?v=[0-9a-f]+$")


class Seen:
    """Everything the browser fetched: URLs, and the bodies of the JSON answers."""

    def __init__(self, page: Page):
        self.urls: list[str] = []
        self.json_bodies: list[str] = []
        self.unread: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("response", self._response)

    def _response(self, response):
        if "json" in (response.headers.get("content-type") or ""):
            try:
                self.json_bodies.append(response.text())
            except Exception as exc:  # noqa: BLE001 - reported by the test instead
                self.unread.append(f"{response.url}: {exc}")


# Every value #progress-text takes, in order, from the page's first render on.
RECORD_PROGRESS = """
window.progressSeen = [];
document.addEventListener("DOMContentLoaded", () => {
  const text = document.getElementById("progress-text");
  if (!text) return;
  window.progressSeen.push(text.textContent);
  new MutationObserver((changes) => changes.forEach((change) => change.addedNodes.forEach(
    (node) => window.progressSeen.push(node.textContent)))).observe(text, {childList: true});
});
"""


def progress_seen(page: Page) -> list[int]:
    return [int(value.split(" of ")[0]) for value in page.evaluate("window.progressSeen")]


def log_in(page: Page, base_url: str) -> None:
    page.goto(base_url + "/accounts/login/")
    page.fill("#id_username", "annotator")
    page.fill("#id_password", "annotator-demo-pass")
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(base_url + "/")


def open_study(page: Page, base_url: str, name: str) -> None:
    if page.url != base_url + "/":
        page.goto(base_url + "/")
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.locator("#task")).to_be_visible(timeout=TIMEOUT_MS)
    expect_shown(page)


def shown_item(page: Page, slot: str) -> tuple[str, str]:
    """The public id of the item on screen, read from its image URL, and that URL."""
    src = page.locator(f"#img-{slot}").get_attribute("src")
    match = ITEM_URL.search(src or "")
    assert match, f"unexpected image URL {src!r}"
    return match.group(1), src


def progress(page: Page) -> tuple[int, int]:
    done, target = re.fullmatch(r"(\d+) of (\d+)", page.locator("#progress-text").inner_text()).groups()
    value = page.eval_on_selector("#progress", "p => [p.value, p.max]")
    assert value == [int(done), max(int(target), 1)]
    return int(done), int(target)


def answer(page: Page, key: str, slot: str, expect_done: int) -> None:
    """Press a key, then wait until the server has counted the answer and another item is shown."""
    before, _ = shown_item(page, slot)
    with page.expect_response(lambda r: r.url.endswith("/submit/") and r.request.method == "POST",
                              timeout=TIMEOUT_MS) as submitted:
        page.keyboard.press(key)
    assert submitted.value.status == 201, submitted.value.text()
    # First the next item, then the count: once both are there, nothing that could still change
    # the progress bar is in flight (the answer's response is in, and so is the next item's lease).
    page.wait_for_function(
        "([slot, item]) => { const src = document.getElementById('img-' + slot).getAttribute('src') || '';"
        " return !document.getElementById('task').hidden && src !== '' && !src.includes(item); }",
        arg=[slot, before], timeout=TIMEOUT_MS)
    expect(page.locator("#progress-text")).to_have_text(re.compile(rf"^{expect_done} of \d+$"),
                                                        timeout=TIMEOUT_MS)
    expect_shown(page)


def image_bytes(page: Page, src: str) -> bytes:
    response = page.request.get(src)  # relative to base_url, with the page's session cookie
    assert response.ok, (src, response.status)
    return response.body()


def assert_nothing_names_a_checkpoint(page: Page, seen: Seen) -> None:
    html = page.content()
    sources = page.eval_on_selector_all("img", "images => images.map(i => i.getAttribute('src') || '')")
    assert not seen.unread
    assert sum('"prompt"' in body for body in seen.json_bodies) >= 2  # the item payloads were read
    for name in DEMO_CHECKPOINTS:
        assert name not in html
        for body in seen.json_bodies:
            assert name not in body
        for url in seen.urls + sources:
            assert name not in url
    for url in seen.urls + sources:
        assert "/generated/" not in url and "/media/" not in url, url
    for src in sources:
        assert src == "" or ITEM_URL.search(src), src


def test_annotator_answers_pairs_and_a_rating_with_the_keyboard(page: Page, live_server):
    demo_seed()
    pairwise, rating = Study.objects.get(name=PAIRWISE), Study.objects.get(name=RATING)
    assert pairwise.status == rating.status == Study.Status.OPEN
    page.set_default_timeout(TIMEOUT_MS)
    page.add_init_script(RECORD_PROGRESS)
    seen = Seen(page)

    log_in(page, live_server.url)
    open_study(page, live_server.url, PAIRWISE)
    assert progress(page) == (0, pairwise.items.count())

    keys = ["1", "2", "0", "ArrowLeft", "g"]
    expected = [("left", ""), ("right", ""), ("tie", ""), ("left", ""), ("tie", "both_good")]
    shown = []  # (item, left image URL, right image URL) at the moment of each answer
    for n, key in enumerate(keys, start=1):
        item, left_src = shown_item(page, "left")
        shown.append((item, left_src, shown_item(page, "right")[1]))
        answer(page, key, "left", expect_done=n)
        assert progress(page)[0] == n
    assert page.locator("#progress").evaluate("p => p.value") == 5
    counts = progress_seen(page)
    assert counts == sorted(counts) and counts[-1] == 5, f"the progress went backwards: {counts}"
    served = [(image_bytes(page, left), image_bytes(page, right)) for _, left, right in shown]
    assert_nothing_names_a_checkpoint(page, seen)

    open_study(page, live_server.url, RATING)
    assert progress(page) == (0, rating.items.count())
    rated_item, _ = shown_item(page, "single")
    answer(page, "y", "single", expect_done=1)
    assert_nothing_names_a_checkpoint(page, seen)

    judgments = list(Judgment.objects.filter(item__study=pairwise, annotator__username="annotator")
                     .select_related("item__image_a", "item__image_b", "assignment")
                     .order_by("created_at", "pk"))
    assert [(j.choice, j.reason) for j in judgments] == expected
    assert [str(j.item.public_id) for j in judgments] == [item for item, _, _ in shown]
    for judgment, (left, right) in zip(judgments, served, strict=True):
        assert judgment.a_on_left is not None
        assert judgment.a_on_left == judgment.assignment.a_on_left
        assert judgment.assignment.state == Assignment.State.ANSWERED
        assert judgment.time_spent_ms is not None and judgment.time_spent_ms >= 0
        # The side stored is the side the browser showed: compare the served images with A and B.
        a, b = judgment.item.image_a.file.read(), judgment.item.image_b.file.read()
        assert (left, right) == ((a, b) if judgment.a_on_left else (b, a))
        if judgment.choice == "tie":
            assert canonical_answer(judgment) == "tie"
        else:
            a_chosen = (judgment.choice == "left") == judgment.a_on_left
            assert canonical_answer(judgment) == ("a" if a_chosen else "b")
    assert all(StudyItem.objects.get(pk=j.item_id).judgment_count == 1 for j in judgments)

    rated = Judgment.objects.get(item__study=rating, annotator__username="annotator")
    assert str(rated.item.public_id) == rated_item
    assert rated.choice == "aligned" and rated.a_on_left is None and rated.score is None
    assert canonical_answer(rated) == "aligned" and rated.time_spent_ms is not None


def test_undo_brings_back_the_last_item(page: Page, live_server):
    demo_seed()
    study = Study.objects.get(name=PAIRWISE)
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, live_server.url)
    open_study(page, live_server.url, PAIRWISE)

    first, _ = shown_item(page, "left")
    answer(page, "1", "left", expect_done=1)
    second, second_left = shown_item(page, "left")
    answer(page, "2", "left", expect_done=2)
    third, _ = shown_item(page, "left")
    mine = Judgment.objects.filter(item__study=study, annotator__username="annotator")
    assert mine.count() == 2

    with page.expect_response(lambda r: r.url.endswith("/undo/"), timeout=TIMEOUT_MS) as undone:
        page.keyboard.press("u")
    assert undone.value.status == 200, undone.value.text()
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^1 of \d+$"))
    expect(page.locator("#status")).to_have_text("Your last answer was taken back.")
    assert shown_item(page, "left") == (second, second_left)
    assert progress(page)[0] == 1
    assert [str(item) for item in mine.values_list("item__public_id", flat=True)] == [first]
    assert StudyItem.objects.get(public_id=second).judgment_count == 0

    # Answered again, differently: stored once, and the item held back comes next.
    answer(page, "0", "left", expect_done=2)
    assert shown_item(page, "left")[0] == third
    assert mine.get(item__public_id=second).choice == "tie"
    assert mine.count() == 2


def test_on_a_tablet_the_answers_are_in_view_and_answer_by_touch(page: Page, live_server):
    """768 x 1024, answering with the buttons instead of keys: the images and every answer fit
    without scrolling, and the buttons are large enough to tap."""
    demo_seed()
    page.set_viewport_size({"width": 768, "height": 1024})
    log_in(page, live_server.url)
    open_study(page, live_server.url, PAIRWISE)
    page.locator(".instructions summary").click()  # folded, as after the first answer
    for selector in ("#img-left", "#img-right", "button[data-choice=left]", "button[data-choice=right]",
                     "button[data-choice=tie]"):
        box = page.locator(selector).first.bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= 1024, (selector, box)
        if selector.startswith("button"):
            assert box["height"] >= 40  # a comfortable touch target
    first, _ = shown_item(page, "left")
    with page.expect_response(lambda r: r.url.endswith("/submit/")) as submitted:
        page.locator("button[data-choice=right]").click()
    assert submitted.value.status == 201
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^1 of "), timeout=TIMEOUT_MS)
    # The count can come before the next item is drawn (its lease may still be on its way).
    expect(page.locator("#img-left")).not_to_have_attribute("src", re.compile(re.escape(first)), timeout=TIMEOUT_MS)
    judgment = Judgment.objects.get()
    assert judgment.choice == "right" and judgment.a_on_left is not None
