"""The annotator's screen in headless Chromium: what it does when the session ends or the
annotator is paused, where focus goes, which keys answer, how it reads at phone width, the
1-5 scale's labels, and what a screen reader and the status line are told."""
import re

import pytest
from PIL import Image as PILImage
from playwright.sync_api import Page, expect

from annotate.models import Image, Judgment, Skip, Study, StudyMembership
from annotate.roles import ANNOTATORS
from annotate.services.accounts import user_create_with_role
from annotate.services.demo import demo_seed
from annotate.services.studies import study_add_members
from tests.factories import open_pairwise, open_rating

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT_MS = 10_000
USER, PASSWORD = "screen-annotator", "screen-pass-123"
PAIRWISE = "Demo: which image matches?"
ERR_COLOUR = "rgb(180, 35, 24)"  # --err in app.css


def member(study: Study) -> None:
    study_add_members(study=study, usernames=[USER])


def annotator():
    return user_create_with_role(username=USER, password=PASSWORD, role=ANNOTATORS)


def sign_in(page: Page, base_url: str, username: str = USER, password: str = PASSWORD) -> None:
    page.goto(base_url + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def open_study(page: Page, base_url: str, study: Study, *, shown: bool = True) -> None:
    page.goto(f"{base_url}/annotate/{study.public_id}/")
    expect(page.locator("#task")).to_be_visible(timeout=TIMEOUT_MS)
    if shown:
        expect_shown(page)


def expect_shown(page: Page) -> None:
    """Wait until the images of the item on screen are shown: only then does it take answers."""
    expect(page.locator("#task .images")).to_have_attribute("aria-busy", "false", timeout=TIMEOUT_MS)


def done(page: Page) -> int:
    return int(page.locator("#progress-text").inner_text().split(" of ")[0])


def pending_key(page: Page) -> str:
    """This page's key for unsent answers: per user and study."""
    return page.evaluate("() => { const r = document.getElementById('annotator');"
                         " return 'calibra-pending-' + r.dataset.user + '-' + r.dataset.study; }")


def pending(page: Page, study: Study) -> list:
    assert pending_key(page).endswith(f"-{study.public_id}")
    return page.evaluate("key => JSON.parse(localStorage.getItem(key) || '[]')", pending_key(page))


def prompt_shown(page: Page) -> str:
    return page.locator("#prompt").inner_text()


def expect_announced(page: Page, n: int) -> str:
    """Wait until item n is on screen and the live region names it with the prompt shown.

    Both are read in the page in one go: the progress line can move (from the submit's answer)
    before the next item is drawn, so reading the prompt first could catch the previous item.
    """
    page.wait_for_function(
        "n => { const a = document.getElementById('announce').textContent;"
        " const p = document.getElementById('prompt').textContent;"
        " return p !== '' && a === 'Item ' + n + ': ' + p; }", arg=n, timeout=TIMEOUT_MS)
    return page.locator("#prompt").text_content()


def press_and_count(page: Page, key: str, expect_done: int) -> None:
    expect_shown(page)
    with page.expect_response(lambda r: r.url.endswith("/submit/"), timeout=TIMEOUT_MS) as submitted:
        page.keyboard.press(key)
    assert submitted.value.status == 201, submitted.value.text()
    expect(page.locator("#progress-text")).to_have_text(re.compile(rf"^{expect_done} of "), timeout=TIMEOUT_MS)
    # The count can come before the next item is drawn: a key pressed before then answers nothing.
    expect_announced(page, expect_done + 1)


def active_element(page: Page) -> str:
    return page.evaluate("() => { const a = document.activeElement;"
                         " return a.tagName.toLowerCase() + (a.id ? '#' + a.id : ''); }")


def draw_files(media_root) -> None:
    """A small JPEG for every image row (the page says so when an image does not load)."""
    for image in Image.objects.all():
        path = media_root / image.file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", (64, 64), ((image.pk * 53) % 256, (image.pk * 101) % 256, 120)).save(path, "JPEG")


@pytest.fixture
def rating(live_server, media_root):
    """A yes/no rating study with one member."""
    annotator()
    study = open_rating(prompts=4, per_prompt=2)
    member(study)
    draw_files(media_root)
    return study


@pytest.fixture
def pairs(live_server, media_root):
    annotator()
    study = open_pairwise(prompts=6, per_prompt=2)
    member(study)
    draw_files(media_root)
    return study


def test_signed_out_answers_are_kept_and_sent_after_signing_in_again(page: Page, live_server, rating):
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    open_study(page, live_server.url, rating)
    page.wait_for_load_state("networkidle")  # the next item's lease is in before the session ends
    # The session ends (it expired, or another tab logged out): the browser no longer holds it.
    # (Not a second tab that logs out and is closed mid-navigation: closing it hung Chromium
    # now and then, with no timeout to end it.)
    expect_shown(page)
    page.context.clear_cookies()

    with page.expect_response(lambda r: r.url.endswith("/submit/")) as submitted:
        page.keyboard.press("y")
    assert submitted.value.status in (401, 403)
    expect(page.locator("#signed-out")).to_be_visible()
    expect(page.locator("#task")).to_be_hidden()
    assert len(pending(page, rating)) == 1  # not dropped
    page.keyboard.press("n")  # no longer taken
    page.wait_for_timeout(300)
    assert len(pending(page, rating)) == 1 and Judgment.objects.count() == 0

    link = page.locator("#sign-in")
    assert link.get_attribute("href").endswith(f"?next=/annotate/{rating.public_id}/")
    link.click()
    page.fill("#id_username", USER)
    page.fill("#id_password", PASSWORD)
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/annotate/{rating.public_id}/")
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^1 of "))
    page.wait_for_function("key => localStorage.getItem(key) === '[]'", arg=pending_key(page))
    judgment = Judgment.objects.get()
    assert judgment.choice == "aligned" and judgment.annotator.username == USER


def answer_after(page: Page, base_url: str, study: Study, change, expect_status: int) -> None:
    """Open the study, let the next item's lease in, make the change (a pause, a close), then
    answer: the server refuses it with ``expect_status``."""
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, base_url)
    open_study(page, base_url, study)
    page.wait_for_load_state("networkidle")
    expect_shown(page)
    change()
    with page.expect_response(lambda r: r.url.endswith("/submit/")) as submitted:
        page.keyboard.press("y")
    assert submitted.value.status == expect_status


