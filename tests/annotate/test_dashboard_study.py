"""The researcher's study page (annotate/views_study.py, annotate/selectors_study.py) and the
lifecycle and pause services it calls. Judgments are made through the annotation engine."""
import re
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone as dt_timezone

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from annotate import selectors_study as sel
from annotate.models import Assignment, Image, Judgment, Report, Study, StudyItem, StudyMembership
from annotate.services.annotation import (
    AnnotatorPaused, assignment_next, canonical_answer, judgment_submit, skip_submit,
)
from annotate.services.studies import (
    StudyError, membership_pause, membership_resume, study_add_members, study_create_rating, study_reopen,
)
from annotate.views_study import REPORT_PREVIEW_CSP, format_duration
from tests.factories import annotators, make_images, open_pairwise, open_rating

pytestmark = pytest.mark.django_db

ALIGNED, NOT_ALIGNED = "aligned", "not_aligned"


def answer_next(study, user, choose=lambda item, lease: ALIGNED, *, now=None, time_ms=None):
    """The annotator leases their next item and answers it; returns the item (None when done)."""
    lease = assignment_next(study=study, annotator=user, now=now)
    if lease is None:
        return None
    item = StudyItem.objects.get(pk=lease.item_id)
    judgment_submit(study=study, annotator=user, item_public_id=item.public_id, lease_id=lease.pk, client_id=uuid.uuid4(),
                    choice=choose(item, lease), time_spent_ms=time_ms, now=now)
    return item


def logged_in(user) -> Client:
    other = Client()
    other.force_login(user)
    return other


def page(client, study):
    return client.get(reverse("study-detail", args=[study.pk]))


def cell(html: str, attr: str) -> str:
    match = re.search(rf'<td class="num" {attr}>([^<]*)<', html)
    assert match, attr
    return match.group(1).strip()


# --------------------------------------------------------------------------- progress


def test_page_shows_items_by_state_and_judgments_against_the_target(client, researcher):
    a, b, c = annotators(3)
    study = open_rating(members=[a, b, c], prompts=5, per_prompt=1, checkpoints=("alpha-ckpt",), redundancy=3)
    for _ in range(3):
        answer_next(study, a)
    # Closest to completion first: b answers two of a's items, c one of those (now complete),
    # then c leases the other one b answered without answering it.
    answer_next(study, b)
    answer_next(study, b)
    answer_next(study, c)
    held = assignment_next(study=study, annotator=c)
    assert StudyItem.objects.get(pk=held.item_id).judgment_count == 2
    client.force_login(researcher)
    response = page(client, study)
    assert response.status_code == 200
    progress = response.context["progress"]
    assert (progress.complete, progress.in_progress, progress.not_started) == (1, 2, 2)
    assert (progress.judgments, progress.target, progress.held_leases) == (6, 15, 1)
    html = response.content.decode()
    assert cell(html, 'data-state="complete"') == "1"
    assert cell(html, 'data-state="in-progress"') == "2"
    assert cell(html, 'data-state="not-started"') == "2"
    assert "<strong>6</strong> of <strong>15</strong> judgments" in html and "gold items included" in html
    assert study.name in html and "alpha-ckpt" in html and "Per-image alignment rating" in html
    assert "css/study.css" in html
    assert "<th scope=\"col\">" in html and "http://" not in html and "https://" not in html


# --------------------------------------------------------------------------- pace


