"""Reads for a researcher's study page: progress, judgments per hour, the annotator table,
recent reports.

Every query is scoped to one study and starts from its items (the queue index leads with
the study) or its memberships; counts over all items come from the counters the answer
services keep (``judgment_count``, ``taken``, ``answered_count``...), and the rest is
aggregated in the database. Only agreement needs the judgments themselves: one
(item, annotator, answer) row each, the answer mapped in SQL, the rest in numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone

import numpy as np
from django.db import connection
from django.db.models import Aggregate, Case, Count, F, FloatField, IntegerField, Q, Sum, Value, When
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from annotate.models import Judgment, Report, Skip, Study, StudyItem, StudyMembership
from workers.stats.agreement import MISSING, leave_one_out_majority

# The rate behind the estimated time to completion: judgments over about the last few hours.
RATE_WINDOW_HOURS = 6
# An agreement rate over fewer compared items than this is shown as n/a.
AGREEMENT_MIN_ITEMS = 5
# Annotators x items cells per leave-one-out pass: bounds memory for crowd studies with
# hundreds of workers (items are taken in slices; the per-annotator counts add up).
AGREEMENT_MAX_CELLS = 2_000_000


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class StudyProgress:
    items: int
    complete: int  # judgment_count >= redundancy
    in_progress: int  # judged or leased (taken > 0), not complete
    not_started: int
    gold_items: int
    judgments: int  # gold items included
    gold_judgments: int
    held_leases: int  # slots held by leases not yet answered, skipped or released
    redundancy: int

    @property
    def target(self) -> int:
        """Judgments the study needs: items x redundancy, gold items included."""
        return self.items * self.redundancy

    @property
    def remaining(self) -> int:
        return max(0, self.target - self.judgments)

    @property
    def share(self) -> float:
        return self.judgments / self.target if self.target else 0.0


def study_progress(study: Study) -> StudyProgress:
    """Items by state and judgments against the target: one aggregate over the study's items."""
    r = study.redundancy
    row = StudyItem.objects.filter(study_id=study.pk).aggregate(
        items=Count("pk"),
        complete=Count("pk", filter=Q(judgment_count__gte=r)),
        started=Count("pk", filter=Q(taken__gt=0) | Q(judgment_count__gt=0)),
        gold_items=Count("pk", filter=Q(is_gold=True)),
        judgments=Coalesce(Sum("judgment_count"), 0),
        gold_judgments=Coalesce(Sum("judgment_count", filter=Q(is_gold=True)), 0),
        taken=Coalesce(Sum("taken"), 0),
    )
    return StudyProgress(
        items=row["items"], complete=row["complete"], in_progress=row["started"] - row["complete"],
        not_started=row["items"] - row["started"], gold_items=row["gold_items"], judgments=row["judgments"],
        gold_judgments=row["gold_judgments"], held_leases=row["taken"] - row["judgments"], redundancy=r,
    )


# --------------------------------------------------------------------------- pace


@dataclass(frozen=True)
class JudgmentsPerHour:
    hours: list[datetime]  # the start of each clock hour (UTC), oldest first; the last is the current one
    counts: list[int]
    now: datetime
    rate_per_hour: float  # over the last RATE_WINDOW_HOURS buckets, up to now

    @property
    def total(self) -> int:
        return sum(self.counts)


def study_judgments_per_hour(study: Study, hours: int = 48, now: datetime | None = None) -> JudgmentsPerHour:
    """Judgments per clock hour (UTC) over the last ``hours`` hours, the current one included,
    and the recent rate: the judgments of the last RATE_WINDOW_HOURS buckets over the time
    from the first of them (or from the study's opening, when it opened since) to now, so
    that a study opened ten minutes ago is not judged by six hours. One GROUP BY over the
    study's recent judgments."""
    now = now or timezone.now()
    current = now.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)
    starts = [current - timedelta(hours=k) for k in range(hours - 1, -1, -1)]
    per_hour = dict(
        Judgment.objects.filter(item__study_id=study.pk, created_at__gte=starts[0], created_at__lte=now)
        .annotate(hour=TruncHour("created_at", tzinfo=dt_timezone.utc)).values("hour")
        .annotate(n=Count("pk")).order_by().values_list("hour", "n"))
    counts = [per_hour.get(start, 0) for start in starts]
    window = min(RATE_WINDOW_HOURS, hours)
    since = starts[-window] if study.opened_at is None else max(starts[-window], study.opened_at)
    elapsed_h = max((now - since).total_seconds(), 60.0) / 3600  # at least a minute: no rate from seconds
    rate = sum(counts[-window:]) / elapsed_h if elapsed_h > 0 else 0.0
    return JudgmentsPerHour(hours=starts, counts=counts, now=now, rate_per_hour=rate)


