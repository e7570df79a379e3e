"""The admin: a researcher's management tool for every model of the domain.

Researchers are staff and hold no Django model permissions: their group is their role, so
every admin here grants them what it allows (``ResearcherPermissions``); other staff fall back
to Django's permissions, and annotators, who are not staff, never reach the admin.

What the admin writes goes through the services where one exists: adding a checkpoint,
reward model, generation or scoring job, study or report calls its ``*_create`` /
``*_register`` / ``*_request`` service (``ServiceAddAdmin``: the service's error, which starts
with the field's name, becomes that field's error, and nothing is written); the actions open,
close, retry, cancel, pause and resume through theirs and report what they did and what they
skipped, and why. Rows that workers or the annotation engine own (images, scores, leases,
judgments, skips, the counters of items and memberships) are read-only here.

Every add, change, deletion and action here is also written to the audit log
(``AuditedAdmin``; the auth app's users and groups too); an add through a service is recorded
by the service's own event (``study.create``, ``generation_job.create``...) instead of a second
``admin.add``. The log itself is read-only here.

The tables with millions of rows (images, scores, labels, items, leases, judgments, skips)
never show a count of their children, skip the full-table count, use raw-id widgets for
their foreign keys and filter by date with ``created_at`` list filters rather than a date
hierarchy (which reads MIN/MAX and DISTINCT days over the whole table on every page).
"""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from functools import partial, wraps

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import lookup_field
from django.core.paginator import Paginator
from django.db import IntegrityError, connections, transaction
from django.db.models import Count, Exists, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.forms.models import BaseInlineFormSet
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, strip_tags
from django.utils.http import urlencode
from django.utils.safestring import SafeData
from django.utils.text import Truncator

from annotate import models
from annotate.audit import audit
from annotate.roles import RESEARCHERS, is_researcher
from annotate.services import exports, jobs, studies
from annotate.services.checkpoints import CheckpointRegistrationError, checkpoint_register
from annotate.services.generation import GenerationError, generation_job_create, generation_job_images
from annotate.services.reports import ReportError, report_request
from annotate.services.scoring import (
    ScoringError,
    prompt_sets_select,
    reward_model_create,
    scoring_job_create,
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


def count_of(model, fk: str) -> Coalesce:
    """How many ``model`` rows point at the row by ``fk``: a correlated subquery, which the
    database evaluates for the rows shown (one index range each), with no join or GROUP BY over
    the whole table and no query per row."""
    rows = (model.objects.filter(**{fk: OuterRef("pk")}).order_by().values(fk)
            .annotate(n=Count("*")).values("n"))
    return Coalesce(Subquery(rows, output_field=IntegerField()), 0)


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
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    yield exports.take(buffer)
    for n, row in enumerate(rows, 1):
        writer.writerow(row)
        if n % CSV_CHUNK == 0:
            yield exports.take(buffer)
    yield exports.take(buffer)


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

class ResearcherAdmin(AuditedAdmin, ResearcherPermissions, admin.ModelAdmin):
    """What every admin here shares: researcher permissions, the CSV export, read-only fields
    once an object exists (``readonly_on_change``, or ``"__all__"``)."""

    actions = ["export_csv"]
    list_per_page = PAGE
    readonly_on_change: tuple[str, ...] | str = ()

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

    can_change = False
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


# ---------------------------------------------------------------- datasets and prompts

@admin.register(models.Dataset)
class DatasetAdmin(ResearcherAdmin):
    list_display = ["name", "source", "category", "prompt_count", "created_at"]
    list_filter = ["source", "category"]
    search_fields = ["name", "description", "category"]
    date_hierarchy = "created_at"
    ordering = ["name"]
    readonly_fields = ["created_at"]
    can_delete = False  # a cascade over its prompts' images and scores: millions of rows

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_prompts=count_of(models.Prompt, "dataset"))

    @admin.display(description="prompts", ordering="n_prompts")
    def prompt_count(self, dataset):
        return changelist_link(models.Prompt, dataset.n_prompts, dataset__id__exact=dataset.pk)