def test_judgments_per_hour_rate_and_eta_by_hand():
    a, b = annotators(2)
    study = open_rating(members=[a, b], prompts=5, per_prompt=1, checkpoints=("alpha-ckpt",), redundancy=3)
    now = datetime(2025, 1, 1, 12, 30, tzinfo=dt_timezone.utc)
    times = [now - timedelta(minutes=20), now - timedelta(minutes=25),  # 12:10, 12:05
             now - timedelta(hours=2, minutes=45),  # 09:45
             now - timedelta(hours=10, minutes=30),  # 02:00
             now - timedelta(hours=50)]  # 10:30 two days before: outside the 48 hours
    for user, at in zip([a, a, a, b, b], times):
        answer_next(study, user, now=at)
    study.opened_at = now - timedelta(days=3)
    pace = sel.study_judgments_per_hour(study, hours=48, now=now)
    assert len(pace.hours) == len(pace.counts) == 48
    assert pace.hours[0] == datetime(2024, 12, 30, 13, tzinfo=dt_timezone.utc)
    assert pace.hours[-1] == datetime(2025, 1, 1, 12, tzinfo=dt_timezone.utc)
    by_hour = {h.hour: n for h, n in zip(pace.hours[-24:], pace.counts[-24:])}
    assert (by_hour[12], by_hour[9], by_hour[2], pace.total) == (2, 1, 1, 4)
    # The last 6 buckets (07:00 to now, 5.5 h) hold 3 judgments.
    assert pace.rate_per_hour == pytest.approx(3 / 5.5)
    progress = sel.study_progress(study)
    assert (progress.judgments, progress.remaining) == (5, 10)
    eta = sel.eta_hours(progress, pace)
    assert eta == pytest.approx(10 / (3 / 5.5))  # 18 h 20 min
    assert format_duration(eta) == "18 h 20 min"
    assert format_duration(0.25) == "15 min" and format_duration(50) == "2 d 2 h"
    quiet = sel.study_judgments_per_hour(study, now=now + timedelta(hours=7))
    assert quiet.rate_per_hour == 0 and sel.eta_hours(progress, quiet) is None
    # Opened three hours ago: its three judgments are one an hour, not three over 5.5 hours.
    study.opened_at = now - timedelta(hours=3)
    assert sel.study_judgments_per_hour(study, now=now).rate_per_hour == pytest.approx(3 / 3.0)


def test_page_draws_the_chart_and_the_eta(client, researcher):
    (a,) = annotators(1)
    study = open_rating(members=[a], prompts=4, per_prompt=1, checkpoints=("alpha-ckpt",), redundancy=2)
    client.force_login(researcher)
    html = page(client, study).content.decode()
    assert "no recent judgments" in html
    recent = timezone.now() - timedelta(minutes=30)
    for _ in range(2):
        answer_next(study, a, now=recent)
    response = page(client, study)
    html = response.content.decode()
    assert '<svg role="img"' in html and 'aria-label="Judgments per hour over the last 48 hours' in html
    assert ": 2 in all" in html
    assert response.context["pace"].counts[-1] + response.context["pace"].counts[-2] == 2
    assert "Estimated time to completion: <strong>about " in html and "for the 6 judgments left" in html
    assert "no recent judgments" not in html


# --------------------------------------------------------------------------- annotators

# Non-gold items g1..g6 (by id): 1 = aligned, 0 = not aligned. Leave-one-out majorities (three
# others, so no ties): A agrees on 4 of 6, B on 4, C on 5, D on 3.
PATTERN = {"A": [1, 1, 1, 1, 1, 1], "B": [1, 1, 1, 0, 0, 1], "C": [1, 0, 1, 0, 1, 1], "D": [1, 0, 0, 0, 1, 0]}
GOLD_RIGHT = {"A": [True, True], "B": [True, False], "C": [False, False], "D": [True, True]}
TIMES = {"A": [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000],  # median 4500
         "B": [500, 700, 900, 20000, 300, 100, 800, 600],  # median (600 + 700) / 2
         "C": [None, 3000, 1000, 2000, None, None, None, None],  # median 2000
         "D": [None] * 8}  # n/a
# name: (median ms, agreed, compared, gold correct/answered)
EXPECTED = {"A": (4500, 4, 6, "2/2"), "B": (650, 4, 6, "1/2"), "C": (2000, 5, 6, "0/2"),
            "D": (None, 3, 6, "2/2")}