def eta_hours(progress: StudyProgress, pace: JudgmentsPerHour) -> float | None:
    """Hours to completion at the recent rate: 0 when complete, None when the rate is 0."""
    if progress.remaining == 0:
        return 0.0
    if pace.rate_per_hour <= 0:
        return None
    return progress.remaining / pace.rate_per_hour


# --------------------------------------------------------------------------- flagged judgments


@dataclass(frozen=True)
class FlaggedJudgments:
    """Judgments of annotators the gold check paused: kept, counted in the progress (their
    slots are taken), but not in reports. ``items_short`` items hold fewer counted judgments
    than the redundancy because of them."""

    judgments: int
    annotators: int
    items_short: int


def study_flagged(study: Study) -> FlaggedJudgments:
    """One aggregate; a second query (over the items with a flagged judgment) only when there are any."""
    row = Judgment.objects.filter(item__study_id=study.pk, is_flagged=True).aggregate(
        n=Count("pk"), annotators=Count("annotator", distinct=True))
    if not row["n"]:
        return FlaggedJudgments(judgments=0, annotators=0, items_short=0)
    short = (StudyItem.objects.filter(study_id=study.pk, is_gold=False, judgment_count__gte=study.redundancy,
                                      judgments__is_flagged=True)
             .annotate(flagged=Count("judgments")).filter(judgment_count__lt=F("flagged") + study.redundancy).count())
    return FlaggedJudgments(judgments=row["n"], annotators=row["annotators"], items_short=short)


# --------------------------------------------------------------------------- skips


@dataclass(frozen=True)
class NotLoadedItem:
    """An item an annotator skipped because an image did not load, with its images' ids (the
    researcher's image view) and whether their files are in storage now."""

    public_id: str
    prompt: str
    skips: int
    images: list[tuple[int, bool]]  # (image id, file present)


@dataclass(frozen=True)
class StudySkips:
    by_reason: list[tuple[str, int]]  # (reason label, count), every reason, in the model's order
    not_loaded: list[NotLoadedItem]  # the items skipped with "image did not load", most skips first
    not_loaded_items: int  # how many such items in all (the list is cut at its limit)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.by_reason)


def study_skips(study: Study, *, limit: int = 20, file_exists=None) -> StudySkips:
    """Skips by reason (one GROUP BY), and the items skipped because an image did not load
    (one more query, only when there are any): a file missing from storage shows here first.
    ``file_exists(name)`` defaults to the default storage's ``exists``."""
    counts = dict(Skip.objects.filter(item__study_id=study.pk).values("reason").annotate(n=Count("pk"))
                  .order_by().values_list("reason", "n"))
    by_reason = [(label, counts.get(value, 0)) for value, label in Skip.Reason.choices]
    if not counts.get(Skip.Reason.IMAGE_NOT_LOADED):
        return StudySkips(by_reason=by_reason, not_loaded=[], not_loaded_items=0)
    if file_exists is None:
        from django.core.files.storage import default_storage

        file_exists = default_storage.exists
    rows = list(StudyItem.objects.filter(study_id=study.pk, skips__reason=Skip.Reason.IMAGE_NOT_LOADED)
                .values("public_id", "prompt__text", "image_a_id", "image_a__file", "image_b_id", "image_b__file")
                .annotate(n=Count("skips")).order_by("-n", "pk"))
    items = [NotLoadedItem(
        public_id=str(r["public_id"]), prompt=r["prompt__text"], skips=r["n"],
        images=[(pk, bool(name) and file_exists(name)) for pk, name in
                ((r["image_a_id"], r["image_a__file"]), (r["image_b_id"], r["image_b__file"])) if pk is not None])
        for r in rows[:limit]]
    return StudySkips(by_reason=by_reason, not_loaded=items, not_loaded_items=len(rows))


