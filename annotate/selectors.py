"""Reads. Views, APIs and commands ask here instead of building querysets themselves."""
from django.db.models import Count, QuerySet

from annotate.models import Dataset, GenerationJob, Image, Prompt


def dataset_list_with_counts() -> QuerySet[Dataset]:
    return Dataset.objects.annotate(n_prompts=Count("prompts", distinct=True)).order_by("name")


def generation_job_list(*, limit: int = 50) -> QuerySet[GenerationJob]:
    return GenerationJob.objects.select_related("checkpoint", "dataset").order_by("-created_at")[:limit]


def dataset_prompts_with_images(*, dataset: Dataset, limit: int = 60) -> list[Prompt]:
    prompts = list(Prompt.objects.filter(dataset=dataset).order_by("source_index")[:limit])
    images = (
        Image.objects.filter(prompt__in=prompts)
        .select_related("checkpoint")
        .order_by("checkpoint__name", "seed", "index")
    )
    by_prompt: dict[int, list[Image]] = {}
    for image in images:
        by_prompt.setdefault(image.prompt_id, []).append(image)
    for prompt in prompts:
        prompt.image_list = by_prompt.get(prompt.id, [])
    return prompts