def _annotated_study():
    users = dict(zip("ABCDE", annotators(5)))
    study = open_rating(members=list(users.values()), prompts=8, per_prompt=1, checkpoints=("alpha-ckpt",),
                        redundancy=4, gold_share=0.25, truth=lambda ckpt, p, i: p % 2 == 0)
    items = list(study.items.order_by("pk"))
    gold = [i.pk for i in items if i.is_gold]
    plain = [i.pk for i in items if not i.is_gold]
    assert len(gold) == 2 and len(plain) == 6
    # E skips one item first and answers nothing.
    lease = assignment_next(study=study, annotator=users["E"])
    skip_submit(study=study, annotator=users["E"], item_public_id=lease.item.public_id, lease_id=lease.pk,
                client_id=uuid.uuid4(), reason="unsure")
    for name in "ABCD":
        def choose(item, lease, name=name):
            if item.is_gold:
                right = GOLD_RIGHT[name][gold.index(item.pk)]
                return item.gold_answer if right else ({ALIGNED, NOT_ALIGNED} - {item.gold_answer}).pop()
            return ALIGNED if PATTERN[name][plain.index(item.pk)] else NOT_ALIGNED
        for k in range(8):
            assert answer_next(study, users[name], choose, time_ms=TIMES[name][k]) is not None
        assert assignment_next(study=study, annotator=users[name]) is None
    return study, users


def test_annotator_table_median_agreement_and_gold_by_hand(client, researcher):
    study, users = _annotated_study()
    rows = {row.membership.annotator_id: row for row in sel.study_annotator_table(study)}
    for name, (median, agreed, compared, gold) in EXPECTED.items():
        row = rows[users[name].pk]
        assert row.judgments == 8 and row.skips == 0
        assert row.median_time_ms == (None if median is None else pytest.approx(median)), name
        assert (row.agreement_agreed, row.agreement_compared) == (agreed, compared), name
        assert row.agreement == pytest.approx(agreed / compared)
        m = row.membership
        assert f"{m.gold_correct}/{m.gold_answered}" == gold
    e = rows[users["E"].pk]
    assert (e.judgments, e.skips, e.median_time_ms, e.agreement, e.gold_accuracy) == (0, 1, None, None, None)
    client.force_login(researcher)
    html = page(client, study).content.decode()
    row_c = html[html.index(f'id="member-{rows[users["C"].pk].membership.id}"'):]
    assert cell(row_c, 'data-col="median"') == "2.0 s"
    assert "83% <small>(5/6)</small>" in row_c[:row_c.index("</tr>")]
    assert "0% <small>(0/2)</small>" in row_c[:row_c.index("</tr>")]
    row_b = html[html.index(f'id="member-{rows[users["B"].pk].membership.id}"'):]
    assert cell(row_b, 'data-col="median"') == "0.7 s"  # 650 ms
    assert "67% <small>(4/6)</small>" in row_b[:row_b.index("</tr>")]
    row_e = html[html.index(f'id="member-{e.membership.id}"'):]
    assert cell(row_e, 'data-col="skips"') == "1"
    assert "n/a <small>(0 items)</small>" in row_e[:row_e.index("</tr>")]


def test_median_in_sql_matches_the_portable_fallback_and_numpy():
    study, users = _annotated_study()
    medians = sel.study_median_time_ms(study)
    assert medians == sel._median_time_ms_portable(study)
    for name, times in TIMES.items():
        known = [t for t in times if t is not None]
        assert medians.get(users[name].pk) == (pytest.approx(float(np.median(known))) if known else None)


def test_answer_codes_in_sql_follow_the_engines_answer_in_item_terms():
    users = annotators(3)
    pairs = open_pairwise(members=users, prompts=3, per_prompt=1, redundancy=3)
    likert = open_rating(members=users, prompts=3, per_prompt=1, checkpoints=("alpha-ckpt",), redundancy=3,
                         rating_scale="likert5")
    for k, user in enumerate(users):
        while answer_next(pairs, user, lambda item, lease, k=k: ["left", "right", "tie"][(item.pk + k) % 3]):
            pass
        while (lease := assignment_next(study=likert, annotator=user)) is not None:
            judgment_submit(study=likert, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                            client_id=uuid.uuid4(), choice="score", score=1 + (lease.item_id + 2 * k) % 5)
    for study in (pairs, likert):
        expected = sorted((j.item_id, j.annotator_id, sel.ANSWER_CODES[canonical_answer(j)])
                          for j in Judgment.objects.filter(item__study=study))
        assert len(expected) == 9
        assert sorted(map(tuple, sel.study_answer_rows(study).tolist())) == expected