def test_a_paused_annotator_is_told_plainly_and_answers_are_kept(page: Page, live_server, rating):
    answer_after(page, live_server.url, rating, lambda: StudyMembership.objects.filter(study=rating).update(
        is_paused=True, paused_reason="please re-read the instructions"), expect_status=403)
    notice = page.locator("#paused")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Your work on this study is paused by the researcher; the answers you gave are kept.")
    expect(notice).to_contain_text("please re-read the instructions")
    expect(page.locator("#task")).to_be_hidden()
    assert page.locator("#task button[data-choice]").evaluate_all("bs => bs.every(b => b.disabled)")
    page.keyboard.press("n")
    page.wait_for_timeout(300)
    assert len(pending(page, rating)) == 1 and Judgment.objects.count() == 0
    expect(page.locator("#status")).not_to_have_class(re.compile(r"\berror\b"))

    page.reload()  # the same message, not a blank page
    expect(page.locator("#paused")).to_be_visible()
    expect(page.locator("#paused")).to_contain_text("please re-read the instructions")
    expect(page.locator("#task")).to_be_hidden()
    assert len(pending(page, rating)) == 1

    page.goto(live_server.url + "/")
    entry = page.locator(".study-list li", has_text=rating.name)
    expect(entry).to_contain_text("Paused")


def test_after_a_click_enter_and_space_do_not_answer_the_next_item(page: Page, live_server, pairs):
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    open_study(page, live_server.url, pairs)
    with page.expect_response(lambda r: r.url.endswith("/submit/")):
        page.locator("button[data-choice=left]").click()
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^1 of "))
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'prompt'")
    assert active_element(page) == "p#prompt"
    page.keyboard.press("Enter")
    page.keyboard.press("Space")
    page.wait_for_timeout(500)
    assert done(page) == 1 and Judgment.objects.count() == 1 and pending(page, pairs) == []

    # Enter on an answer button that has focus as a new item appears (within 300 ms) is ignored.
    expect_shown(page)
    page.keyboard.press("2")
    page.locator("button[data-choice=right]").press("Enter")  # focus and Enter in one call: well within 300 ms
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^2 of "))
    page.wait_for_timeout(500)
    assert done(page) == 2 and Judgment.objects.count() == 2


