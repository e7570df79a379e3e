import csv
import io
import json
import re
import uuid

import pytest
from django.core.management import CommandError, call_command

from annotate.models import Judgment, Report
from annotate.services.annotation import assignment_next, judgment_submit
from annotate.services.reports import ReportError, report_request, study_report_data
from tests.factories import annotators, open_pairwise, open_rating

pytestmark = pytest.mark.django_db


def answer_all(study, users, pick):
    """Every annotator answers every item they get; ``pick(item, a_is_left)`` -> left/right/tie."""
    for user in users:
        while (lease := assignment_next(study=study, annotator=user)) is not None:
            item = lease.item
            choice = pick(item, lease.a_on_left)
            judgment_submit(study=study, annotator=user, item_public_id=item.public_id, lease_id=lease.pk,
                            client_id=uuid.uuid4(),
                            choice=choice, score=4 if choice == "score" else None)


def alpha_wins(item, a_is_left):
    """alpha-ckpt's image wins, wherever it was shown (image a is alpha's when its checkpoint is)."""
    a_is_alpha = item.__class__.objects.select_related("image_a__checkpoint").get(pk=item.pk) \
        .image_a.checkpoint.name == "alpha-ckpt"
    return "left" if a_is_alpha == a_is_left else "right"


def test_pairwise_report_counts_in_the_items_terms_and_states_its_inputs():
    users = annotators(3)
    study = open_pairwise(members=users, prompts=6, per_prompt=2, redundancy=3)  # 12 items
    answer_all(study, users, alpha_wins)
    flagged = Judgment.objects.filter(annotator=users[2])
    flagged.update(is_flagged=True, flag_reason="test")
    data = study_report_data(study=study, rounds=200, seed=7)
    assert data["inputs"] == {**data["inputs"], "judgments": 36, "judgments_counted": 24, "bootstrap_rounds": 200,
                              "seed": 7, "excluded": {"flagged_annotators": 12, "gold_items": 0}}
    pair = data["pairwise"]["pairs"][0]
    assert (pair["a"], pair["b"], pair["n"], pair["wins_a"], pair["wins_b"], pair["ties"]) == (
        "alpha-ckpt", "beta-ckpt", 24, 24, 0, 0)
    assert pair["win_rate_a"] == 1.0 and pair["wilson"][1] == pytest.approx(1.0)
    ratings = {r["model"]: r for r in data["pairwise"]["bradley_terry"]["ratings"]}
    assert ratings["alpha-ckpt"]["rank"] == 1 and ratings["alpha-ckpt"]["status"] != "ok"  # never lost: flagged
    # Everyone picks alpha's image, which is A on some items and B on others: perfect agreement.
    assert data["agreement"]["fleiss_kappa"]["value"] == pytest.approx(1.0)
    json.dumps(data)  # JSON-ready: no NaN or numpy types
    assert data["study"]["dataset"] == study.dataset.name
    assert [c["name"] for c in data["study"]["checkpoints"]] == ["alpha-ckpt", "beta-ckpt"]
    assert set(data["study"]["checkpoints"][0]) == {"name", "backend", "fingerprint"}
    from annotate.services.reports import report_render

    shown = json.loads(json.dumps(data))
    shown["study"]["checkpoints"][0]["fingerprint"] = "0123456789abcdef" * 4
    provenance = re.search(r'<p class="muted" id="provenance">(.*?)</p>', report_render(shown, "html").decode(), re.S)
    assert provenance and " ".join(provenance.group(1).split()) == (
        f"Dataset {study.dataset.name} · checkpoints: alpha-ckpt (procedural, weights 0123456789ab), "
        "beta-ckpt (procedural)")
    # What a reader must know first: open, every item short of its redundancy (the flagged
    # annotator's third judgment is excluded), 6 prompts and 3 annotators behind the pair.
    warnings = data["warnings"]
    assert warnings[0] == "The study is open: the figures will change as judgments come in."
    assert warnings[1].startswith("12 of 12 items have fewer than 3 counted judgments")
    assert "1 pair rest on fewer than 10 prompts" in warnings[2] and "Fewer than 10 annotators" in warnings[3]
    assert (pair["prompts"], pair["annotators"], pair["verdict"]) == (6, 2, "too few prompts")
    # Annotators by username, as on the dashboard; the flagged one is not in the agreement.
    loo = {x["annotator"] for x in data["agreement"]["loo_majority"]}
    assert loo == {users[0].username, users[1].username}
    again = study_report_data(study=study, rounds=200, seed=7)
    for d in (data, again):
        d["inputs"].pop("generated_at")
    assert again == data  # same seed, same figures


