"""What every admin here shares: researchers' permissions, pagination without counts on the
big tables, streamed CSV exports, the audit hooks, the base admins (adds through the services)
and the actions on jobs."""
from __future__ import annotations

import datetime as dt
import html
import io
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from decimal import Decimal
from functools import partial, wraps

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.contrib.admin.utils import lookup_field
from django.core.exceptions import EmptyResultSet, FullResultSet
from django.core.paginator import Paginator
from django.db import IntegrityError, connections, transaction
from django.forms.models import BaseInlineFormSet
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, strip_tags
from django.utils.http import urlencode
from django.utils.safestring import SafeData
from django.utils.text import Truncator

from annotate import csv_safe, models
from annotate.audit import audit
from annotate.roles import is_researcher
from annotate.selectors import count_of  # noqa: F401 - the admins' counts of children
from annotate.services import exports, jobs
from annotate.services.generation import generation_job_images
from annotate.services.scoring import (
    ScoringError,
    prompt_sets_select,
    scoring_job_images,
)

BIG_PAGE = 50  # tables with millions of rows
PAGE = 100
CSV_CHUNK = 2000
MOST_NAMED = 20  # objects named in one message


# ---------------------------------------------------------------- shared pieces

def _researcher(request) -> bool:
    """Whether the user is a researcher, asked once per request (the admin asks per model)."""
    if not hasattr(request, "_calibra_is_researcher"):
        request._calibra_is_researcher = is_researcher(request.user)
    return request._calibra_is_researcher


class ResearcherPermissions:
    """Researchers may do what the admin allows (``can_add``, ``can_change``, ``can_delete``);
    other staff need Django's model permissions as usual."""

    can_add = can_change = can_delete = True

    def has_module_permission(self, request):
        return _researcher(request) or super().has_module_permission(request)

    def has_view_permission(self, request, obj=None):
        return _researcher(request) or super().has_view_permission(request, obj)

    def has_add_permission(self, request, *args):
        return self.can_add and (_researcher(request) or super().has_add_permission(request, *args))

    def has_change_permission(self, request, obj=None):
        return self.can_change and (_researcher(request) or super().has_change_permission(request, obj))

    def has_delete_permission(self, request, obj=None):
        return self.can_delete and (_researcher(request) or super().has_delete_permission(request, obj))


def changelist_link(model, text, **filters) -> str:
    url = reverse(f"admin:annotate_{model._meta.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(filters), text)


def short(text: str, length: int = 80) -> str:
    return Truncator(text).chars(length)


def _named(items: list[str], sep: str = ", ") -> str:
    more = len(items) - MOST_NAMED
    return sep.join(items[:MOST_NAMED]) + (f" and {more} more" if more > 0 else "")


class LargeTablePaginator(Paginator):
    """On PostgreSQL, an unfiltered list of a large table is counted from the planner's
    estimate (pg_class.reltuples) instead of COUNT(*) over millions of rows."""

    ESTIMATE_FROM = 100_000

    @cached_property
    def count(self):
        queryset = self.object_list
        connection = connections[queryset.db]
        if connection.vendor == "postgresql" and not queryset.query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                               [queryset.model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] >= self.ESTIMATE_FROM:
                return row[0]
        return super().count


# ---------------------------------------------------------------- CSV export

def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):  # a number stays one: csv_safe neutralises text only
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, SafeData):  # a link or other markup of a list column
        return html.unescape(strip_tags(value))
    return str(value)


def csv_pieces(header: list[str], rows: Iterable[list]) -> Iterator[str]:
    """CSV text one chunk of rows at a time, the header first."""
    buffer = io.StringIO()
    writer = csv_safe.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    yield csv_safe.take(buffer)
    for n, row in enumerate(rows, 1):
        writer.writerow(row)
        if n % CSV_CHUNK == 0:
            yield csv_safe.take(buffer)
    yield csv_safe.take(buffer)


