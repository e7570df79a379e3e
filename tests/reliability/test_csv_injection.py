"""CSV formula injection: text that people typed (a prompt, its category, a checkpoint's name, a
username, a skip note, a study's name) and that starts with ``=``, ``+``, ``-``, ``@``, TAB or CR
reaches no CSV the platform writes as a formula (OWASP: a leading ``'``), while numbers, a
negative one included, stay numbers."""
import csv
import io
import uuid

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from annotate import csv_safe
from annotate.models import (
    AuditEvent, Checkpoint, Image, Judgment, Prompt, RewardModel, RewardScore, Skip, Study,
)
from annotate.roles import ANNOTATORS, RESEARCHERS
from annotate.services.accounts import user_create_with_role
from annotate.services.annotation import assignment_next, judgment_submit, skip_submit
from tests.factories import open_pairwise

pytestmark = pytest.mark.django_db

PAYLOADS = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXTS = [p + " cups" for p in PAYLOADS]
CATEGORIES = [p + " cat" for p in PAYLOADS]
CHECKPOINTS = ('=HYPERLINK("http://x","ckpt")', "-2+3 ckpt")


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


def assert_neutralised(text: str, expected: list[str]) -> None:
    """No cell starts a formula unless it is a number, and each expected text is there, quoted out."""
    found = cells(text)
    formulas = [c for c in found if c.startswith(FORMULA_STARTS) and not is_number(c)]
    assert formulas == []
    missing = [e for e in expected if "'" + e not in found]
    assert missing == []


def streamed(response) -> str:
    assert response.status_code == 200, response.content[:300]
    return b"".join(response.streaming_content).decode()


@pytest.fixture
def poisoned():
    """A pairwise study (named like a formula) whose six prompts and categories each start with
    a payload, whose checkpoints and annotators are named like formulas, with a skip whose note
    is one. The two annotators disagree on every item (one picks A on even prompts, the other
    B): Cohen's kappa is -1, a real negative number in the report."""
    ann_a, ann_b, skipper = (user_create_with_role(username=name, password="pw-123456-x", role=ANNOTATORS)
                             for name in ("@SUM(A1)", "\tann", "\rann"))
    study = open_pairwise(members=[ann_a, ann_b, skipper], prompts=len(PAYLOADS), per_prompt=1, redundancy=2,
                          checkpoints=CHECKPOINTS)
    Study.objects.filter(pk=study.pk).update(name="-2+3 study")
    for prompt in Prompt.objects.filter(dataset=study.dataset):
        payload = PAYLOADS[prompt.source_index]
        Prompt.objects.filter(pk=prompt.pk).update(text=payload + " cups", category=payload + " cat")
    lease = assignment_next(study=study, annotator=skipper)
    skip_submit(study=study, annotator=skipper, item_public_id=lease.item.public_id, lease_id=lease.pk,
                client_id=uuid.uuid4(), reason=Skip.Reason.OTHER, note="-2+3 note")
    for user, wants_a in ((ann_a, lambda index: index % 2 == 0), (ann_b, lambda index: index % 2 == 1)):
        while (lease := assignment_next(study=study, annotator=user)) is not None:
            picks_left = wants_a(lease.item.prompt.source_index) == lease.a_on_left
            judgment_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                            client_id=uuid.uuid4(), choice="left" if picks_left else "right")
    researcher = user_create_with_role(username="=cmd|' /C calc'!A0", password="pw-123456-x",
                                       role=RESEARCHERS)
    study.refresh_from_db()
    return study, researcher


def test_the_judgments_csv_of_the_api_neutralises_formulas(poisoned):
    study, researcher = poisoned
    api = APIClient()
    api.force_authenticate(researcher)
    text = streamed(api.get(reverse("api-study-judgments-csv", args=[study.pk])))
    assert_neutralised(text, [*TEXTS, *CHECKPOINTS, "@SUM(A1)", "\tann"])


