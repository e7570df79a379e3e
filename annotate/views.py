"""Thin template views: permission check, one selector call, render."""
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render

from annotate import selectors
from annotate.models import Dataset
from annotate.roles import is_researcher


def researcher_required(view):
    @login_required
    def wrapped(request, *args, **kwargs):
        if not is_researcher(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def home(request):
    if is_researcher(request.user):
        context = {
            "datasets": selectors.dataset_list_with_counts(),
            "jobs": selectors.generation_job_list(),
        }
        return render(request, "annotate/researcher_home.html", context)
    return render(request, "annotate/home.html")


@researcher_required
def dataset_detail(request, dataset_id: int):
    dataset = get_object_or_404(Dataset, pk=dataset_id)
    prompts = selectors.dataset_prompts_with_images(dataset=dataset)
    return render(request, "annotate/dataset_detail.html", {"dataset": dataset, "prompts": prompts})


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok", "database": connection.vendor})