def test_report_formats_are_self_contained_and_agree():
    users = annotators(2)
    study = open_pairwise(members=users, prompts=4, per_prompt=2, redundancy=2)
    answer_all(study, users, lambda item, a_left: "tie" if item.pk % 3 == 0 else "left")
    from annotate.services.reports import report_render

    data = study_report_data(study=study, rounds=100)
    html = report_render(data, "html").decode()
    assert "<svg" in html and "Bradley-Terry" in html and "Position bias" in html
    assert not re.search(r"(src|href)=|https?://|@import|url\(", html)  # nothing is fetched
    assert "alpha-ckpt" in html and "<script" not in html
    rows = list(csv.reader(io.StringIO(report_render(data, "csv").decode())))
    header = rows.index(["a", "b", "verdict", "n", "prompts", "annotators", "wins_a", "wins_b", "ties", "win_rate_a",
                         "wilson_low", "wilson_high", "prompt_bootstrap_low", "prompt_bootstrap_high",
                         "annotator_bootstrap_low", "annotator_bootstrap_high", "win_odds",
                         "win_odds_prompt_bootstrap_low", "win_odds_prompt_bootstrap_high", "bootstrap_p",
                         "bootstrap_holm_p", "sign_test_p", "sign_test_holm_p"])
    pair = data["pairwise"]["pairs"][0]
    assert rows[header + 1][:9] == [pair["a"], pair["b"], pair["verdict"], *(str(int(pair[k])) for k in (
        "n", "prompts", "annotators", "wins_a", "wins_b", "ties"))]
    odds = rows[header + 1][rows[header].index("win_odds")]
    assert odds == ("" if pair["win_odds"] is None else f"{pair['win_odds']:.4f}")
    assert json.loads(report_render(data, "json")) == data
    with pytest.raises(ReportError, match="format"):
        report_render(data, "pdf")


def test_rating_report_gives_each_checkpoints_aligned_rate():
    users = annotators(2)
    study = open_rating(members=users, prompts=3, per_prompt=1, redundancy=2)  # 6 items
    answer_all(study, users, lambda item, a_left: "aligned" if item.image_a.checkpoint.name == "alpha-ckpt"
               else "not_aligned")
    data = study_report_data(study=study, rounds=10)
    rates = {r["model"]: r["aligned_rate"] for r in data["rating"]["checkpoints"]}
    assert rates == {"alpha-ckpt": 1.0, "beta-ckpt": 0.0}
    assert "<svg" in __import__("annotate.services.reports", fromlist=["x"]).report_render(data, "html").decode()


def test_a_requested_report_is_built_by_the_task_and_stored(django_capture_on_commit_callbacks):
    users = annotators(2)
    study = open_pairwise(members=users, prompts=3, per_prompt=1, redundancy=2)
    answer_all(study, users, alpha_wins)
    with django_capture_on_commit_callbacks(execute=True):
        report = report_request(study=study, fmt="json", rounds=1000)
    report.refresh_from_db()
    assert report.status == Report.Status.SUCCEEDED and report.finished_at is not None
    with report.file.open("rb") as fh:
        stored = json.loads(fh.read())
    assert stored["inputs"]["judgments_counted"] == 6 and stored["inputs"]["bootstrap_rounds"] == 1000
    for rounds in (0, 999, 100_001):  # the SPEC's floor is 1,000 rounds
        with pytest.raises(ReportError, match="rounds: must be between 1,000 and 100,000"):
            report_request(study=study, fmt="json", rounds=rounds)
    assert Report.objects.count() == 1


def test_export_report_command_writes_the_file(tmp_path):
    users = annotators(2)
    study = open_pairwise(members=users, prompts=3, per_prompt=1, redundancy=2)
    answer_all(study, users, alpha_wins)
    out = tmp_path / "r.html"
    call_command("export_report", str(study.public_id), "--format", "html", "--out", str(out), "--rounds", "1000",
                 stderr=io.StringIO())
    assert "<svg" in out.read_text()
    call_command("export_report", study.name, "--format", "csv", "--out", str(tmp_path / "r.csv"),
                 stderr=io.StringIO())
    assert (tmp_path / "r.csv").read_text().startswith("study,kind,")
    with pytest.raises(CommandError, match="rounds: must be between 1,000"):
        call_command("export_report", study.name, "--out", str(tmp_path / "few.html"), "--rounds", "20")
    assert not (tmp_path / "few.html").exists()
    with pytest.raises(CommandError, match="no study"):
        call_command("export_report", "nope", "--out", str(out))