def test_agreement_in_slices_equals_agreement_at_once():
    rng = np.random.default_rng(0)
    rows = np.array([(item, annotator, rng.integers(0, 3)) for item in range(200) for annotator in range(12)
                     if rng.random() < 0.4], dtype=np.int64)
    whole = sel.loo_agreement_counts(rows)
    assert sel.loo_agreement_counts(rows, max_cells=50) == whole  # 4 items per slice
    assert sum(c for c, _ in whole.values()) > 0


# --------------------------------------------------------------------------- pause


def test_pause_stops_new_items_and_frees_held_leases_resume_restores(client, researcher, annotator):
    study = open_rating(members=[annotator], prompts=3, per_prompt=1, checkpoints=("alpha-ckpt",),
                        redundancy=1)
    held = assignment_next(study=study, annotator=annotator)
    membership = StudyMembership.objects.get(study=study, annotator=annotator)
    client.force_login(researcher)
    url = reverse("study-member-pause", args=[study.pk, membership.pk])
    response = client.post(url, {"reason": "  too fast  "})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("study-detail", args=[study.pk]))
    membership.refresh_from_db()
    assert membership.is_paused and membership.paused_reason == "too fast"
    assert Assignment.objects.get(pk=held.pk).state == Assignment.State.RELEASED
    assert StudyItem.objects.get(pk=held.item_id).taken == 0
    with pytest.raises(AnnotatorPaused, match="too fast"):
        assignment_next(study=study, annotator=annotator)
    html = page(client, study).content.decode()
    assert "Paused</span>: too fast" in html
    assert reverse("study-member-resume", args=[study.pk, membership.pk]) in html
    # The annotator's own API says so too.
    refused = logged_in(annotator).post(reverse("api-next", args=[study.public_id]), {},
                                        content_type="application/json")
    assert refused.status_code == 403 and refused.json()["error"] == "paused"
    assert client.post(reverse("study-member-resume", args=[study.pk, membership.pk])).status_code == 302
    membership.refresh_from_db()
    assert not membership.is_paused and membership.paused_reason == ""
    assert assignment_next(study=study, annotator=annotator) is not None
    too_long = client.post(url, {"reason": "x" * 301})
    assert too_long.status_code == 400 and "at most 300" in too_long.content.decode()


def test_pause_services_directly_and_a_member_of_another_study_is_404(client, researcher, annotator):
    study = open_rating(members=[annotator], prompts=2, per_prompt=1, checkpoints=("alpha-ckpt",))
    other = open_rating(members=[annotator], prompts=2, per_prompt=1, checkpoints=("alpha-ckpt",))
    membership = StudyMembership.objects.get(study=study, annotator=annotator)
    membership_pause(membership=membership, reason="check")
    membership_pause(membership=membership, reason="again")  # paused twice: the reason is the last
    assert StudyMembership.objects.get(pk=membership.pk).paused_reason == "again"
    membership_resume(membership=membership)
    membership_resume(membership=membership)
    assert not StudyMembership.objects.get(pk=membership.pk).is_paused
    foreign = StudyMembership.objects.get(study=other, annotator=annotator)
    client.force_login(researcher)
    for name in ("study-member-pause", "study-member-resume"):
        assert client.post(reverse(name, args=[study.pk, foreign.pk])).status_code == 404
    assert not StudyMembership.objects.get(pk=foreign.pk).is_paused


# --------------------------------------------------------------------------- lifecycle


