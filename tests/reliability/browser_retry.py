"""Drives the annotator page (static/js/annotate.js) in headless Chromium through faults, for
test_annotator_page.py, in a process of its own (Playwright's sync API runs an event loop,
which Django's database access in the test process must not share).

    python browser_retry.py BASE_URL STUDY_PUBLIC_ID USERNAME PASSWORD

The first ``next/`` answers 503 (Retry-After: 1) without reaching the server. The first
``submit/`` reaches the server, which stores the answer, but the page is told 503 (the
response lost after the commit); the second is a dropped connection; the third goes through.
Prints JSON: the submit bodies the page sent, the statuses it was given, and its local queue.
"""
import json
import os
import shutil
import sys

from playwright.sync_api import sync_playwright

UNAVAILABLE = {"status": 503, "headers": {"Retry-After": "1", "Content-Type": "application/json"},
               "body": json.dumps({"error": "unavailable", "detail": "test"})}


def main(base: str, study: str, username: str, password: str) -> dict:
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    seen = {"next": [], "submit": [], "submit_bodies": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(base + "/accounts/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.locator("main form button[type=submit]").click()
        page.wait_for_url(base + "/")

        def on_next(route):
            if not seen["next"]:
                seen["next"].append(503)
                route.fulfill(**UNAVAILABLE)
            else:
                seen["next"].append("passed")
                route.continue_()

        def on_submit(route):
            seen["submit_bodies"].append(json.loads(route.request.post_data))
            attempt = len(seen["submit"])
            if attempt == 0:
                stored = route.fetch()  # the server stores it; the page never hears so
                seen["submit"].append(f"{stored.status} then 503")
                route.fulfill(**UNAVAILABLE)
            elif attempt == 1:
                seen["submit"].append("connection reset")
                route.abort("connectionreset")
            else:
                response = route.fetch()
                seen["submit"].append(response.status)
                route.fulfill(response=response)

        page.route("**/api/annotate/*/next/", on_next)
        page.route("**/api/annotate/*/submit/", on_submit)
        page.goto(f"{base}/annotate/{study}/")
        page.locator("#task").wait_for(state="visible", timeout=15_000)
        page.locator("#task .images[aria-busy=false]").wait_for(timeout=15_000)  # answers are taken from now
        page.keyboard.press("1")  # left
        pending_key = f"calibra-pending-{page.locator('#annotator').get_attribute('data-user')}-{study}"
        page.wait_for_function(
            f"() => window.localStorage.getItem({json.dumps(pending_key)}) === '[]'", timeout=20_000)
        seen["pending"] = json.loads(page.evaluate(f"window.localStorage.getItem({json.dumps(pending_key)})"))
        browser.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