# --------------------------------------------------------------------------- annotators


@dataclass
class AnnotatorRow:
    membership: StudyMembership
    median_time_ms: float | None  # over the annotator's judgments that recorded a time
    agreement_compared: int  # non-gold items with a unique leave-one-out majority
    agreement_agreed: int

    @property
    def judgments(self) -> int:
        return self.membership.answered_count

    @property
    def skips(self) -> int:
        return self.membership.skipped_count

    @property
    def agreement(self) -> float | None:
        """Agreement with the leave-one-out majority; None (n/a) over too few items."""
        if self.agreement_compared < AGREEMENT_MIN_ITEMS:
            return None
        return self.agreement_agreed / self.agreement_compared

    @property
    def gold_accuracy(self) -> float | None:
        return membership_gold_accuracy(self.membership)

    @property
    def median_seconds(self) -> float | None:
        return None if self.median_time_ms is None else self.median_time_ms / 1000

    @property
    def agreement_percent(self) -> float | None:
        return None if self.agreement is None else 100 * self.agreement

    @property
    def gold_percent(self) -> float | None:
        return None if self.gold_accuracy is None else 100 * self.gold_accuracy


def membership_gold_accuracy(membership: StudyMembership) -> float | None:
    return membership.gold_correct / membership.gold_answered if membership.gold_answered else None


def study_annotator_table(study: Study) -> list[AnnotatorRow]:
    """One row per member, by username: counts from the membership, the median time per
    item (GROUP BY in the database) and agreement with the leave-one-out majority."""
    memberships = list(StudyMembership.objects.filter(study_id=study.pk).select_related("annotator")
                       .order_by("annotator__username"))
    medians = study_median_time_ms(study)
    agreement = study_loo_agreement(study)
    return [AnnotatorRow(membership=m, median_time_ms=medians.get(m.annotator_id),
                         agreement_compared=agreement.get(m.annotator_id, (0, 0))[0],
                         agreement_agreed=agreement.get(m.annotator_id, (0, 0))[1])
            for m in memberships]


class _Median(Aggregate):
    """PostgreSQL's ordered-set median (interpolated between the two middle values)."""

    function = "PERCENTILE_CONT"
    name = "Median"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


def study_median_time_ms(study: Study) -> dict[int, float]:
    """{annotator id: median Judgment.time_spent_ms} over the study's judgments with a time."""
    if connection.vendor == "postgresql":
        return dict(Judgment.objects.filter(item__study_id=study.pk, time_spent_ms__isnull=False)
                    .values("annotator_id").annotate(median=_Median("time_spent_ms")).order_by()
                    .values_list("annotator_id", "median"))
    return _median_time_ms_portable(study)


def _median_time_ms_portable(study: Study) -> dict[int, float]:
    """The same median with window functions (SQLite 3.25+, PostgreSQL): the mean of the one
    or two middle rows of each annotator's times."""
    sql = (f"SELECT annotator_id, AVG(t) FROM ("
           f" SELECT j.annotator_id, j.time_spent_ms AS t,"
           f"  ROW_NUMBER() OVER (PARTITION BY j.annotator_id ORDER BY j.time_spent_ms) AS k,"
           f"  COUNT(*) OVER (PARTITION BY j.annotator_id) AS n"
           f" FROM {Judgment._meta.db_table} j JOIN {StudyItem._meta.db_table} i ON i.id = j.item_id"
           f" WHERE i.study_id = %s AND j.time_spent_ms IS NOT NULL) ranked"
           f" WHERE k IN ((n + 1) / 2, (n + 2) / 2) GROUP BY annotator_id")
    with connection.cursor() as cursor:
        cursor.execute(sql, [study.pk])
        return {annotator: float(median) for annotator, median in cursor.fetchall()}