def test_open_close_reopen_and_the_error_for_a_draft_without_items(client, researcher):
    client.force_login(researcher)
    empty = Study.objects.create(name="empty draft", kind=Study.Kind.RATING)
    refused = client.post(reverse("study-open", args=[empty.pk]))
    assert refused.status_code == 400
    assert "a study without items cannot be opened" in refused.content.decode()
    assert "This study has no items." in refused.content.decode()
    assert Study.objects.get(pk=empty.pk).status == Study.Status.DRAFT
    dataset, checkpoints = make_images(prompts=2, per_prompt=1, checkpoints=("alpha-ckpt",))
    study = study_create_rating(name="lifecycle", dataset=dataset, checkpoints=checkpoints)
    detail = reverse("study-detail", args=[study.pk])
    assert f'action="{reverse("study-open", args=[study.pk])}"' in page(client, study).content.decode()
    assert client.post(reverse("study-reopen", args=[study.pk])).status_code == 400  # a draft is opened
    response = client.post(reverse("study-open", args=[study.pk]))
    assert response.status_code == 302 and response["Location"] == detail
    study.refresh_from_db()
    assert study.status == "open" and study.opened_at is not None
    assert f'action="{reverse("study-close", args=[study.pk])}"' in page(client, study).content.decode()
    assert client.post(reverse("study-close", args=[study.pk])).status_code == 302
    study.refresh_from_db()
    assert study.status == "closed" and study.closed_at is not None
    opened_at = study.opened_at
    assert f'action="{reverse("study-reopen", args=[study.pk])}"' in page(client, study).content.decode()
    assert client.post(reverse("study-reopen", args=[study.pk])).status_code == 302
    study.refresh_from_db()
    assert (study.status, study.closed_at, study.opened_at) == ("open", None, opened_at)
    assert client.post(reverse("study-reopen", args=[study.pk])).status_code == 302  # idempotent
    assert study_reopen(study=study).status == "open"
    for name in ("study-open", "study-close", "study-reopen"):
        assert client.get(reverse(name, args=[study.pk])).status_code == 405
    with pytest.raises(StudyError):
        study_reopen(study=Study.objects.get(pk=empty.pk))


# --------------------------------------------------------------------------- reports


def test_report_build_preview_and_download(client, researcher, django_capture_on_commit_callbacks):
    users = annotators(2)
    study = open_rating(members=users, prompts=3, per_prompt=1, checkpoints=("alpha-ckpt",), redundancy=2)
    for user in users:
        while answer_next(study, user):
            pass
    client.force_login(researcher)
    assert client.post(reverse("study-report-build", args=[study.pk]), {"format": "pdf"}).status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        built = client.post(reverse("study-report-build", args=[study.pk]), {"format": "html"})
        client.post(reverse("study-report-build", args=[study.pk]), {"format": "csv"})
    assert built.status_code == 302 and built["Location"].startswith(reverse("study-detail", args=[study.pk]))
    html_report = Report.objects.get(study=study, format="html")
    csv_report = Report.objects.get(study=study, format="csv")
    assert html_report.status == csv_report.status == Report.Status.SUCCEEDED
    body = page(client, study).content.decode()
    preview_url = reverse("study-report-preview", args=[study.pk, html_report.pk])
    assert preview_url in body and reverse("api-report-download", args=[html_report.pk]) in body
    assert reverse("api-report-download", args=[csv_report.pk]) in body
    assert reverse("study-report-preview", args=[study.pk, csv_report.pk]) not in body  # HTML only
    preview = client.get(preview_url)
    assert preview.status_code == 200 and preview["Content-Type"].startswith("text/html")
    assert preview["Content-Security-Policy"] == REPORT_PREVIEW_CSP
    content = b"".join(preview.streaming_content).decode()
    assert study.name in content and "<svg" in content
    assert client.get(reverse("study-report-preview", args=[study.pk, csv_report.pk])).status_code == 404
    other = open_rating(prompts=1, per_prompt=1, checkpoints=("alpha-ckpt",))
    assert client.get(reverse("study-report-preview", args=[other.pk, html_report.pk])).status_code == 404
    download = client.get(reverse("api-report-download", args=[html_report.pk]))
    assert download.status_code == 200 and b"<svg" in b"".join(download.streaming_content)