def test_folded_instructions_keep_the_shortcuts_and_arrow_down_scrolls(page: Page, live_server, pairs):
    page.set_default_timeout(TIMEOUT_MS)
    page.set_viewport_size({"width": 800, "height": 500})
    sign_in(page, live_server.url)
    open_study(page, live_server.url, pairs)
    summary = page.locator(".instructions summary")
    summary.click()  # fold the instructions: the summary keeps focus
    assert page.locator(".instructions").evaluate("d => d.open") is False
    assert active_element(page) == "summary"
    press_and_count(page, "1", 1)
    press_and_count(page, "2", 2)
    summary.focus()
    page.keyboard.press("Enter")  # Enter on the summary still unfolds it, and answers nothing
    assert page.locator(".instructions").evaluate("d => d.open") is True
    page.wait_for_timeout(300)
    assert done(page) == 2

    # ArrowDown is the scroll key, not tie.
    page.locator("#prompt").focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(500)
    assert done(page) == 2 and Judgment.objects.count() == 2
    assert page.evaluate("() => window.scrollY") > 0
    assert "ArrowDown" not in (page.locator("button[data-choice=tie]").first.get_attribute("aria-keyshortcuts") or "")
    assert "\u2193" not in page.locator(".instructions .keys").inner_text()


def seen_text(page: Page, selector: str) -> str:
    """The text as rendered (innerText: what CSS hides is left out), spaces squeezed."""
    return " ".join(page.locator(selector).first.inner_text().split())


def _in_view(page: Page, selector: str, height: int) -> bool:
    box = page.locator(selector).first.bounding_box()
    return bool(box) and box["y"] >= 0 and box["y"] + box["height"] <= height


def test_at_1280x800_with_the_instructions_open_the_answers_are_in_view(page: Page, live_server):
    demo_seed()
    page.set_default_timeout(TIMEOUT_MS)
    page.set_viewport_size({"width": 1280, "height": 800})
    sign_in(page, live_server.url, "annotator", "annotator-demo-pass")
    open_study(page, live_server.url, Study.objects.get(name=PAIRWISE))
    assert page.locator(".instructions").evaluate("d => d.open") is True
    page.wait_for_function("() => document.getElementById('img-left').complete")
    for selector in ("#img-left", "#img-right", "button[data-choice=left]", "button[data-choice=tie]",
                     "button[data-choice=right]"):
        assert _in_view(page, selector, 800), (selector, page.locator(selector).first.bounding_box())


def test_at_phone_width_the_stacked_images_are_top_and_bottom_and_the_answers_stay_in_view(page: Page, live_server):
    demo_seed()
    page.set_default_timeout(TIMEOUT_MS)
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, live_server.url, "annotator", "annotator-demo-pass")
    open_study(page, live_server.url, Study.objects.get(name=PAIRWISE))
    captions = page.locator(".images.pair figcaption")
    assert [" ".join(t.split()) for t in captions.all_inner_texts()] == ["Top 1", "Bottom 2"]
    assert seen_text(page, "button[data-choice=left]") == "Top is better 1"
    assert seen_text(page, "button[data-choice=right]") == "Bottom is better 2"
    expect(page.get_by_role("button", name="Top is better")).to_be_visible()  # the accessible name too
    page.wait_for_function("() => document.getElementById('img-left').complete")
    assert page.locator("#img-left").get_attribute("alt").startswith("Top image for: ")
    for y in (0, 400):  # at the top, and scrolled to the second image: the answers are on screen
        page.evaluate("y => window.scrollTo(0, y)", y)
        for choice in ("left", "tie", "right"):
            assert _in_view(page, f".answer-bar button[data-choice={choice}]", 740), (y, choice)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375  # nothing sideways

    # Side by side again on a wide screen: Left and Right.
    page.set_viewport_size({"width": 1024, "height": 740})
    assert [" ".join(t.split()) for t in captions.all_inner_texts()] == ["Left 1", "Right 2"]
    assert seen_text(page, "button[data-choice=left]") == "Left is better 1"


def test_the_1_to_5_scale_shows_its_anchors_keys_and_names(page: Page, live_server, media_root):
    annotator()
    study = open_rating(prompts=2, per_prompt=1, rating_scale=Study.RatingScale.LIKERT5)
    member(study)
    draw_files(media_root)
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    open_study(page, live_server.url, study)
    buttons = page.locator("#task button[data-choice=score]")
    expect(buttons).to_have_count(5)
    first, last = buttons.nth(0), buttons.nth(4)
    expect(first).to_contain_text("not at all")
    expect(last).to_contain_text("perfectly")
    assert first.locator("kbd").inner_text() == "1" and last.locator("kbd").inner_text() == "5"
    expect(page.get_by_role("button", name="1: not at all")).to_be_visible()
    expect(page.get_by_role("button", name="5: perfectly")).to_be_visible()
    for n in range(5):
        label = buttons.nth(n).get_attribute("aria-label") or ""
        assert label.startswith(f"{n + 1}: ") and len(label) > 4
    press_and_count(page, "5", 1)
    assert Judgment.objects.get().score == 5


