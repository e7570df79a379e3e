from django.contrib import admin

from annotate import models


@admin.register(models.Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "source", "category", "created_at"]
    list_filter = ["source", "category"]
    search_fields = ["name", "description"]


@admin.register(models.Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["text", "dataset", "category", "source_index"]
    list_filter = ["dataset", "category"]
    search_fields = ["text"]
    list_select_related = ["dataset"]


@admin.register(models.ContrastivePromptSet)
class ContrastivePromptSetAdmin(admin.ModelAdmin):
    list_display = ["prompt", "source", "version", "created_at"]
    list_filter = ["source"]
    search_fields = ["prompt__text", "version"]
    raw_id_fields = ["prompt"]


@admin.register(models.Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "backend", "location", "base_model", "fingerprint"]
    list_filter = ["backend"]
    search_fields = ["name", "location", "base_model"]


@admin.register(models.GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    list_display = ["id", "checkpoint", "dataset", "status", "done_images", "total_images", "created_at"]
    list_filter = ["status", "checkpoint", "dataset"]
    list_select_related = ["checkpoint", "dataset"]


@admin.register(models.Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "source_name", "prompt", "checkpoint", "seed", "index", "sha256"]
    list_filter = ["checkpoint", "prompt__dataset"]
    search_fields = ["source_name", "sha256", "prompt__text"]
    raw_id_fields = ["prompt", "job"]
    list_select_related = ["prompt", "checkpoint"]


class RewardScoreInline(admin.TabularInline):
    model = models.RewardScore
    extra = 0
    raw_id_fields = ["image", "prompt_set"]


@admin.register(models.RewardModel)
class RewardModelAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "location", "fingerprint"]
    list_filter = ["kind"]
    search_fields = ["name", "location"]


@admin.register(models.RewardScore)
class RewardScoreAdmin(admin.ModelAdmin):
    list_display = ["image", "reward_model", "variant", "normalize", "scale", "temperature", "value"]
    list_filter = ["reward_model", "variant", "normalize"]
    raw_id_fields = ["image", "prompt_set"]


@admin.register(models.HumanLabel)
class HumanLabelAdmin(admin.ModelAdmin):
    list_display = ["image", "slot", "value", "source"]
    list_filter = ["value", "source"]
    raw_id_fields = ["image"]


class StudyItemInline(admin.TabularInline):
    model = models.StudyItem
    extra = 0
    raw_id_fields = ["prompt", "image_a", "image_b"]
    show_change_link = True


@admin.register(models.Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "status", "redundancy", "created_at"]
    list_filter = ["kind", "status"]
    search_fields = ["name"]
    filter_horizontal = ["checkpoints"]


@admin.register(models.StudyItem)
class StudyItemAdmin(admin.ModelAdmin):
    list_display = ["id", "study", "prompt", "is_gold", "judgment_count"]
    list_filter = ["study", "is_gold"]
    raw_id_fields = ["prompt", "image_a", "image_b"]


@admin.register(models.StudyMembership)
class StudyMembershipAdmin(admin.ModelAdmin):
    list_display = ["study", "annotator", "is_paused", "gold_correct", "gold_answered", "external_worker_id"]
    list_filter = ["study", "is_paused"]
    search_fields = ["annotator__username", "external_worker_id"]


@admin.register(models.Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["item", "annotator", "state", "leased_at", "expires_at"]
    list_filter = ["state"]
    raw_id_fields = ["item"]


@admin.register(models.Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ["item", "annotator", "choice", "score", "a_on_left", "time_spent_ms", "is_flagged", "created_at"]
    list_filter = ["choice", "is_flagged"]
    raw_id_fields = ["item", "assignment"]


@admin.register(models.Skip)
class SkipAdmin(admin.ModelAdmin):
    list_display = ["item", "annotator", "reason", "created_at"]
    list_filter = ["reason"]
    raw_id_fields = ["item", "assignment"]


@admin.register(models.Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ["study", "format", "status", "created_at", "finished_at"]
    list_filter = ["format", "status"]