class ContrastivePromptSetInline(ReadOnlyInline):
    model = models.ContrastivePromptSet
    fields = ["source", "version", "generator", "texts", "created_at"]


@admin.register(models.Prompt)
class PromptAdmin(ResearcherAdmin):
    list_display = ["id", "prompt_text", "dataset", "category", "source_index", "contrastive_set_count",
                    "images_link"]
    list_filter = ["dataset", "category"]
    search_fields = ["text"]
    list_select_related = ["dataset"]
    ordering = ["dataset", "source_index"]
    inlines = [ContrastivePromptSetInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_sets=count_of(models.ContrastivePromptSet, "prompt"))

    @admin.display(description="text", ordering="text")
    def prompt_text(self, prompt):
        return short(prompt.text)

    @admin.display(description="contrastive sets", ordering="n_sets")
    def contrastive_set_count(self, prompt):
        return prompt.n_sets

    @admin.display(description="images")
    def images_link(self, prompt):
        return changelist_link(models.Image, "images", prompt__id__exact=prompt.pk)


@admin.register(models.ContrastivePromptSet)
class ContrastivePromptSetAdmin(ResearcherAdmin):
    list_display = ["id", "prompt_text", "source", "version", "generator", "text_count", "created_at"]
    list_filter = ["source", "prompt__dataset"]
    search_fields = ["prompt__text", "version", "generator"]
    date_hierarchy = "created_at"
    raw_id_fields = ["prompt"]
    list_select_related = ["prompt"]
    ordering = ["-created_at"]
    readonly_fields = ["created_at"]
    # The version identifies the texts: new texts come as a new version, never as an edit.
    readonly_on_change = "__all__"

    @admin.display(description="prompt", ordering="prompt__text")
    def prompt_text(self, prompt_set):
        return short(prompt_set.prompt.text, 60)

    @admin.display(description="texts")
    def text_count(self, prompt_set):
        return len(prompt_set.texts)


# ---------------------------------------------------------------- checkpoints and generation

class DerivedCheckpointInline(ReadOnlyInline):
    model = models.Checkpoint
    fk_name = "derived_from"
    fields = ["name", "backend", "config", "fingerprint", "created_at"]
    verbose_name = "best-of-n checkpoint"
    verbose_name_plural = "best-of-n checkpoints selected from this one"


class CheckpointAddForm(ServiceAddForm):
    class Meta:
        model = models.Checkpoint
        fields = ["name", "backend", "location", "base_model", "config", "description"]