# --------------------------------------------------------------------------- permissions


def _all_urls(study, membership, report):
    return {
        "get": [reverse("study-detail", args=[study.pk]),
                reverse("study-report-preview", args=[study.pk, report.pk])],
        "post": [reverse(name, args=[study.pk]) for name in ("study-open", "study-close", "study-reopen",
                                                            "study-report-build")]
        + [reverse(name, args=[study.pk, membership.pk])
           for name in ("study-member-pause", "study-member-resume")],
    }


def test_annotators_get_403_and_anonymous_visitors_the_login_page_everywhere(client, annotator):
    study = open_rating(members=[annotator], prompts=1, per_prompt=1, checkpoints=("alpha-ckpt",))
    membership = StudyMembership.objects.get(study=study)
    report = Report.objects.create(study=study, format="html", status=Report.Status.SUCCEEDED, file="x.html")
    urls = _all_urls(study, membership, report)
    everything = urls["get"] + urls["post"]
    for url in everything:
        for method in (client.get, client.post):
            response = method(url)
            assert response.status_code == 302 and response["Location"].startswith(reverse("login")), url
    client.force_login(annotator)
    for url in everything:
        assert client.get(url).status_code == 403, url
        assert client.post(url, {"format": "html", "reason": "x"}).status_code == 403, url
    study.refresh_from_db()
    membership.refresh_from_db()
    assert study.status == "open" and not membership.is_paused and Report.objects.count() == 1


# --------------------------------------------------------------------------- queries


def test_page_queries_do_not_grow_with_members_or_judgments(client, researcher):
    first = annotators(2, prefix="x")
    study = open_rating(members=first, prompts=6, per_prompt=1, checkpoints=("alpha-ckpt",), redundancy=3)
    answer_next(study, first[0], time_ms=1000)
    Report.objects.create(study=study, format="html")
    client.force_login(researcher)
    page(client, study)  # warm: session, content types
    with CaptureQueriesContext(connection) as small:
        assert page(client, study).status_code == 200
    more = annotators(6, prefix="y")
    study_add_members(study=study, usernames=[u.username for u in more])
    for user in first + more:
        for _ in range(2):
            answer_next(study, user, time_ms=1500)
    Report.objects.create(study=study, format="csv")
    with CaptureQueriesContext(connection) as large:
        response = page(client, study)
    assert len(response.context["annotators"]) == 8 and response.context["progress"].judgments == 17
    assert len(large.captured_queries) == len(small.captured_queries) <= 14


# --------------------------------------------------------------------------- skips


def test_skips_by_reason_and_the_items_whose_image_did_not_load_with_missing_files(client, researcher, media_root):
    users = annotators(3, prefix="s")
    study = open_pairwise(members=users, prompts=4, per_prompt=1, redundancy=3)
    for image in Image.objects.all():
        path = media_root / image.file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"jpeg")

    def skip_next(user, reason):
        lease = assignment_next(study=study, annotator=user)
        item = StudyItem.objects.get(pk=lease.item_id)
        skip_submit(study=study, annotator=user, item_public_id=item.public_id, lease_id=lease.pk, client_id=uuid.uuid4(),
                    reason=reason)
        return item

    client.force_login(researcher)
    assert "id=\"skips\"" not in page(client, study).content.decode()  # none yet: no line
    broken = skip_next(users[0], "image_not_loaded")
    (media_root / broken.image_b.file.name).unlink()  # its right-hand file is gone
    second = skip_next(users[1], "image_not_loaded")  # the same item or another: each annotator's order is their own
    skip_next(users[2], "unsure")
    answer_next(study, users[2], lambda item, lease: "left")

    skips = sel.study_skips(study)
    assert skips.total == 3 and dict(skips.by_reason) == {"Image did not load": 2, "Unsure": 1, "Other": 0}
    expected = Counter([broken.public_id, second.public_id])
    assert {uuid.UUID(i.public_id): i.skips for i in skips.not_loaded} == expected
    assert skips.not_loaded[0].skips == max(expected.values())  # most skips first
    row = next(i for i in skips.not_loaded if uuid.UUID(i.public_id) == broken.public_id)
    assert row.prompt == broken.prompt.text
    assert row.images == [(broken.image_a_id, True), (broken.image_b_id, False)]
    assert skips.not_loaded_items == len(expected)
    assert len(sel.study_skips(study, limit=1).not_loaded) == 1

    html = page(client, study).content.decode()
    assert re.search(r'id="skips">3 skips \(not judgments\):\s*image did not load 2, unsure 1, other 0\.', html)
    table = html[html.index('id="not-loaded"'):]
    assert f'data-item="{broken.public_id}"' in table
    assert reverse("researcher-image", args=[broken.image_b_id]) in table
    assert table.count('class="file-missing"') == 1