def test_researchers_ask_for_a_report_and_download_it_annotators_cannot(django_capture_on_commit_callbacks):
    from rest_framework.test import APIClient

    from annotate.roles import RESEARCHERS
    from annotate.services.accounts import user_create_with_role

    users = annotators(2)
    study = open_pairwise(members=users, prompts=3, per_prompt=1, redundancy=2)
    answer_all(study, users, alpha_wins)
    researcher = user_create_with_role(username="res", password="res-pass-123", role=RESEARCHERS)
    api, member = APIClient(), APIClient()
    api.force_authenticate(researcher)
    member.force_authenticate(users[0])
    url = f"/api/studies/{study.pk}/reports/"
    assert member.post(url, {"format": "csv"}, format="json").status_code == 403
    assert APIClient().post(url, {"format": "csv"}, format="json").status_code in (401, 403)
    assert api.post(url, {"format": "pdf"}, format="json").status_code == 400
    few = api.post(url, {"format": "csv", "rounds": 999}, format="json")
    assert few.status_code == 400 and "rounds" in few.json() and not Report.objects.filter(study=study).exists()
    with django_capture_on_commit_callbacks(execute=True):
        made = api.post(url, {"format": "csv", "rounds": 1000, "seed": 3}, format="json")
    assert made.status_code == 202
    report = api.get(f"/api/reports/{made.json()['id']}/").json()
    assert report["status"] == "succeeded" and report["params"] == {"rounds": 1000, "seed": 3}
    download = api.get(report["download"])
    assert download.status_code == 200 and download["Content-Type"].startswith("text/csv")
    assert b"".join(download.streaming_content).decode().startswith("study,kind,")
    assert member.get(report["download"]).status_code == 403
    assert member.get(f"/api/reports/{report['id']}/").status_code == 403
    assert [r["id"] for r in api.get(url).json()] == [report["id"]]
    queued = reports_queued(study)
    assert api.get(f"/api/reports/{queued.pk}/download").status_code == 409  # not built yet


def reports_queued(study):
    return report_request(study=study, fmt="html", enqueue=False)


def test_the_overview_builds_a_report_and_links_its_download(client, django_capture_on_commit_callbacks):
    from annotate.roles import RESEARCHERS
    from annotate.services.accounts import user_create_with_role

    users = annotators(2)
    study = open_pairwise(members=users, prompts=3, per_prompt=1, redundancy=2)
    answer_all(study, users, alpha_wins)
    client.force_login(users[0])
    assert client.post(f"/studies/{study.pk}/reports/", {"format": "html"}).status_code == 403
    client.force_login(user_create_with_role(username="res", password="res-pass-123", role=RESEARCHERS))
    assert client.get(f"/studies/{study.pk}/reports/").status_code == 405
    assert client.post(f"/studies/{study.pk}/reports/", {"format": "pdf"}).status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/studies/{study.pk}/reports/", {"format": "html"}).status_code == 302
    report = Report.objects.get(study=study)
    page = client.get("/").content.decode()
    assert study.name in page and f"/api/reports/{report.pk}/download" in page
    download = client.get(f"/api/reports/{report.pk}/download")
    assert download.status_code == 200 and b"<svg" in b"".join(download.streaming_content)


def likert_study():
    """A 1-5 study: alpha's images get 5s and 4s; beta's a 3 from one annotator (left out) and a
    1 from the other."""
    users = annotators(2)
    study = open_rating(members=users, prompts=3, per_prompt=1, redundancy=2, rating_scale="likert5")
    for user, score_of in ((users[0], lambda name: 5 if name == "alpha-ckpt" else 3),
                           (users[1], lambda name: 4 if name == "alpha-ckpt" else 1)):
        while (lease := assignment_next(study=study, annotator=user)) is not None:
            judgment_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk, client_id=uuid.uuid4(),
                            choice="score", score=score_of(lease.item.image_a.checkpoint.name))
    return study


def test_a_likert_report_counts_the_threes_it_leaves_out_and_gold_rows_name_excluded_annotators():
    data = study_report_data(study=likert_study())
    rows = {r["model"]: r for r in data["rating"]["checkpoints"]}
    assert (rows["alpha-ckpt"]["n"], rows["alpha-ckpt"]["aligned"], rows["alpha-ckpt"]["neutral_left_out"]) == (6, 6, 0)
    assert (rows["beta-ckpt"]["n"], rows["beta-ckpt"]["aligned"], rows["beta-ckpt"]["neutral_left_out"]) == (3, 0, 3)
    assert data["rating"]["neutral_left_out"] == 3
    assert "3 answers of 3 (neither) on the 1-5 scale are left out of the aligned rates." in data["warnings"]

    from annotate.services.reports import _gold
    rows = [(1, True, False, 7, "aligned", None, None, 1, "", "x", None, True, "ann-a"),
            (2, True, True, 8, "aligned", None, None, 1, "", "x", None, False, "ann-b"),
            (3, False, True, 8, "aligned", None, None, 1, "", "x", None, None, "ann-b")]
    assert _gold(rows) == [
        {"annotator": "ann-a", "gold_answers": 1, "gold_correct": 1, "accuracy": 1.0, "excluded": False},
        {"annotator": "ann-b", "gold_answers": 1, "gold_correct": 0, "accuracy": 0.0, "excluded": True}]
