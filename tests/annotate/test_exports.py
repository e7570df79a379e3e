"""Streaming judgment exports: CSV and JSON Lines, the API endpoints and the command."""
import csv
import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db.models.query import QuerySet
from django.urls import reverse
from rest_framework.test import APIClient

from annotate import selectors
from annotate.apis import JudgmentExportOutput
from annotate.models import Judgment, Prompt
from annotate.services import exports
from annotate.services.annotation import assignment_next, judgment_submit
from tests.factories import annotators, open_pairwise, open_rating

pytestmark = pytest.mark.django_db

TRICKY = 'two cups, one "red"\nand one blue — ünïcödé, =SUM(A1)'


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def judge(study, users, n: int, choices=("left", "right", "tie"), **kw) -> None:
    made = 0
    while made < n:
        for user in users:
            lease = assignment_next(study=study, annotator=user)
            assert lease is not None
            judgment_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                            client_id=uuid.uuid4(), choice=choices[made % len(choices)],
                            time_spent_ms=1000 + made, **kw)
            made += 1
            if made == n:
                return


@pytest.fixture
def pairs():
    """A pairwise study with 7 judgments by 3 annotators, one prompt text that CSV must quote."""
    users = annotators(3)
    study = open_pairwise(members=users, prompts=4, per_prompt=1, redundancy=3)
    judge(study, users, 7)
    Prompt.objects.filter(pk=Judgment.objects.order_by("pk").first().item.prompt_id).update(text=TRICKY)
    Judgment.objects.filter(pk=Judgment.objects.order_by("pk")[2].pk).update(is_flagged=True)
    return study


def expected(study) -> list[dict]:
    """The paginated API's rows (JudgmentExportOutput): the reference for both files."""
    return [dict(row) for row in JudgmentExportOutput(selectors.study_judgments_export(study=study), many=True).data]


def as_csv_cells(row: dict) -> list[str]:
    cell = {True: "true", False: "false", None: ""}
    return [cell[v] if v is None or isinstance(v, bool) else str(v) for v in (row[c] for c in exports.COLUMNS)]


def text(study, fmt, **kw) -> str:
    return "".join(exports.judgments_export_chunks(study=study, fmt=fmt, **kw))


# --- content -------------------------------------------------------------------------------

def test_csv_equals_the_stored_judgments_in_id_order(pairs):
    rows = list(csv.reader(io.StringIO(text(pairs, "csv"))))
    assert rows[0] == exports.COLUMNS == list(JudgmentExportOutput().fields)
    reference = expected(pairs)
    assert len(reference) == 7 and rows[1:] == [as_csv_cells(r) for r in reference]
    assert [int(r[0]) for r in rows[1:]] == sorted(Judgment.objects.filter(item__study=pairs).values_list("pk", flat=True))
    assert TRICKY in [r[2] for r in rows[1:]]
    assert {r[12] for r in rows[1:]} <= {"true", "false"} and "true" in {r[16] for r in rows[1:]}


def test_jsonl_equals_the_stored_judgments_in_id_order(pairs):
    lines = text(pairs, "jsonl").splitlines()
    assert [json.loads(line) for line in lines] == expected(pairs)
    assert all(list(json.loads(line)) == exports.COLUMNS for line in lines)


def test_rating_study_scores_and_missing_second_image():
    users = annotators(2)
    study = open_rating(members=users, prompts=2, per_prompt=1, rating_scale="likert5")
    judge(study, users, 3, choices=("score",), score=5)
    records = [json.loads(line) for line in text(study, "jsonl").splitlines()]
    assert records == expected(study)
    assert {(r["image_b"], r["checkpoint_b"], r["score"], r["answer"], r["a_on_left"]) for r in records} == {
        (None, None, 5, "aligned", None)}
    rows = list(csv.DictReader(io.StringIO(text(study, "csv"))))
    assert [r["image_b"] for r in rows] == ["", "", ""] and [r["score"] for r in rows] == ["5", "5", "5"]