def test_judgments_of_a_paused_annotator_are_said_to_be_left_out_of_reports(client, researcher):
    users = annotators(3, prefix="f")
    study = open_rating(members=users, prompts=4, per_prompt=1, checkpoints=("alpha-ckpt",), redundancy=3)
    for user in users:
        while answer_next(study, user):
            pass
    client.force_login(researcher)
    assert 'id="flagged"' not in page(client, study).content.decode()
    assert sel.study_flagged(study) == sel.FlaggedJudgments(0, 0, 0)
    Judgment.objects.filter(annotator=users[0]).update(is_flagged=True, flag_reason="annotator paused: test")
    flagged = sel.study_flagged(study)
    assert flagged == sel.FlaggedJudgments(judgments=4, annotators=1, items_short=4)
    html = page(client, study).content.decode()
    assert re.search(r'id="flagged">4 judgments of 1 annotator paused by the gold check are kept and counted above, '
                     r'but not in reports: 4 items counted complete have fewer than 3 judgments a report counts\.', html)


def test_the_crowd_link_is_turned_on_and_off_from_the_study_page(client, researcher, annotator):
    from annotate.models import AuditEvent

    study = open_pairwise(prompts=2, per_prompt=1)
    client.force_login(researcher)
    html = page(client, study).content.decode()
    assert "Crowd link off" in html and "PROLIFIC_PID" not in html
    on = reverse("study-crowd-link-on", args=[study.pk])
    refused = client.post(on)  # no quota yet: a completion code would pay for nothing in particular
    assert refused.status_code == 400 and "needs the number of items each worker answers" in refused.content.decode()
    Study.objects.filter(pk=study.pk).update(items_per_annotator=2)
    assert client.post(on).status_code == 302
    study.refresh_from_db()
    html = page(client, study).content.decode()
    assert study.crowd_link and f"http://testserver/s/{study.public_id}/?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}" in html
    assert client.post(reverse("study-crowd-link-off", args=[study.pk])).status_code == 302
    study.refresh_from_db()
    assert not study.crowd_link
    assert list(AuditEvent.objects.filter(action="study.crowd_link").values_list("details__enabled", flat=True)
                .order_by("pk")) == [True, False]
    # Not for annotators, nor for anyone signed out.
    assert logged_in(annotator).post(on).status_code == 403
    assert Client().post(on).status_code == 302 and not Study.objects.get(pk=study.pk).crowd_link


def test_a_member_sees_nothing_of_a_study_before_it_opens(annotator):
    from annotate.services.studies import study_create_pairwise

    dataset, checkpoints = make_images(prompts=1, per_prompt=1)
    draft = study_create_pairwise(name="not yet", dataset=dataset, checkpoints=checkpoints, instructions="secret plan")
    study_add_members(study=draft, usernames=[annotator.username])
    response = logged_in(annotator).get(reverse("annotate-study", args=[draft.public_id]))
    assert response.status_code == 404 and "secret plan" not in response.content.decode()
