"""Take the README's screenshots from a running demo (make demo), with Debian's Chromium.

    python scripts/screenshots.py [--base http://127.0.0.1:8000] [--out docs/img]
    python scripts/screenshots.py --report /tmp/demo-report.html   # after scripts/demo_report.py
"""
import argparse
import os
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--report", type=Path, help="only the picture of this report file (report.png)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-quic"])
        if args.report:
            page = browser.new_page(viewport={"width": 1040, "height": 1400})
            page.goto(args.report.resolve().as_uri())
            page.screenshot(path=args.out / "report.png")
            browser.close()
            return
        page = browser.new_page(viewport={"width": 1100, "height": 640})
        page.goto(f"{args.base}/accounts/login/")
        page.fill("#id_username", "researcher")
        page.fill("#id_password", "researcher-demo-pass")
        page.click("button[type=submit]")
        page.wait_for_url(f"{args.base}/")
        page.screenshot(path=args.out / "overview.png")
        page.click("text=demo-scenes")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=args.out / "dataset.png")
        annotator = browser.new_page(viewport={"width": 1280, "height": 860})
        annotator.goto(f"{args.base}/accounts/login/")
        annotator.fill("#id_username", "annotator")
        annotator.fill("#id_password", "annotator-demo-pass")
        annotator.click("button[type=submit]")
        annotator.click("text=Demo: which image matches?")
        annotator.wait_for_selector("#task:not([hidden])")
        shown = "#task .images[aria-busy=false]"  # an item takes answers once its images are shown
        annotator.wait_for_selector(shown)
        annotator.click(".instructions summary")  # folded, as after the first answer
        annotator.wait_for_timeout(300)
        annotator.screenshot(path=args.out / "annotate.png")
        # Some answers (keys 1, 2 and 0: left, right, tie), so that the study page has figures.
        annotator.evaluate("document.activeElement && document.activeElement.blur()")  # keys go to the page
        for key in "1210212011":
            annotator.wait_for_selector(shown)
            before = annotator.locator("#progress-text").inner_text()
            annotator.keyboard.press(key)
            annotator.wait_for_function(
                "before => document.getElementById('progress-text').textContent !== before", arg=before)
        page.set_viewport_size({"width": 1100, "height": 1500})
        page.goto(f"{args.base}/")
        page.click("text=Demo: which image matches?")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=args.out / "study.png")
        page.set_viewport_size({"width": 1100, "height": 640})
        page.goto(f"{args.base}/")
        page.screenshot(path=args.out / "overview.png")
        browser.close()


if __name__ == "__main__":
    main()