@admin.register(models.Checkpoint)
class CheckpointAdmin(ServiceAddAdmin):
    list_display = ["name", "backend", "location", "derived_from", "job_count", "images_link",
                    "short_fingerprint", "created_at"]
    list_filter = ["backend"]
    search_fields = ["name", "location", "base_model", "fingerprint", "description"]
    date_hierarchy = "created_at"
    list_select_related = ["derived_from"]
    ordering = ["name"]
    readonly_fields = ["fingerprint", "derived_from", "created_at"]
    # New weights or settings come as a new checkpoint: the fingerprint stands for these.
    readonly_on_change = ["backend", "location", "base_model", "config"]
    inlines = [DerivedCheckpointInline]
    actions = [*ResearcherAdmin.actions, "regenerate"]
    add_form = CheckpointAddForm
    add_fields = ("name", "backend", "location", "base_model", "config", "description")
    service_errors = (CheckpointRegistrationError,)

    refuse_existing_name = True

    def create(self, request, data):
        return checkpoint_register(**{f: data[f] for f in self.add_fields})

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_jobs=count_of(models.GenerationJob, "checkpoint"))

    @admin.display(description="jobs", ordering="n_jobs")
    def job_count(self, checkpoint):
        return changelist_link(models.GenerationJob, checkpoint.n_jobs, checkpoint__id__exact=checkpoint.pk)

    @admin.display(description="images")
    def images_link(self, checkpoint):
        return changelist_link(models.Image, "images", checkpoint__id__exact=checkpoint.pk)

    @admin.display(description="fingerprint", ordering="fingerprint")
    def short_fingerprint(self, checkpoint):
        return checkpoint.fingerprint[:12]

    @admin.action(description="Regenerate images (new generation job per dataset it has images of)")
    def regenerate(self, request, queryset):
        """One new job per dataset the checkpoint has images of, with the settings of its latest
        job there; the worker makes only the images still missing (new prompts, deleted files)."""
        acted, skipped = [], []
        for checkpoint in queryset:
            if checkpoint.backend == models.Checkpoint.Backend.BEST_OF_N:
                skipped.append((checkpoint.name, "a best-of-n selection makes no images of its own"))
                continue
            datasets = models.Dataset.objects.filter(Exists(models.Image.objects.filter(
                checkpoint=checkpoint, prompt__dataset=OuterRef("pk")))).order_by("name")
            if not datasets:
                skipped.append((checkpoint.name, "it has no images"))
            for dataset in datasets:
                what = f"{checkpoint.name} on {dataset.name}"
                latest = (models.GenerationJob.objects.filter(checkpoint=checkpoint, dataset=dataset)
                          .order_by("-created_at", "-pk").first())
                if latest is None:
                    skipped.append((what, "no generation job made its images: no settings to reuse"))
                    continue
                if latest.status in (models.WorkerJob.Status.QUEUED, models.WorkerJob.Status.RUNNING):
                    skipped.append((what, f"job {latest.pk} is still {latest.status}"))
                    continue
                try:
                    job = generation_job_create(
                        checkpoint=checkpoint, dataset=dataset, seeds=latest.seeds,
                        images_per_seed=latest.images_per_seed, width=latest.width, height=latest.height,
                        num_inference_steps=latest.num_inference_steps, guidance_scale=latest.guidance_scale,
                        scheduler=latest.scheduler, dtype=latest.dtype, created_by=request.user)
                except GenerationError as exc:
                    skipped.append((what, str(exc)))
                    continue
                audit(request, "generation_job.create", job, settings_of=latest.pk)
                acted.append(f"job {job.pk} ({what}, settings of job {latest.pk})")
        self.report_outcome(request, "Created", acted, skipped)


class GenerationJobAddForm(ServiceAddForm):
    seeds = forms.CharField(help_text="comma-separated non-negative integers, e.g. 0, 1, 2")
    add_initial = {"seeds": "0"}

    class Meta:
        model = models.GenerationJob
        fields = ["checkpoint", "dataset", "images_per_seed", "width", "height", "num_inference_steps",
                  "guidance_scale", "scheduler", "dtype"]

    def clean_seeds(self):
        try:
            return [int(s) for s in self.cleaned_data["seeds"].replace(",", " ").split()]
        except ValueError:
            raise forms.ValidationError("must be integers separated by commas") from None


@admin.register(models.GenerationJob)
class GenerationJobAdmin(JobAdmin):
    list_display = ["id", "checkpoint", "dataset", "status", "progress", "seeds", "images_per_seed",
                    "created_by", "created_at", "finished_at"]
    list_filter = ["status", "checkpoint", "dataset"]
    search_fields = ["checkpoint__name", "dataset__name", "error"]
    list_select_related = ["checkpoint", "dataset", "created_by"]
    actions = [*ResearcherAdmin.actions, "run_again", "cancel"]
    add_form = GenerationJobAddForm
    add_fields = ("checkpoint", "dataset", "seeds", "images_per_seed", "width", "height",
                  "num_inference_steps", "guidance_scale", "scheduler", "dtype")
    service_errors = (GenerationError,)
    missing = staticmethod(_generation_missing)
    service = staticmethod(generation_job_create)
    audit_action = "generation_job.create"

    @admin.action(description="Run again (only missing images)")
    def run_again(self, request, queryset):
        self._run_again(request, queryset.select_related("dataset"))


# ---------------------------------------------------------------- images, rewards, labels

