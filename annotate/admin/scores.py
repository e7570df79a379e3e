"""Images, reward models, reward scores, scoring jobs and human labels."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from annotate import models
from annotate.admin.base import (
    BigTableAdmin,
    JobAdmin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    ResearcherAdmin,
    ServiceAddAdmin,
    ServiceAddForm,
    _scoring_missing,
    changelist_link,
    count_of,
    job_run_again,
    short,
)
from annotate.audit import audit
from annotate.services.scoring import (
    ScoringError,
    reward_model_create,
    scoring_job_create,
)

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
    can_add = can_change = can_delete = False  # written by scoring jobs


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
class HumanLabelAdmin(ReadOnlyAdmin):  # TIA2's labels as imported: the benchmark's figures rest on them
    list_display = ["id", "image", "slot", "value", "source"]
    list_filter = ["value", "source", "slot"]
    search_fields = ["image__source_name", "image__prompt__text"]
    list_select_related = ["image"]
    raw_id_fields = ["image"]
    ordering = ["-id"]
