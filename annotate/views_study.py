"""A study's page for researchers: progress, pace, annotators, reports, and the lifecycle
and pause actions (POST forms that come back to the page; a refusal shows on it with 400)."""
from __future__ import annotations

from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from annotate import csv_safe
from annotate import selectors_study as sel
from annotate.audit import audit
from annotate.charts import column_chart_svg
from annotate.models import Report, Study, StudyMembership
from annotate.services.crowd import crowd_browser_release
from annotate.services.reports import ReportError, report_request
from annotate.services.studies import (
    StudyError, membership_pause, membership_resume, study_close, study_crowd_link_set, study_open, study_reopen,
)
from annotate.views import researcher_required

# The preview runs nothing and fetches nothing: the report is self-contained (inline SVG/CSS).
REPORT_PREVIEW_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def format_duration(hours: float) -> str:
    """'45 min', '3 h 20 min', '2 d 4 h'."""
    minutes = max(1, round(hours * 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"
    return f"{minutes // 1440} d {(minutes % 1440) // 60} h"


def _study_page(request, study: Study, *, status: int = 200, **extra):
    progress = sel.study_progress(study)
    pace = sel.study_judgments_per_hour(study, hours=48)
    eta = sel.eta_hours(progress, pace)
    annotators = sel.study_annotator_table(study)
    labels = [f"{h:%H}h" for h in pace.hours]
    context = {
        "study": study,
        "checkpoints": [c.name for c in study.checkpoints.all()],
        "progress": progress,
        "pace": pace,
        "pace_rows": list(zip(pace.hours, pace.counts)),
        "pace_chart": mark_safe(column_chart_svg(  # noqa: S308 (charts.py escapes its labels)
            labels, pace.counts, every=6,
            label=f"Judgments per hour over the last 48 hours (UTC): {pace.total} in all")),
        "rate_window_hours": sel.RATE_WINDOW_HOURS,
        "eta": None if eta is None else format_duration(eta) if eta > 0 else "",
        "annotators": annotators,
        "crowd_workers": any(row.membership.external_worker_id for row in annotators),
        "skips": sel.study_skips(study),
        "flagged": sel.study_flagged(study),
        "agreement_min_items": sel.AGREEMENT_MIN_ITEMS,
        "reports": sel.study_recent_reports(study),
        "crowd_url": request.build_absolute_uri(reverse("crowd-start", args=[study.public_id])),
        "report_formats": Report.Format.choices,
        **extra,
    }
    return render(request, "dashboard/study.html", context, status=status)


@researcher_required
@require_GET
def study_detail(request, study_id: int):
    return _study_page(request, get_object_or_404(Study.objects.select_related("dataset"), pk=study_id))


def _lifecycle_view(service, name: str):
    @researcher_required
    @require_POST
    def view(request, study_id: int):
        study = get_object_or_404(Study.objects.select_related("dataset"), pk=study_id)
        try:
            service(study=study)
        except StudyError as exc:
            study.refresh_from_db()
            return _study_page(request, study, status=400, action_error=str(exc))
        return redirect("study-detail", study_id=study.pk)

    view.__name__ = name
    return view


def _member_view(action, name: str):
    @researcher_required
    @require_POST
    def view(request, study_id: int, membership_id: int):
        study = get_object_or_404(Study.objects.select_related("dataset"), pk=study_id)
        membership = get_object_or_404(StudyMembership, pk=membership_id, study=study)
        try:
            action(request, membership)
        except StudyError as exc:
            return _study_page(request, study, status=400, member_error=str(exc))
        return redirect(f"{_study_url(study)}#annotators-h")

    view.__name__ = name
    return view


def _crowd_link_on(*, study: Study) -> Study:
    return study_crowd_link_set(study=study, enabled=True)


def _crowd_link_off(*, study: Study) -> Study:
    return study_crowd_link_set(study=study, enabled=False)


def _pause(request, membership: StudyMembership) -> None:
    membership_pause(membership=membership, reason=request.POST.get("reason", ""))


def _resume(request, membership: StudyMembership) -> None:
    membership_resume(membership=membership)


def _release_browser(request, membership: StudyMembership) -> None:
    crowd_browser_release(membership=membership)


def _study_url(study: Study) -> str:
    return reverse("study-detail", kwargs={"study_id": study.pk})


@researcher_required
@require_GET
def study_crowd_workers_csv(request, study_id: int):
    """The crowd workers with the completion code each was given and the work they did."""
    study = get_object_or_404(Study, pk=study_id)
    response = HttpResponse(content_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="study-{study.pk}-crowd-workers.csv"',
        "Cache-Control": "private, no-store"})
    out = csv_safe.writer(response)
    out.writerow(sel.CROWD_WORKER_COLUMNS)
    out.writerows(sel.study_crowd_worker_rows(study))
    return response


@researcher_required
@require_POST
def study_report_build(request, study_id: int):
    """Ask a worker for a report (as the overview's form does); the page lists it."""
    study = get_object_or_404(Study.objects.select_related("dataset"), pk=study_id)
    try:
        report = report_request(study=study, fmt=request.POST.get("format", ""), created_by=request.user)
    except ReportError as exc:
        return _study_page(request, study, status=400, report_error=str(exc))
    audit(request, "report.request", report, study=study.pk, format=report.format)
    return redirect(f"{_study_url(study)}#reports-h")


@researcher_required
@require_GET
def study_report_preview(request, study_id: int, report_id: int):
    """A finished HTML report shown inline, sandboxed: no script, nothing fetched."""
    study = get_object_or_404(Study, pk=study_id)
    report = sel.study_report_for_preview(study=study, report_id=report_id)
    if report is None:
        raise Http404("no finished HTML report of this study with that id")
    try:
        content = report.file.open("rb")
    except FileNotFoundError:
        raise Http404("the report's file is gone") from None
    response = FileResponse(content, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = REPORT_PREVIEW_CSP
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


_STUDY = "studies/<int:study_id>/"
_MEMBER = _STUDY + "members/<int:membership_id>/"

urlpatterns = [
    path(_STUDY, study_detail, name="study-detail"),
    path(_STUDY + "open/", _lifecycle_view(study_open, "study_open"), name="study-open"),
    path(_STUDY + "close/", _lifecycle_view(study_close, "study_close"), name="study-close"),
    path(_STUDY + "reopen/", _lifecycle_view(study_reopen, "study_reopen"), name="study-reopen"),
    path(_STUDY + "crowd-link/on/", _lifecycle_view(_crowd_link_on, "crowd_link_on"), name="study-crowd-link-on"),
    path(_STUDY + "crowd-link/off/", _lifecycle_view(_crowd_link_off, "crowd_link_off"), name="study-crowd-link-off"),
    path(_STUDY + "crowd-workers.csv", study_crowd_workers_csv, name="study-crowd-workers-csv"),
    path(_MEMBER + "pause/", _member_view(_pause, "membership_pause"), name="study-member-pause"),
    path(_MEMBER + "resume/", _member_view(_resume, "membership_resume"), name="study-member-resume"),
    path(_MEMBER + "release-browser/", _member_view(_release_browser, "membership_release_browser"),
         name="study-member-release-browser"),
    path(_STUDY + "reports/build/", study_report_build, name="study-report-build"),
    path(_STUDY + "reports/<int:report_id>/preview/", study_report_preview, name="study-report-preview"),
]
