"""The researcher's dashboard end to end, in headless Chromium: the researcher makes a study
from the demo checkpoints, an annotator in a second browser context answers items, the
researcher sees the progress move and downloads the report; and the jobs page follows a job
live, without a reload."""
import re

import pytest
from playwright.sync_api import Browser, Page, expect

from annotate.models import GenerationJob, Judgment, Study
from annotate.services.demo import demo_seed

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT_MS = 10_000
NAME = "E2E: side by side, made in the browser"


def log_in(page: Page, base_url: str, username: str, password: str) -> None:
    page.goto(base_url + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(base_url + "/")


def judgments_shown(page: Page) -> int:
    return int(page.locator("#judgments-so-far strong").first.inner_text())


def test_a_researcher_makes_a_study_an_annotator_answers_and_the_report_comes_down(browser: Browser, base_url):
    demo_seed()  # the demo's checkpoints and images, made by the (inline) worker
    researcher = browser.new_context()
    annotator = browser.new_context()
    try:
        page = researcher.new_page()
        log_in(page, base_url, "researcher", "researcher-demo-pass")
        page.get_by_role("link", name="New study").first.click()
        page.fill("#id_name", NAME)
        page.select_option("#id_dataset", label="demo-scenes")
        page.get_by_label("demo-careful").check()
        page.get_by_label("demo-sloppy").check()
        page.get_by_label("annotator", exact=True).check()
        page.fill("#id_redundancy", "1")
        page.get_by_role("button", name="Preview").click()
        items = int(page.locator("#preview-items").inner_text())
        assert items > 0 and page.locator("#preview-judgments").inner_text() == str(items)
        assert not Study.objects.filter(name=NAME).exists()  # a preview writes nothing
        page.get_by_role("button", name="Create as draft").click()
        page.wait_for_url(re.compile(r"/studies/\d+/$"))
        expect(page.get_by_role("heading", name=NAME)).to_be_visible()
        page.get_by_role("button", name="Open", exact=True).click()
        expect(page.locator(".status-badge")).to_have_text("Open")
        assert judgments_shown(page) == 0

        # The annotator, in a browser context of their own, answers three items by keyboard.
        work = annotator.new_page()
        log_in(work, base_url, "annotator", "annotator-demo-pass")
        work.get_by_role("link", name=NAME, exact=True).click()
        expect(work.locator("#task")).to_be_visible(timeout=TIMEOUT_MS)
        study = Study.objects.get(name=NAME)
        for k, key in enumerate(["1", "2", "0"], start=1):
            # An item takes answers once its images are shown.
            expect(work.locator("#task .images")).to_have_attribute("aria-busy", "false", timeout=TIMEOUT_MS)
            src = work.locator("#img-left").get_attribute("src")
            work.keyboard.press(key)
            expect(work.locator("#progress-text")).to_have_text(re.compile(rf"^{k} of "), timeout=TIMEOUT_MS)
            if k < 3:
                expect(work.locator("#img-left")).not_to_have_attribute("src", src, timeout=TIMEOUT_MS)
        assert Judgment.objects.filter(item__study=study).count() == 3

        # The researcher sees the progress move, and the annotator in the table.
        page.reload()
        assert judgments_shown(page) == 3
        row = page.locator("tr", has=page.get_by_text("annotator", exact=True))
        expect(row.locator('[data-col="judgments"]')).to_have_text("3")

        # The report: built by the (inline) worker, previewed, and downloaded.
        page.select_option("#report-format", "html")
        page.get_by_role("button", name="Build report").click()
        expect(page.get_by_role("link", name=re.compile("^Download"))).to_be_visible(timeout=TIMEOUT_MS)
        with page.expect_download() as download:
            page.get_by_role("link", name=re.compile("^Download")).first.click()
        body = open(download.value.path(), encoding="utf-8").read()
        assert NAME in body and "Win rates" in body
    finally:
        researcher.close()
        annotator.close()


def test_the_jobs_page_follows_a_job_without_a_reload(page: Page, base_url):
    from annotate.services.checkpoints import checkpoint_register
    from annotate.services.demo import demo_seed as seed

    seed()
    checkpoint = checkpoint_register(name="drawn-live", backend="procedural")
    job = GenerationJob.objects.create(checkpoint=checkpoint, dataset=GenerationJob.objects.first().dataset,
                                       seeds=[9], total_images=10, done_images=0, status="running")
    log_in(page, base_url, "researcher", "researcher-demo-pass")
    page.goto(base_url + "/jobs/")
    row = page.locator(f"#job-generation-{job.id}")
    expect(row).to_have_attribute("data-status", "running")
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    GenerationJob.objects.filter(pk=job.pk).update(done_images=4)
    expect(row.locator('[data-field="done"]')).to_have_text("4", timeout=TIMEOUT_MS)
    GenerationJob.objects.filter(pk=job.pk).update(status="failed", error="CUDA error: out of memory")
    expect(row).to_have_attribute("data-status", "failed", timeout=TIMEOUT_MS)
    expect(row.locator('[data-field="error"]')).to_contain_text("out of memory")
    expect(row.locator('form[data-action="retry"]')).to_be_visible()
    expect(page.locator("#jobs-live")).to_contain_text("failed", timeout=TIMEOUT_MS)
    assert page.evaluate("window.loadedOnce") is True
    # Retry from the page: the job runs again (inline in tests) and makes its images.
    row.locator('form[data-action="retry"] button').click()
    page.wait_for_load_state()
    job.refresh_from_db()
    assert (job.status, job.done_images) == ("succeeded", job.total_images)
