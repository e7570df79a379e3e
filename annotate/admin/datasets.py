"""Datasets, prompts and contrastive prompt sets."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from annotate import models
from annotate.admin.base import (
    ReadOnlyInline,
    ResearcherAdmin,
    changelist_link,
    count_of,
    short,
)

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

    def get_readonly_fields(self, request, obj=None):
        """Once images or study items show the prompt, its text is what they were judged
        against: changing it would relabel them (and their exports, reports, TextNorm sets)."""
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and (obj.images.exists() or obj.study_items.exists()):
            fields += ["text", "dataset", "category", "source_index"]
        return fields

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


class ContrastivePromptSetForm(forms.ModelForm):
    def clean_texts(self):
        texts = self.cleaned_data["texts"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise forms.ValidationError('a JSON list of one or more prompts, e.g. ["2 cups", "4 cups"]')
        return texts


@admin.register(models.ContrastivePromptSet)
class ContrastivePromptSetAdmin(ResearcherAdmin):
    form = ContrastivePromptSetForm
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