def streamed(queryset) -> Iterator:
    """The rows through a cursor, as the judgment export reads them: in a transaction on
    PostgreSQL so that the named cursor streams, none on SQLite (it would take the write lock)."""
    streams = connections[queryset.db].vendor == "postgresql"
    with transaction.atomic(using=queryset.db) if streams else nullcontext():
        yield from queryset.iterator(chunk_size=CSV_CHUNK)


def csv_response(filename: str, pieces: Iterator[str]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(pieces, content_type=exports.CONTENT_TYPES["csv"])
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# ---------------------------------------------------------------- the audit log

AUDITED_IDS = 100  # ids of the selected objects named in an action's event


def _job_kind(job) -> str:
    return "generation" if isinstance(job, models.GenerationJob) else "scoring"


class AuditedAdmin:
    """Writes an audit event for each add, change and deletion (beside Django's LogEntry) and
    for each action run (with the first ids it ran on). ``delete_selected`` is recorded by its
    deletions."""

    audit_additions = True

    def log_addition(self, request, obj, message):
        if self.audit_additions:
            audit(request, "admin.add", obj, message=message)
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        audit(request, "admin.change", obj, message=message)
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            audit(request, "admin.delete", obj)
        return super().log_deletions(request, queryset)

    def get_actions(self, request):
        return {name: (func if name == "delete_selected" else self._audited(func, name), name, description)
                for name, (func, name, description) in super().get_actions(request).items()}

    @staticmethod
    def _audited(func, name: str):
        @wraps(func)
        def run(modeladmin, request, queryset):
            ids = [str(pk) for pk in queryset.values_list("pk", flat=True)[:AUDITED_IDS + 1]]
            response = func(modeladmin, request, queryset)
            audit(request, "admin.action", modeladmin.model, name=name, ids=ids[:AUDITED_IDS],
                  more=len(ids) > AUDITED_IDS)
            return response

        return run


# ---------------------------------------------------------------- the base admins

class BoundedChangeList(ChangeList):
    """A date past the calendar (?created_at__year=99999999999) is a bad filter, the admin's ?e=1
    page, as a malformed date already is: Django let its OverflowError be a 500, from the date
    drill-down or when the query's SQL was made (so that is made here, once)."""

    def get_queryset(self, request, exclude_parameters=None):
        try:
            queryset = super().get_queryset(request, exclude_parameters)
            queryset.query.get_compiler(queryset.db).as_sql()
        except OverflowError as exc:
            raise IncorrectLookupParameters(exc) from exc
        except (EmptyResultSet, FullResultSet):  # nothing to match, or everything: fine SQL-wise
            pass
        return queryset


class ResearcherAdmin(AuditedAdmin, ResearcherPermissions, admin.ModelAdmin):
    """What every admin here shares: researcher permissions, the CSV export, read-only fields
    once an object exists (``readonly_on_change``, or ``"__all__"``)."""

    actions = ["export_csv"]
    list_per_page = PAGE
    readonly_on_change: tuple[str, ...] | str = ()

    def get_changelist(self, request, **kwargs):
        return BoundedChangeList

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            extra = self.readonly_on_change
            if extra == "__all__":
                extra = [f.name for f in self.model._meta.get_fields()
                         if f.concrete and (f.editable or f.many_to_many) and not f.auto_created]
            fields += [f for f in extra if f not in fields]
        return fields

    @admin.action(description="Export selected as CSV")
    def export_csv(self, request, queryset):
        """The columns of the list (the id first), one row per selected object, streamed."""
        columns = [c for c in self.get_list_display(request) if isinstance(c, str) and c != "__str__"]
        if "id" not in columns:
            columns.insert(0, "id")
        rows = ([_csv_cell(lookup_field(c, obj, self)[2]) for c in columns] for obj in streamed(queryset))
        return csv_response(f"{self.model._meta.model_name}.csv", csv_pieces(columns, rows))

    def report_outcome(self, request, done: str, acted: list[str], skipped: list[tuple[str, str]]) -> None:
        """How many objects an action acted on, and which it skipped and why."""
        if acted:
            self.message_user(request, f"{done} {len(acted)}: {_named(acted)}.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"Skipped {len(skipped)}: "
                              + _named([f"{what} ({why})" for what, why in skipped], "; ") + ".",
                              messages.WARNING)
        if not acted and not skipped:
            self.message_user(request, "Nothing to do.", messages.INFO)


class BigTableAdmin(ResearcherAdmin):
    list_per_page = BIG_PAGE
    show_full_result_count = False
    paginator = LargeTablePaginator


class ReadOnlyAdmin(BigTableAdmin):
    """Rows that workers or the annotation engine own: listed and exported, never edited here."""

    can_add = can_change = can_delete = False


class ServiceAddForm(forms.ModelForm):
    """The add form of ``ServiceAddAdmin``: once the fields are clean, it calls the service
    (``create``, bound to the request by the admin) in place of the model's own validation and
    save. A service error becomes the error of the field its message starts with (of the form
    when no field is named), and the service's transaction leaves nothing written."""

    create: Callable | None = None
    service_errors: tuple[type[Exception], ...] = ()
    # Initial values where the service's default is not the model's (which the blank instance
    # would show); values given in the URL win.
    add_initial: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, value in self.add_initial.items():
            if not self.initial.get(name):
                self.initial[name] = value

    def _post_clean(self):
        if self.errors:
            return
        try:
            with transaction.atomic():
                self.created = self.create(self.cleaned_data)
        except self.service_errors as exc:
            field, named, message = str(exc).partition(": ")
            base, _, key = field.partition(".")  # "config.error_rate: ..." belongs to config
            if named and base in self.fields:
                self.add_error(base, f"{key}: {message}" if key else message)
            else:
                self.add_error(None, str(exc))
        except IntegrityError as exc:  # a database constraint the service does not check itself
            self.add_error(None, f"The database refused it: {exc}")


class ServiceAddAdmin(ResearcherAdmin):
    """An add goes through a service: ``create(request, data)`` returns the saved object. The add
    page shows ``add_fields`` only and no inlines, so the object is whole when the service
    returns and the admin's own save does nothing more."""

    add_form: type[ServiceAddForm] = ServiceAddForm
    add_fields: tuple[str, ...] = ()
    service_errors: tuple[type[Exception], ...] = ()

    # The service returns the object already registered under the name when its settings are
    # the same: an add of it is refused, naming it, rather than reported as added.
    refuse_existing_name = False
    audit_additions = False  # the service (or ``create``) records the add as what it made

    def create(self, request, data: dict):
        raise NotImplementedError

    def _create(self, request, data: dict):
        existing = self.model.objects.filter(name=data["name"]).first() if self.refuse_existing_name else None
        made = self.create(request, data)
        if existing is not None and made.pk == existing.pk:
            raise self.service_errors[0](f"name: already registered, with the same settings, as "
                                         f"{self.model._meta.verbose_name} {existing.pk}")
        return made

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": self.add_fields})]
        return super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else super().get_readonly_fields(request, obj)

    def get_inlines(self, request, obj):
        return [] if obj is None else super().get_inlines(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is not None:
            return super().get_form(request, obj, change=change, **kwargs)
        form = super().get_form(request, None, change=change, form=self.add_form, **kwargs)
        form.create = staticmethod(partial(self._create, request))  # a class made for this request
        form.service_errors = self.service_errors
        return form

    def save_form(self, request, form, change):
        return super().save_form(request, form, change) if change else form.created

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        if change:
            super().save_related(request, form, formsets, change)


class FirstRowsFormSet(BaseInlineFormSet):
    """An inline of the first ``max_rows`` related rows only, for relations that can grow large."""

    max_rows = 100

    def get_queryset(self):
        if not hasattr(self, "_first_rows"):
            self._first_rows = super().get_queryset()[: self.max_rows]
        return self._first_rows


class ReadOnlyInline(ResearcherPermissions, admin.TabularInline):
    can_add = can_change = can_delete = False
    extra = 0
    show_change_link = True
    formset = FirstRowsFormSet

    def get_readonly_fields(self, request, obj=None):
        return self.fields


# ---------------------------------------------------------------- actions on jobs

# A succeeded job is queued again here because ``jobs.job_retry`` takes only failed or
# cancelled ones; the worker makes (or scores) only what is missing, as on a retry.
@transaction.atomic
def _generation_missing(job: models.GenerationJob) -> bool:
    planned = job.dataset.prompts.count() * len(job.seeds) * job.images_per_seed
    return generation_job_images(job).count() < planned


def _scoring_missing(job: models.ScoringJob) -> bool:
    """Whether an image of the job lacks one of its scores (ScoringError: no prompt sets)."""
    images = scoring_job_images(job)
    scores = models.RewardScore.objects.filter(reward_model=job.reward_model_id)
    variants = models.RewardScore.Variant
    if variants.RAW in job.variants and images.exclude(
            id__in=scores.filter(variant=variants.RAW).values("image_id")).exists():
        return True
    if variants.TEXTNORM in job.variants:
        sets = prompt_sets_select(prompt_ids=images.values_list("prompt_id", flat=True).distinct(),
                                  source=job.prompt_set_source, version=job.prompt_set_version)
        scored = scores.filter(variant=variants.TEXTNORM, normalize=job.normalize, scale=job.scale,
                               temperature=job.temperature, prompt_set_id__in=[s.id for s in sets.values()])
        return images.exclude(id__in=scored.values("image_id")).exists()
    return False


def job_run_again(job, missing: Callable) -> tuple[bool, str]:
    """Queue a job again so that it makes what is missing: (queued, what was done or why not)."""
    Status = models.WorkerJob.Status
    if job.status in (Status.FAILED, Status.CANCELLED):
        try:
            jobs.job_retry(job)
        except jobs.JobError as exc:  # its status changed meanwhile
            return False, str(exc)
        return True, "retried"
    if job.status in (Status.QUEUED, Status.RUNNING):
        return False, f"already {job.status}"
    try:
        if not missing(job):
            return False, "complete: nothing is missing"
    except ScoringError as exc:
        return False, str(exc)
    return (True, "queued again") if jobs.job_requeue_succeeded(job) else (False, "its status changed meanwhile")


class JobAdmin(ServiceAddAdmin):
    """What generation and scoring jobs share: view-only once made (the worker owns status and
    progress), run again and cancel through ``annotate.services.jobs``."""

    # Deleting a job would unlink its images or scores (SET_NULL) and lose what "run again" reuses.
    can_change = can_delete = False
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    readonly_fields = ["status", "total_images", "done_images", "error", "created_by", "created_at",
                       "started_at", "finished_at"]
    missing: Callable
    service: Callable  # the service that makes a job from the add form's fields
    audit_action = ""

    def create(self, request, data):
        job = type(self).service(**{f: data[f] for f in self.add_fields}, created_by=request.user)
        audit(request, self.audit_action, job)
        return job

    @admin.display(description="progress")
    def progress(self, job):
        return f"{job.done_images}/{job.total_images}"

    def _run_again(self, request, queryset):
        acted, skipped = [], []
        for job in queryset:
            queued, what = job_run_again(job, self.missing)
            if queued:
                audit(request, f"{_job_kind(job)}_job.retry", job, how=what)
            (acted.append(f"job {job.pk} ({what})") if queued else skipped.append((f"job {job.pk}", what)))
        self.report_outcome(request, "Queued", acted, skipped)

    @admin.action(description="Cancel selected (queued or running)")
    def cancel(self, request, queryset):
        acted, skipped = [], []
        for job in queryset:
            try:
                jobs.job_cancel(job)
                audit(request, f"{_job_kind(job)}_job.cancel", job)
                acted.append(f"job {job.pk}")
            except jobs.JobError as exc:
                skipped.append((f"job {job.pk}", str(exc)))
        self.report_outcome(request, "Cancelled", acted, skipped)