def test_the_report_csv_neutralises_formulas_and_keeps_a_negative_kappa_a_number(
        poisoned, django_capture_on_commit_callbacks):
    study, researcher = poisoned
    api = APIClient()
    api.force_authenticate(researcher)
    with django_capture_on_commit_callbacks(execute=True):
        made = api.post(f"/api/studies/{study.pk}/reports/", {"format": "csv", "rounds": 1000}, format="json")
    assert made.status_code == 202
    report = api.get(f"/api/reports/{made.json()['id']}/").json()
    assert report["status"] == "succeeded", report
    text = streamed(api.get(report["download"]))
    assert_neutralised(text, ["-2+3 study", *CHECKPOINTS, *CATEGORIES, "@SUM(A1)", "\tann"])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = rows.index(["annotator_a", "annotator_b", "cohen_kappa", "n_items", "note"])
    kappa = rows[header + 1][2]
    assert float(kappa) == pytest.approx(-1.0) and kappa.startswith("-")


@pytest.fixture
def admin_client(poisoned) -> Client:
    client = Client()
    client.force_login(poisoned[1])
    return client


def admin_export(client, model, action: str, objects) -> str:
    url = reverse(f"admin:annotate_{model._meta.model_name}_changelist")
    data = {"action": action, "_selected_action": [o.pk for o in objects], "index": 0}
    return streamed(client.post(url, data))


@pytest.mark.parametrize(("model", "expected"), [
    (Prompt, [*TEXTS, *CATEGORIES]),
    (Checkpoint, list(CHECKPOINTS)),
    (Judgment, ["@SUM(A1)", "\tann"]),
    (Skip, ["-2+3 note", "\rann"]),
    (Study, ["-2+3 study"]),
], ids=lambda x: getattr(x, "__name__", ""))
def test_the_admin_csv_export_neutralises_formulas(poisoned, admin_client, model, expected):
    text = admin_export(admin_client, model, "export_csv", model.objects.all())
    assert_neutralised(text, expected)


def test_the_admin_judgment_export_of_studies_neutralises_formulas(poisoned, admin_client):
    study, _ = poisoned
    text = admin_export(admin_client, Study, "export_judgments", [study])
    assert_neutralised(text, [*TEXTS, *CHECKPOINTS, "@SUM(A1)", "\tann"])


def test_the_audit_log_export_neutralises_formulas(poisoned, admin_client):
    study, researcher = poisoned
    admin_export(admin_client, Study, "export_judgments", [study])  # audited, by a researcher "=cmd|..."
    events = AuditEvent.objects.all()
    assert events.filter(actor_name=researcher.username).exists()
    text = admin_export(admin_client, AuditEvent, "export_csv", events)
    assert_neutralised(text, [researcher.username])


def test_numbers_in_admin_exports_stay_numbers(poisoned, admin_client):
    """A negative reward score is a number, not a formula: written as it is, read back as one."""
    model = RewardModel.objects.create(name="-2+3 model", kind=RewardModel.Kind.IMAGEREWARD, location="x")
    RewardScore.objects.create(image=Image.objects.first(), reward_model=model, variant="raw", value=-0.25)
    text = admin_export(admin_client, RewardScore, "export_csv", RewardScore.objects.all())
    assert_neutralised(text, ["-2+3 model"])
    header, row = csv.reader(io.StringIO(text, newline=""))
    assert row[header.index("value")] == "-0.25"


def test_a_cr_inside_a_cell_cannot_start_a_row_whose_first_cell_is_a_formula():
    """With a \\n line end the csv module leaves a bare CR unquoted; a reader takes it for a new row."""
    out = io.StringIO()
    writer = csv_safe.writer(out, lineterminator="\n")
    writer.writerow(["=1+2", "x"])
    writer.writerows([["ok\r=1+2", -1, 2.5, None], ["plain", -3, "a-b", ""]])
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == [
        ["'=1+2", "x"], ["ok\r=1+2", "-1", "2.5", ""], ["plain", "-3", "a-b", ""]]