class RewardScoreInline(ReadOnlyInline):
    model = models.RewardScore
    fields = ["reward_model", "variant", "prompt_set", "normalize", "scale", "temperature", "value",
              "created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("reward_model")


class HumanLabelInline(ReadOnlyInline):
    model = models.HumanLabel
    fields = ["slot", "value", "source"]


@admin.register(models.Image)
class ImageAdmin(BigTableAdmin):
    list_display = ["id", "source_name", "prompt_text", "checkpoint", "seed", "index", "job", "has_file",
                    "created_at"]
    list_filter = ["checkpoint", "prompt__dataset", "created_at"]
    search_fields = ["source_name", "=sha256", "prompt__text"]
    list_select_related = ["prompt", "checkpoint", "job__checkpoint", "job__dataset"]
    raw_id_fields = ["prompt", "job"]
    ordering = ["-id"]
    inlines = [RewardScoreInline, HumanLabelInline]
    can_add = can_change = False  # made by generation jobs and the TIA2 import

    @admin.display(description="prompt", ordering="prompt__text")
    def prompt_text(self, image):
        return short(image.prompt.text, 60)

    @admin.display(description="file", boolean=True)
    def has_file(self, image):
        return bool(image.file)


class RewardModelAddForm(ServiceAddForm):
    class Meta:
        model = models.RewardModel
        fields = ["name", "kind", "location", "config"]


@admin.register(models.RewardModel)
class RewardModelAdmin(ServiceAddAdmin):
    list_display = ["name", "kind", "location", "job_count", "short_fingerprint", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "location", "fingerprint"]
    date_hierarchy = "created_at"
    ordering = ["name"]
    readonly_fields = ["fingerprint", "created_at"]
    readonly_on_change = ["kind", "location", "config"]
    can_delete = False  # a cascade over its scores: millions of rows
    actions = [*ResearcherAdmin.actions, "rescore"]
    add_form = RewardModelAddForm
    add_fields = ("name", "kind", "location", "config")
    service_errors = (ScoringError,)

    refuse_existing_name = True

    def create(self, request, data):
        model = reward_model_create(**{f: data[f] for f in self.add_fields})
        audit(request, "reward_model.create", model)
        return model

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_jobs=count_of(models.ScoringJob, "reward_model"))

    @admin.display(description="scoring jobs", ordering="n_jobs")
    def job_count(self, model):
        return changelist_link(models.ScoringJob, model.n_jobs, reward_model__id__exact=model.pk)

    @admin.display(description="fingerprint", ordering="fingerprint")
    def short_fingerprint(self, model):
        return model.fingerprint[:12]

    @admin.action(description="Rescore all its jobs (only missing scores)")
    def rescore(self, request, queryset):
        acted, skipped = [], []
        for job in models.ScoringJob.objects.filter(reward_model__in=queryset).select_related("reward_model"):
            queued, what = job_run_again(job, _scoring_missing)
            if queued:
                audit(request, "scoring_job.retry", job, how=what)
            name = f"{job.reward_model.name} job {job.pk}"
            (acted.append(f"{name} ({what})") if queued else skipped.append((name, what)))
        self.report_outcome(request, "Queued", acted, skipped)


@admin.register(models.RewardScore)
class RewardScoreAdmin(BigTableAdmin):
    list_display = ["id", "image", "reward_model", "variant", "prompt_set", "normalize", "scale",
                    "temperature", "value", "created_at"]
    list_filter = ["reward_model", "variant", "normalize", "created_at"]
    search_fields = ["image__source_name", "reward_model__name"]
    list_select_related = ["image", "reward_model", "prompt_set"]
    raw_id_fields = ["image", "prompt_set"]
    ordering = ["-id"]
    can_add = can_change = False  # written by scoring jobs


