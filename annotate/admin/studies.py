"""Studies, their items, members, leases, judgments, skips and reports."""
from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from annotate import models
from annotate.admin.base import (
    BigTableAdmin,
    FirstRowsFormSet,
    ReadOnlyAdmin,
    ReadOnlyInline,
    ResearcherAdmin,
    ResearcherPermissions,
    ServiceAddAdmin,
    ServiceAddForm,
    changelist_link,
    count_of,
    csv_pieces,
    csv_response,
    short,
)
from annotate.audit import audit
from annotate.services import exports, studies
from annotate.services.reports import DEFAULT_ROUNDS, MAX_ROUNDS, MIN_ROUNDS, ReportError, report_request

# ---------------------------------------------------------------- studies

class MembershipInline(ResearcherPermissions, admin.TabularInline):
    """The first members, paused or not; the pause goes through the service (which releases the
    leases they hold). Members are added by username on the study's page (``add_members``);
    counters are the engine's."""

    model = models.StudyMembership
    formset = FirstRowsFormSet
    verbose_name_plural = (f"Study memberships (the first {FirstRowsFormSet.max_rows}; "
                           "the membership list, filtered by this study, has them all)")
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
                  "max_open_leases", "items_per_annotator", "item_order", "completion_code", "crowd_link"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].required = True
        self.fields["checkpoints"].help_text = ("pairwise: two or more; rating: their images, "
                                                "or none for the dataset's imported images")


class StudyChangeForm(forms.ModelForm):
    """The settings' bounds of the API and the services (a lease of 1 s, or 0 items per
    annotator, would break the study for everyone), and members added by username."""

    add_members = forms.CharField(
        required=False, label="Add members",
        help_text="usernames of annotators, separated by commas or spaces (added when you save)")

    def clean_add_members(self):
        from django.contrib.auth import get_user_model

        names = sorted(set(self.cleaned_data.get("add_members", "").replace(",", " ").split()))
        known = set(get_user_model().objects.filter(username__in=names).values_list("username", flat=True))
        if set(names) - known:
            raise forms.ValidationError(f"unknown usernames: {', '.join(sorted(set(names) - known))}")
        return names

    def clean(self):
        data = super().clean()
        try:
            studies.study_settings_check(data)
        except studies.StudyError as exc:
            field, _, message = str(exc).partition(": ")
            self.add_error(field if field in self.fields else None, message or str(exc))
        return data


@admin.register(models.Study)
class StudyAdmin(ServiceAddAdmin):
    list_display = ["name", "kind", "status", "item_count", "items_link", "member_count", "dataset",
                    "created_by", "created_at", "opened_at", "closed_at"]
    list_filter = ["kind", "status", "crowd_link", "dataset", "checkpoints"]
    search_fields = ["name", "question", "completion_code", "=public_id"]
    date_hierarchy = "created_at"
    list_select_related = ["dataset", "created_by"]
    ordering = ["-created_at"]
    filter_horizontal = ["checkpoints"]
    readonly_fields = ["public_id", "status", "item_count", "items_link", "members_link", "created_by",
                       "created_at", "opened_at", "closed_at"]
    # What made the items stays as it was.
    readonly_on_change = ["kind", "dataset", "checkpoints", "gold_share", "rating_scale"]
    form = StudyChangeForm
    can_delete = False  # a cascade over its items, leases and judgments: millions of rows

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        names = form.cleaned_data.get("add_members") or []
        if names:  # through the service: audited as study.members_add, with the usernames
            added = studies.study_add_members(study=form.instance, usernames=names)
            self.message_user(request, f"Members: {', '.join(m.annotator.username for m in added)}.")

    def get_readonly_fields(self, request, obj=None):
        """Once opened, the redundancy is what items were filled to: lowering it would leave
        more judgments than it asks for, and the counts on the dashboard would not add up."""
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.opened_at is not None:
            fields.append("redundancy")
        return fields
    inlines = [MembershipInline]
    actions = [*ResearcherAdmin.actions, "export_judgments", "open_studies", "close_studies"]
    add_form = StudyAddForm
    add_fields = ("name", "kind", "dataset", "checkpoints", "pairing", "gold_share", "instructions",
                  "question", "rating_scale", "redundancy", "gold_min_accuracy", "gold_min_answers",
                  "lease_seconds", "max_open_leases", "items_per_annotator", "item_order", "completion_code",
                  "crowd_link")
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
        rows = ([str(study.public_id), *record] for study in chosen
                for chunk in exports.judgment_record_chunks(study=study, fmt="csv") for record in chunk)
        name = (exports.export_filename(study=chosen[0], fmt="csv") if len(chosen) == 1
                else "studies-judgments.csv")
        return csv_response(name, csv_pieces(["study", *exports.COLUMNS], rows))

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
    # Gold too: a changed answer would mark honest annotators wrong (and pause them), and the
    # judgments already scored would not follow.
    readonly_on_change = "__all__"
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
    # Pause is how an annotator leaves: deleting the row would drop their counts and gold
    # record (re-adding them would undo a gold-check pause) while their judgments stay.
    can_delete = False

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
    actions = [*BigTableAdmin.actions, "leave_out_of_reports", "count_in_reports"]

    @admin.action(description="Leave selected out of reports (flag)")
    def leave_out_of_reports(self, request, queryset):
        changed = queryset.filter(is_flagged=False).update(
            is_flagged=True, flag_reason=f"left out by {request.user.get_username()} in the admin")
        self.message_user(request, f"Left out of reports: {changed} judgment{'s' if changed != 1 else ''}.")

    @admin.action(description="Count selected in reports (unflag)")
    def count_in_reports(self, request, queryset):
        """After resuming an annotator the gold check paused wrongly: their judgments count again."""
        changed = queryset.filter(is_flagged=True).update(is_flagged=False, flag_reason="")
        self.message_user(request, f"Counted in reports again: {changed} judgment{'s' if changed != 1 else ''}.")


@admin.register(models.Skip)
class SkipAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "item__study", "annotator", "reason", "note", "created_at"]
    list_filter = ["reason", "item__study", "created_at"]
    search_fields = ["annotator__username", "note"]
    list_select_related = ["item__study", "annotator"]
    raw_id_fields = ["item", "annotator", "assignment"]
    ordering = ["-id"]


class ReportAddForm(ServiceAddForm):
    rounds = forms.IntegerField(initial=DEFAULT_ROUNDS, help_text=f"bootstrap rounds, {MIN_ROUNDS:,} to {MAX_ROUNDS:,}")
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
    # The file through the download view (media is not served as such in production).
    readonly_fields = ["status", "params", "download", "error", "created_by", "created_at", "finished_at"]
    exclude = ["file"]
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
        # Through the app's download view (researchers only): media files are not served as such.
        return format_html('<a href="{}">{}</a>', reverse("api-report-download", args=[report.pk]),
                           "download") if report.file else ""
