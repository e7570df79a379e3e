"""The annotator page keeps an answer until the server has it: a 503 or a dropped connection
is retried with backoff (at least the server's Retry-After), with the same client_id, so an
answer stored before its response was lost is counted once. Headless Chromium, driven from a
process of its own (browser_retry.py says why)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from annotate.models import Judgment, StudyItem
from annotate.roles import ANNOTATORS
from annotate.services.accounts import user_create_with_role
from tests.e2e.test_annotator_screen import draw_files
from tests.factories import open_pairwise
from tests.reliability.faults import check_study_consistent

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.django_db(transaction=True)
def test_the_page_resends_an_answer_after_503_and_a_dropped_connection_and_it_counts_once(live_server, media_root):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    user = user_create_with_role(username="page-annotator", password="page-pass-123", role=ANNOTATORS)
    study = open_pairwise(members=[user], prompts=2, per_prompt=1, redundancy=1)
    draw_files(media_root)  # the page takes an answer only once the item's images are shown
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("browser_retry.py")), live_server.url,
                          str(study.public_id), "page-annotator", "page-pass-123"],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["next"][:2] == [503, "passed"]  # the item came after the page asked again
    assert seen["submit"] == ["201 then 503", "connection reset", 200]  # the third is a repeat
    assert len({body["client_id"] for body in seen["submit_bodies"]}) == 1 and seen["pending"] == []
    client_id = seen["submit_bodies"][0]["client_id"]
    assert Judgment.objects.filter(client_id=client_id).count() == 1 == Judgment.objects.count()
    assert sum(StudyItem.objects.values_list("judgment_count", flat=True)) == 1
    check_study_consistent(study)