class ScoringJobAddForm(ServiceAddForm):
    variants = forms.MultipleChoiceField(choices=models.RewardScore.Variant.choices, required=False,
                                         widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = models.ScoringJob
        fields = ["reward_model", "dataset", "checkpoint", "generation_job", "prompt_set_source",
                  "prompt_set_version", "normalize", "scale", "temperature", "batch_size"]

    add_initial = {"variants": list(models.RewardScore.Variant.values),
                   "prompt_set_source": models.ContrastivePromptSet.Source.IMPORTED,
                   "normalize": models.RewardScore.Normalize.MINMAX}


@admin.register(models.ScoringJob)
class ScoringJobAdmin(JobAdmin):
    list_display = ["id", "reward_model", "images_of", "variants", "status", "progress", "created_by",
                    "created_at", "finished_at"]
    list_filter = ["status", "reward_model", "checkpoint", "dataset"]
    search_fields = ["reward_model__name", "checkpoint__name", "dataset__name", "error"]
    list_select_related = ["reward_model", "dataset", "checkpoint", "generation_job__checkpoint",
                           "generation_job__dataset", "created_by"]
    raw_id_fields = ["generation_job"]
    actions = [*ResearcherAdmin.actions, "score_again", "cancel"]
    add_form = ScoringJobAddForm
    add_fields = ("reward_model", "dataset", "checkpoint", "generation_job", "variants", "prompt_set_source",
                  "prompt_set_version", "normalize", "scale", "temperature", "batch_size")
    service_errors = (ScoringError,)
    missing = staticmethod(_scoring_missing)
    service = staticmethod(scoring_job_create)
    audit_action = "scoring_job.create"

    @admin.display(description="images of")
    def images_of(self, job):
        return "; ".join(f"{what} {value}" for what, value in (
            ("generation job", job.generation_job), ("checkpoint", job.checkpoint), ("dataset", job.dataset))
            if value is not None)

    @admin.action(description="Score again (only missing scores)")
    def score_again(self, request, queryset):
        self._run_again(request, queryset)


@admin.register(models.HumanLabel)
class HumanLabelAdmin(BigTableAdmin):
    list_display = ["id", "image", "slot", "value", "source"]
    list_filter = ["value", "source", "slot"]
    search_fields = ["image__source_name", "image__prompt__text"]
    list_select_related = ["image"]
    raw_id_fields = ["image"]
    ordering = ["-id"]


# ---------------------------------------------------------------- studies

class MembershipInline(ResearcherPermissions, admin.TabularInline):
    """The first members, paused or not; the pause goes through the service (which releases the
    leases they hold). Members are added on the membership page, counters are the engine's."""

    model = models.StudyMembership
    formset = FirstRowsFormSet
    fields = ["annotator", "is_paused", "paused_reason", "answered_count", "skipped_count", "gold_answered",
              "gold_correct", "external_worker_id", "joined_at", "completed_at"]
    readonly_fields = ["annotator", "answered_count", "skipped_count", "gold_answered", "gold_correct",
                       "external_worker_id", "joined_at", "completed_at"]
    extra = 0
    can_add = can_delete = False
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("annotator")


def membership_pause_save(membership: models.StudyMembership, changed: list[str]) -> None:
    """Apply a change of the pause fields through the services."""
    if not {"is_paused", "paused_reason"} & set(changed):
        return
    if membership.is_paused:
        studies.membership_pause(membership=membership, reason=membership.paused_reason)
    else:
        studies.membership_resume(membership=membership)


class StudyAddForm(ServiceAddForm):
    pairing = forms.ChoiceField(choices=[("matched", "Matched (same seed and index)"),
                                         ("random", "Random (one image of each per prompt)")],
                                initial="matched", help_text="pairwise studies only")

    class Meta:
        model = models.Study
        fields = ["name", "kind", "dataset", "checkpoints", "gold_share", "instructions", "question",
                  "rating_scale", "redundancy", "gold_min_accuracy", "gold_min_answers", "lease_seconds",
                  "items_per_annotator", "item_order", "completion_code"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].required = True
        self.fields["checkpoints"].help_text = ("pairwise: two or more; rating: their images, "
                                                "or none for the dataset's imported images")


@admin.register(models.Study)
class StudyAdmin(ServiceAddAdmin):
    list_display = ["name", "kind", "status", "item_count", "items_link", "member_count", "dataset",
                    "created_by", "created_at", "opened_at", "closed_at"]
    list_filter = ["kind", "status", "dataset", "checkpoints"]
    search_fields = ["name", "question", "completion_code", "=public_id"]
    date_hierarchy = "created_at"
    list_select_related = ["dataset", "created_by"]
    ordering = ["-created_at"]
    filter_horizontal = ["checkpoints"]
    readonly_fields = ["public_id", "status", "item_count", "items_link", "members_link", "created_by",
                       "created_at", "opened_at", "closed_at"]
    # What made the items stays as it was.
    readonly_on_change = ["kind", "dataset", "checkpoints", "gold_share", "rating_scale"]
    can_delete = False  # a cascade over its items, leases and judgments: millions of rows
    inlines = [MembershipInline]
    actions = [*ResearcherAdmin.actions, "export_judgments", "open_studies", "close_studies"]
    add_form = StudyAddForm
    add_fields = ("name", "kind", "dataset", "checkpoints", "pairing", "gold_share", "instructions",
                  "question", "rating_scale", "redundancy", "gold_min_accuracy", "gold_min_answers",
                  "lease_seconds", "items_per_annotator", "item_order", "completion_code")
    service_errors = (studies.StudyError,)

    def create(self, request, data):
        fields = {f: data[f] for f in self.add_fields if f not in ("kind", "checkpoints", "pairing")}
        checkpoints = list(data["checkpoints"])
        if data["kind"] == models.Study.Kind.PAIRWISE:
            return studies.study_create_pairwise(checkpoints=checkpoints, pairing=data["pairing"],
                                                 created_by=request.user, **fields)
        return studies.study_create_rating(checkpoints=checkpoints or None, created_by=request.user, **fields)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_members=count_of(models.StudyMembership, "study"))

    @admin.display(description="items")
    def items_link(self, study):
        return changelist_link(models.StudyItem, "items", study__id__exact=study.pk)

    @admin.display(description="members", ordering="n_members")
    def member_count(self, study):
        return changelist_link(models.StudyMembership, study.n_members, study__id__exact=study.pk)

    @admin.display(description="all members")
    def members_link(self, study):
        return changelist_link(models.StudyMembership, "members, with their counters",
                               study__id__exact=study.pk)

    def save_formset(self, request, form, formset, change):
        if formset.model is not models.StudyMembership:
            return super().save_formset(request, form, formset, change)
        changed = [f for f in formset.initial_forms if f.has_changed()]
        for member_form in changed:
            membership_pause_save(member_form.instance, member_form.changed_data)
        # What formset.save() would have recorded, for the change message.
        formset.new_objects, formset.deleted_objects = [], []
        formset.changed_objects = [(f.instance, f.changed_data) for f in changed]

    @admin.action(description="Export judgments (CSV)")
    def export_judgments(self, request, queryset):
        """The judgments of the selected studies, as the judgment export writes them, with the
        study's public id first."""
        chosen = list(queryset.order_by("pk"))

        def pieces():
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["study", *exports.COLUMNS])
            yield exports.take(buffer)
            for study in chosen:
                chunks = exports.judgments_export_chunks(study=study, fmt="csv")
                next(chunks)  # its header
                for chunk in chunks:
                    writer.writerows([str(study.public_id), *row] for row in csv.reader(io.StringIO(chunk)))
                    yield exports.take(buffer)

        name = (exports.export_filename(study=chosen[0], fmt="csv") if len(chosen) == 1
                else "studies-judgments.csv")
        return csv_response(name, pieces())

    def _lifecycle(self, request, queryset, done: str, change: Callable[[models.Study], str | None]):
        acted, skipped = [], []
        for study in queryset:
            try:
                why_not = change(study)
            except studies.StudyError as exc:
                why_not = str(exc)
            (skipped.append((study.name, why_not)) if why_not else acted.append(study.name))
        self.report_outcome(request, done, acted, skipped)

    @admin.action(description="Open selected studies")
    def open_studies(self, request, queryset):
        def open_one(study):
            if study.status == models.Study.Status.OPEN:
                return "already open"
            if study.status == models.Study.Status.CLOSED:
                studies.study_reopen(study=study)
            else:
                studies.study_open(study=study)

        self._lifecycle(request, queryset, "Opened", open_one)

    @admin.action(description="Close selected studies")
    def close_studies(self, request, queryset):
        def close_one(study):
            if study.status == models.Study.Status.CLOSED:
                return "already closed"
            studies.study_close(study=study)

        self._lifecycle(request, queryset, "Closed", close_one)