def test_a_study_without_judgments_is_a_header_or_nothing():
    study = open_pairwise(members=annotators(1))
    other = open_pairwise(members=annotators(1, prefix="x"))  # judgments of another study stay out
    judge(other, [m.annotator for m in other.memberships.all()], 1)
    assert text(study, "csv") == ",".join(exports.COLUMNS) + "\n"
    assert text(study, "jsonl") == ""


def test_unknown_format_is_refused(pairs):
    with pytest.raises(exports.ExportError, match="unknown format"):
        text(pairs, "xml")


# --- constant memory -------------------------------------------------------------------------

def test_rows_are_read_with_iterator_in_chunks_and_yielded_chunk_by_chunk(pairs, monkeypatch):
    calls = []
    real = QuerySet.iterator

    def spy(self, chunk_size=None):
        calls.append(chunk_size)
        for row in real(self, chunk_size=chunk_size):
            spy.read += 1
            yield row

    spy.read = 0
    monkeypatch.setattr(QuerySet, "iterator", spy)
    monkeypatch.setattr(QuerySet, "__len__", lambda self: pytest.fail("the queryset was materialised"))
    pieces = exports.judgments_export_chunks(study=pairs, fmt="csv", chunk_size=2)
    assert next(pieces) == ",".join(exports.COLUMNS) + "\n" and spy.read == 0  # header before any query
    seen = []
    for piece in pieces:
        seen.append((len(list(csv.reader(io.StringIO(piece)))), spy.read))
    # 7 rows in chunks of 2: each piece is written when its chunk is full, before the next rows are read
    assert [n for n, _ in seen] == [2, 2, 2, 1] and [r for _, r in seen] == [2, 4, 6, 7]
    assert calls == [2]


def test_default_chunk_size_is_used(pairs, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK_SIZE", 3)
    assert [len(p.splitlines()) for p in exports.judgments_export_chunks(study=pairs, fmt="jsonl")] == [3, 3, 1]


# --- API -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_researcher_downloads_a_streamed_file(pairs, researcher, fmt):
    response = client_for(researcher).get(reverse(f"api-study-judgments-{fmt}", args=[pairs.id]),
                                          HTTP_ACCEPT="text/csv")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith(exports.CONTENT_TYPES[fmt].split(";")[0])
    assert response["Content-Disposition"] == f'attachment; filename="study-{pairs.public_id}-judgments.{fmt}"'
    assert b"".join(response.streaming_content).decode() == text(pairs, fmt)


def test_researcher_gets_404_for_a_missing_study(researcher):
    assert client_for(researcher).get(reverse("api-study-judgments-csv", args=[999999])).status_code == 404


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_annotators_and_anonymous_cannot_export(pairs, fmt):
    member = pairs.memberships.first().annotator
    url = reverse(f"api-study-judgments-{fmt}", args=[pairs.id])
    anonymous = APIClient().get(url, HTTP_ACCEPT="text/csv")
    assert anonymous.status_code in (401, 403) and not anonymous.streaming
    assert anonymous.json()["detail"]  # errors stay JSON whatever the client accepts
    refused = client_for(member).get(url)
    assert refused.status_code == 403 and not refused.streaming and b"cups" not in refused.content
    browser = APIClient()
    browser.force_login(member)
    assert browser.get(url).status_code == 403


# --- command ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["public_id", "id", "name"])
def test_command_writes_the_same_file(pairs, tmp_path, key):
    out = tmp_path / "j.csv"
    call_command("export_judgments", str(getattr(pairs, key)), "--format", "csv", "--out", str(out),
                 stderr=io.StringIO())
    assert out.read_text(encoding="utf-8") == text(pairs, "csv")


def test_command_writes_jsonl_to_stdout(pairs):
    stdout = io.StringIO()
    call_command("export_judgments", str(pairs.public_id), "--format", "jsonl", "--out", "-", stdout=stdout)
    assert [json.loads(line) for line in stdout.getvalue().splitlines()] == expected(pairs)


def test_command_names_a_missing_study(pairs):
    with pytest.raises(CommandError, match="study 'no-such-study' not found"):
        call_command("export_judgments", "no-such-study", "--out", "-")