def test_each_item_is_announced_and_only_errors_show_in_the_error_colour(page: Page, live_server, pairs):
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    # The next item arrives late (the server is busy): the answer is counted before the next
    # item is drawn, and the announcement must wait for the item, not for the count.
    page.add_init_script("""(() => { const f = window.fetch; window.fetch = (u, o) => String(u).endsWith('next/')
        ? new Promise(r => setTimeout(r, 800)).then(() => f(u, o)) : f(u, o); })()""")
    open_study(page, live_server.url, pairs)
    announce = page.locator("#announce")
    assert announce.get_attribute("aria-live") == "polite"
    first = expect_announced(page, 1)
    press_and_count(page, "1", 1)
    expect_announced(page, 2)

    with page.expect_response(lambda r: r.url.endswith("/undo/")) as undone:
        page.keyboard.press("u")
    assert undone.value.status == 200
    status = page.locator("#status")
    expect(status).to_have_text("Your last answer was taken back.")
    expect(status).to_have_class(re.compile(r"\binfo\b"))
    assert status.evaluate("s => getComputedStyle(s).color") != ERR_COLOUR
    assert expect_announced(page, 1) == first  # the answer taken back is the item shown again

    # A refusal of one answer (409: say its lease lapsed and others completed the item) is an
    # error: that answer is dropped, and the line is in the error colour.
    page.route("**/submit/", lambda route: route.fulfill(
        status=409, json={"error": "item_unavailable", "detail": "your lease on this item expired"}))
    expect_shown(page)
    page.keyboard.press("2")
    expect(status).to_contain_text("not accepted: your lease on this item expired")
    expect(status).to_have_class(re.compile(r"\berror\b"))
    assert status.evaluate("s => getComputedStyle(s).color") == ERR_COLOUR
    page.wait_for_function("key => localStorage.getItem(key) === '[]'", arg=pending_key(page))
    expect(page.locator("#task")).to_be_visible()  # not a refusal of the annotator: the work goes on


def test_an_image_that_does_not_load_is_said_and_its_skip_records_why(page: Page, live_server, pairs, media_root):
    """Files gone from storage (the server answers 404, never 500): the page says which image
    did not load, in the error colour, and "Image did not load" skips with that reason."""
    for image in Image.objects.all():
        (media_root / image.file.name).unlink()
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    failed, requested = [], []
    page.on("response", lambda r: (failed.append(r.status), requested.append(r.url)) if ".jpg" in r.url else None)
    open_study(page, live_server.url, pairs, shown=False)
    status = page.locator("#status")
    expect(status).to_have_text(re.compile(r"^(Left|Right) image did not load\. .*Image did not load"))
    assert status.evaluate("s => getComputedStyle(s).color") == ERR_COLOUR
    assert failed and set(failed) == {404}
    assert len([url for url in requested if "retry=2" in url]) >= 1  # tried twice more before saying so
    first = page.locator("#prompt").text_content()
    with page.expect_response(lambda r: r.url.endswith("/skip/")) as skipped:
        page.get_by_role("button", name="Image did not load").click()
    assert skipped.value.status in (200, 201)
    expect_announced(page, 2)
    skip = Skip.objects.get()
    assert skip.reason == Skip.Reason.IMAGE_NOT_LOADED and skip.item.prompt.text == first


def test_a_study_closed_meanwhile_is_said_plainly_and_the_answer_is_kept(page: Page, live_server, rating):
    from annotate.services.studies import study_close

    answer_after(page, live_server.url, rating, lambda: study_close(study=rating), expect_status=409)
    notice = page.locator("#not-open")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("The researcher has closed this study")
    expect(page.locator("#task")).to_be_hidden()
    assert len(pending(page, rating)) == 1 and Judgment.objects.count() == 0  # kept, in case it reopens


def test_an_image_that_fails_once_is_fetched_again_without_a_word(page: Page, live_server, pairs):
    """A busy server's 503 (or a dropped connection) on an image: the page asks again, and the
    annotator sees the image and no error."""
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, live_server.url)
    refused = []

    def once(route):
        if not refused:
            refused.append(route.request.url)
            route.fulfill(status=503, body="busy")
        else:
            route.continue_()

    page.route("**/left.jpg*", once)
    open_study(page, live_server.url, pairs, shown=False)
    page.wait_for_function("() => { const i = document.getElementById('img-left');"
                           " return i.complete && i.naturalWidth > 0 && i.src.includes('retry=1'); }")
    assert len(refused) == 1
    expect(page.locator("#status")).to_have_text("")