class JudgmentInline(ReadOnlyInline):
    model = models.Judgment
    fk_name = "item"
    fields = ["annotator", "choice", "score", "a_on_left", "time_spent_ms", "gold_correct", "is_flagged",
              "flag_reason", "created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("annotator")


class SkipInline(ReadOnlyInline):
    model = models.Skip
    fk_name = "item"
    fields = ["annotator", "reason", "note", "created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("annotator")


@admin.register(models.StudyItem)
class StudyItemAdmin(BigTableAdmin):
    list_display = ["id", "study", "prompt_text", "image_a", "image_b", "is_gold", "gold_answer",
                    "judgment_count", "taken"]
    list_filter = ["study", "is_gold"]
    search_fields = ["prompt__text", "image_a__source_name", "image_b__source_name"]
    list_select_related = ["study", "prompt", "image_a", "image_b"]
    raw_id_fields = ["prompt", "image_a", "image_b"]
    ordering = ["-id"]
    readonly_fields = ["public_id", "study", "judgment_count", "taken", "rank"]
    readonly_on_change = ["prompt", "image_a", "image_b"]
    inlines = [JudgmentInline, SkipInline]
    can_add = False  # items are made with their study, never added later
    can_delete = False  # the study's item_count and the judgments' counters would lie

    @admin.display(description="prompt", ordering="prompt__text")
    def prompt_text(self, item):
        return short(item.prompt.text, 60)


@admin.register(models.StudyMembership)
class StudyMembershipAdmin(ResearcherAdmin):
    list_display = ["id", "study", "annotator", "is_paused", "paused_reason", "answered_count",
                    "skipped_count", "gold", "external_worker_id", "joined_at", "completed_at"]
    list_filter = ["study", "is_paused"]
    search_fields = ["annotator__username", "external_worker_id", "external_session_id"]
    date_hierarchy = "joined_at"
    list_select_related = ["study", "annotator"]
    raw_id_fields = ["annotator"]
    ordering = ["-joined_at"]
    readonly_fields = ["gold_answered", "gold_correct", "answered_count", "skipped_count", "cursor_rank",
                       "joined_at", "completed_at"]
    readonly_on_change = ["study", "annotator"]
    actions = [*ResearcherAdmin.actions, "pause", "resume"]

    @admin.display(description="gold correct / answered")
    def gold(self, membership):
        return f"{membership.gold_correct}/{membership.gold_answered}"

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        others = [f for f in form.changed_data if f not in ("is_paused", "paused_reason")]
        if others:
            obj.save(update_fields=others)
        membership_pause_save(obj, form.changed_data)

    @admin.action(description="Pause selected members (their leases are released)")
    def pause(self, request, queryset):
        acted, skipped = [], []
        for membership in queryset.select_related("annotator", "study"):
            name = f"{membership.annotator.username} in {membership.study.name}"
            if membership.is_paused:
                skipped.append((name, "already paused"))
                continue
            studies.membership_pause(membership=membership, reason=f"paused by {request.user.username}")
            acted.append(name)
        self.report_outcome(request, "Paused", acted, skipped)

    @admin.action(description="Resume selected members")
    def resume(self, request, queryset):
        acted, skipped = [], []
        for membership in queryset.select_related("annotator", "study"):
            name = f"{membership.annotator.username} in {membership.study.name}"
            if not membership.is_paused:
                skipped.append((name, "not paused"))
                continue
            studies.membership_resume(membership=membership)
            acted.append(name)
        self.report_outcome(request, "Resumed", acted, skipped)


@admin.register(models.Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "item__study", "annotator", "state", "a_on_left", "leased_at", "expires_at"]
    list_filter = ["state", "item__study", "leased_at"]
    search_fields = ["annotator__username"]
    list_select_related = ["item__study", "annotator"]
    raw_id_fields = ["item", "annotator"]
    ordering = ["-id"]


@admin.register(models.Judgment)
class JudgmentAdmin(BigTableAdmin):
    list_display = ["id", "item", "item__study", "annotator", "choice", "score", "a_on_left", "time_spent_ms",
                    "gold_correct", "is_flagged", "created_at"]
    list_filter = ["item__study", "choice", "is_flagged", "gold_correct", "created_at"]
    search_fields = ["annotator__username", "reason", "flag_reason"]
    list_select_related = ["item__study", "annotator"]
    raw_id_fields = ["item", "annotator", "assignment"]
    ordering = ["-id"]
    # The answer is the annotator's and its counters the engine's; a researcher only flags.
    readonly_on_change = ["item", "annotator", "assignment", "client_id", "choice", "score", "reason",
                          "a_on_left", "time_spent_ms", "gold_correct"]
    can_add = can_delete = False


@admin.register(models.Skip)
class SkipAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "item__study", "annotator", "reason", "note", "created_at"]
    list_filter = ["reason", "item__study", "created_at"]
    search_fields = ["annotator__username", "note"]
    list_select_related = ["item__study", "annotator"]
    raw_id_fields = ["item", "annotator", "assignment"]
    ordering = ["-id"]


class ReportAddForm(ServiceAddForm):
    rounds = forms.IntegerField(initial=1000, help_text="bootstrap rounds")
    seed = forms.IntegerField(initial=0)

    class Meta:
        model = models.Report
        fields = ["study", "format"]


@admin.register(models.Report)
class ReportAdmin(ServiceAddAdmin):
    list_display = ["id", "study", "format", "status", "download", "created_by", "created_at", "finished_at"]
    list_filter = ["format", "status", "study"]
    search_fields = ["study__name", "error"]
    date_hierarchy = "created_at"
    list_select_related = ["study", "created_by"]
    ordering = ["-created_at"]
    readonly_fields = ["status", "params", "file", "error", "created_by", "created_at", "finished_at"]
    can_change = False  # built by the report task
    add_form = ReportAddForm
    add_fields = ("study", "format", "rounds", "seed")
    service_errors = (ReportError,)

    def create(self, request, data):
        report = report_request(study=data["study"], fmt=data["format"], rounds=data["rounds"],
                                seed=data["seed"], created_by=request.user)
        audit(request, "report.request", report, study=report.study_id, format=report.format)
        return report

    @admin.display(description="file")
    def download(self, report):
        return format_html('<a href="{}">{}</a>', report.file.url, "download") if report.file else ""


# ---------------------------------------------------------------- the audit log

class AuditActorFilter(admin.SimpleListFilter):
    """By researcher (and superuser): annotators' sign-ins are in the log too, but listing every
    crowd worker here would make the filter useless; search finds them by name."""

    title = "actor"
    parameter_name = "actor"

    def lookups(self, request, model_admin):
        from django.contrib.auth import get_user_model
        from django.db.models import Q

        users = (get_user_model().objects.filter(Q(is_superuser=True) | Q(groups__name=RESEARCHERS))
                 .distinct().order_by("username"))
        return [(str(u.pk), u.get_username()) for u in users]

    def queryset(self, request, queryset):
        return queryset.filter(actor_id=self.value()) if self.value() else queryset


@admin.register(models.AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor_name", "action", "target_type", "target_id", "target_repr", "ip"]
    list_filter = ["action", AuditActorFilter, "target_type", "created_at"]
    search_fields = ["actor_name", "action", "target_repr", "=target_id", "=ip"]
    list_select_related = False
    ordering = ["-created_at", "-id"]
    fields = ["created_at", "actor", "actor_name", "action", "target_type", "target_id", "target_repr",
              "details", "ip"]

    def get_readonly_fields(self, request, obj=None):
        return self.fields


def _audit_auth_admins() -> None:
    """The auth app's users and groups (who is a researcher) through the audit hooks as well."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    for model in (get_user_model(), Group):
        if not admin.site.is_registered(model):
            continue
        base = type(admin.site.get_model_admin(model))
        if issubclass(base, AuditedAdmin):
            continue
        admin.site.unregister(model)
        admin.site.register(model, type(base.__name__, (AuditedAdmin, base), {"__module__": __name__}))


_audit_auth_admins()
