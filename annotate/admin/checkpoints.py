"""Checkpoints and generation jobs."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import Exists, OuterRef

from annotate import models
from annotate.admin.base import (
    JobAdmin,
    ReadOnlyInline,
    ResearcherAdmin,
    ServiceAddAdmin,
    ServiceAddForm,
    _generation_missing,
    changelist_link,
    count_of,
)
from annotate.audit import audit
from annotate.services.checkpoints import CheckpointRegistrationError, checkpoint_register
from annotate.services.generation import GenerationError, generation_job_create

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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Best-of-n checkpoints are made by selection (manage.py best_of_n), never registered.
        self.fields["backend"].choices = [c for c in self.fields["backend"].choices
                                          if c[0] != models.Checkpoint.Backend.BEST_OF_N]


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