# The answer in the item's own terms (annotate.services.annotation.answer_in_item_terms) as a
# code, computed in SQL: pairs a / b / tie, ratings aligned / not_aligned / unsure (Likert 3).
ANSWER_CODES = {"a": 0, "b": 1, "tie": 2, "aligned": 0, "not_aligned": 1, "unsure": 2}
_ANSWER_CODE = Case(
    When(choice="tie", then=Value(ANSWER_CODES["tie"])),
    When(Q(choice="left", a_on_left=True) | Q(choice="right", a_on_left=False),
         then=Value(ANSWER_CODES["a"])),
    When(choice__in=["left", "right"], then=Value(ANSWER_CODES["b"])),
    When(choice="aligned", then=Value(ANSWER_CODES["aligned"])),
    When(choice="not_aligned", then=Value(ANSWER_CODES["not_aligned"])),
    When(choice="score", score__gte=4, then=Value(ANSWER_CODES["aligned"])),
    When(choice="score", score__lte=2, then=Value(ANSWER_CODES["not_aligned"])),
    default=Value(ANSWER_CODES["unsure"]),
    output_field=IntegerField(),
)


def study_answer_rows(study: Study) -> np.ndarray:
    """(n, 3) int64: item id, annotator id, answer code of each judgment on a non-gold item."""
    rows = list(Judgment.objects.filter(item__study_id=study.pk, item__is_gold=False)
                .annotate(answer=_ANSWER_CODE).values_list("item_id", "annotator_id", "answer"))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def study_loo_agreement(study: Study) -> dict[int, tuple[int, int]]:
    """{annotator id: (items compared, items agreed)} with the leave-one-out majority of the
    other annotators (workers.stats.agreement: ties in the others' majority are left out),
    over the non-gold items; every judgment counts, those of flagged annotators included."""
    return loo_agreement_counts(study_answer_rows(study))


def loo_agreement_counts(rows: np.ndarray, max_cells: int = AGREEMENT_MAX_CELLS
                         ) -> dict[int, tuple[int, int]]:
    """Leave-one-out agreement from (item, annotator, code) rows, in slices of items so that
    the annotators x items matrix of a slice stays under ``max_cells``."""
    if rows.size == 0:
        return {}
    items, item_pos = np.unique(rows[:, 0], return_inverse=True)
    annotators, ann_pos = np.unique(rows[:, 1], return_inverse=True)
    order = np.argsort(item_pos, kind="stable")
    item_pos, ann_pos, codes = item_pos[order], ann_pos[order], rows[order, 2]
    compared = np.zeros(len(annotators), dtype=np.int64)
    agreed = np.zeros(len(annotators), dtype=np.int64)
    per_slice = max(1, max_cells // len(annotators))
    for first in range(0, len(items), per_slice):
        lo, hi = np.searchsorted(item_pos, [first, first + per_slice])
        matrix = np.full((len(annotators), min(per_slice, len(items) - first)), MISSING, dtype=np.int64)
        matrix[ann_pos[lo:hi], item_pos[lo:hi] - first] = codes[lo:hi]
        for k, result in enumerate(leave_one_out_majority(matrix)):
            compared[k] += result.n_compared
            agreed[k] += result.n_agree
    return {int(a): (int(c), int(g)) for a, c, g in zip(annotators, compared, agreed)}


# --------------------------------------------------------------------------- crowd workers


CROWD_WORKER_COLUMNS = ["worker_id", "username", "answered", "skipped", "gold_accuracy", "completion_code"]


def study_crowd_worker_rows(study: Study) -> list[tuple]:
    """One row per crowd worker (CROWD_WORKER_COLUMNS), by worker id: the code each was given
    next to the work they did, for checking the codes a crowd platform reports before paying."""
    members = (StudyMembership.objects.filter(study_id=study.pk).exclude(external_worker_id="")
               .select_related("annotator").order_by("external_worker_id"))
    rows = []
    for m in members:
        accuracy = membership_gold_accuracy(m)
        rows.append((m.external_worker_id, m.annotator.username, m.answered_count, m.skipped_count,
                     None if accuracy is None else round(accuracy, 3), m.completion_code))
    return rows


# --------------------------------------------------------------------------- reports


def study_recent_reports(study: Study, limit: int = 10) -> list[Report]:
    return list(Report.objects.filter(study_id=study.pk).order_by("-created_at", "-pk")[:limit])


def study_report_for_preview(*, study: Study, report_id: int) -> Report | None:
    """A finished HTML report of the study (None otherwise)."""
    return Report.objects.filter(study_id=study.pk, pk=report_id, format=Report.Format.HTML,
                                 status=Report.Status.SUCCEEDED).exclude(file="").first()
