"""Researchers' pages about models: the workers' jobs (live progress, retry, cancel), a
checkpoint's images with raw and TextNorm scores, and reward models against TIA2's human
labels. Thin: permission check, selector or service call, render."""
import mimetypes

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, re_path, reverse
from django.views.decorators.http import require_POST

from annotate import charts
from annotate import selectors_models as sel
from annotate.audit import audit
from annotate.models import Dataset, WorkerJob
from annotate.services import jobs as job_services
from annotate.views import researcher_required, token_accepted

# ---- jobs --------------------------------------------------------------------------------

POLL_SECONDS = 2


def _jobs_page(request, *, status: int = 200, action_error: str = ""):
    context = {**sel.job_lists(), "action_error": action_error,
               "status_labels": dict(WorkerJob.Status.choices),
               "poll_ms": POLL_SECONDS * 1000, "poll_seconds": POLL_SECONDS}
    return render(request, "dashboard/jobs.html", context, status=status)


@researcher_required
def jobs(request):
    return _jobs_page(request)


def _job_action(action):
    @researcher_required  # first: annotators get 403 on GET too, not 405
    @require_POST
    def view(request, kind: str, job_id: str):
        job = sel.job_get(kind=kind, job_id=int(job_id))
        if job is None:
            raise Http404
        act = job_services.job_retry if action == "retry" else job_services.job_cancel
        try:
            act(job)
        except job_services.JobError as exc:
            return _jobs_page(request, status=409, action_error=str(exc))
        audit(request, f"{kind}_job.{action}", job)
        return redirect(f"{reverse('jobs')}#job-{kind}-{job.pk}")

    view.__name__ = f"job_{action}"
    return view


job_retry = _job_action("retry")
job_cancel = _job_action("cancel")


# ---- a checkpoint's gallery --------------------------------------------------------------


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _gallery(request, source):
    reward_models = sel.gallery_reward_models(source=source)
    wanted = _int_or_none(request.GET.get("reward_model"))
    reward_model = next((m for m in reward_models if m.id == wanted), next(iter(reward_models), None))
    settings = sel.gallery_textnorm_settings(source=source, reward_model=reward_model) if reward_model else []
    setting = next((s for s in settings if s.key == request.GET.get("textnorm")), next(iter(settings), None))
    # Unknown filters are no filter, as an unknown reward model or setting is the first one.
    categories = sel.gallery_categories(source=source)
    category = request.GET.get("category", "")
    category = category if category in categories else ""
    label = request.GET.get("label", "")
    label = label if label in sel.LABEL_FILTERS else ""
    page = sel.gallery_page(source=source, reward_model=reward_model, setting=setting,
                            category=category, label=label, page=request.GET.get("page"))
    # The filters without the page, for the pagination links.
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "dashboard/gallery.html", {
        "source": source, "checkpoint": source.checkpoint, "dataset": source.dataset,
        "reward_models": reward_models, "reward_model": reward_model, "settings": settings, "setting": setting,
        "categories": categories,
        "category": category, "label": label, "page": page, "filters": query.urlencode(),
    })


@researcher_required
def checkpoint_gallery(request, checkpoint_id: int):
    checkpoint = sel.checkpoint_get(checkpoint_id=checkpoint_id)
    if checkpoint is None:
        raise Http404
    return _gallery(request, sel.ImageSource(checkpoint=checkpoint))


@researcher_required
def dataset_gallery(request, dataset_id: int):
    """A dataset's own images (TIA2's), with their human labels and reward scores."""
    dataset = get_object_or_404(Dataset, pk=dataset_id)
    return _gallery(request, sel.ImageSource(dataset=dataset))


@token_accepted  # the image upload API's "url"
@researcher_required
def researcher_image(request, image_id: int):
    image = sel.image_with_file(image_id=image_id)
    if image is None:
        raise Http404
    try:
        handle = default_storage.open(image.file.name)
    except FileNotFoundError:
        raise Http404 from None
    response = FileResponse(handle, content_type=mimetypes.guess_type(image.file.name)[0] or "image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    return response


# ---- reward models against TIA2's human labels -------------------------------------------


def _category_charts(section: dict) -> dict:
    """Grouped bars per reward model: raw beside each TextNorm setting, for AUROC and AUPRC.
    TextNorm settings get short series names (the chart's legend is narrow) and a key."""
    rows = section["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows if r["variant"] == "textnorm"))
    series_of = {"": "raw"}
    for k, setting in enumerate(settings, start=1):
        series_of[setting] = "TextNorm" if len(settings) == 1 else f"TextNorm {k}"
    out = {"key": [(series_of[s], s) for s in settings], "charts": []}
    for metric, title in (("auroc", "AUROC"), ("auprc", "AUPRC")):
        series = {name: [None] * len(models) for name in series_of.values()}
        for r in rows:
            if r["variant"] in ("raw", "textnorm"):
                series[series_of[r["setting"]]][models.index(r["model"])] = r[metric]
        label = f"{title} by reward model in {section['category']}: raw and TextNorm side by side"
        out["charts"].append({"title": title, "svg": charts.grouped_bars_svg(models, series, label=label)})
    return out


@researcher_required
def reward_models(request):
    entry = sel.tia2_report_cached()
    sections = sel.tia2_report_by_category(entry["report"]) if entry["report"] else []
    for section in sections:
        section.update(_category_charts(section))
    has_scores = bool(entry["report"] and entry["report"]["reward_models"])
    return render(request, "dashboard/reward_models.html", {
        **entry, "sections": sections, "has_scores": has_scores,
        "metrics": [title for _, title in sel.METRICS],
    })


@researcher_required
@require_POST
def reward_models_refresh(request):
    """Drop the cached report (after deletions, which the cache key does not see)."""
    sel.tia2_report_forget()
    return redirect("reward-models")


urlpatterns = [
    path("jobs/", jobs, name="jobs"),
    re_path(r"^jobs/(?P<kind>generation|scoring)/(?P<job_id>[0-9]+)/retry/$", job_retry, name="job-retry"),
    re_path(r"^jobs/(?P<kind>generation|scoring)/(?P<job_id>[0-9]+)/cancel/$", job_cancel, name="job-cancel"),
    path("checkpoints/<int:checkpoint_id>/", checkpoint_gallery, name="checkpoint-gallery"),
    path("datasets/<int:dataset_id>/gallery/", dataset_gallery, name="dataset-gallery"),
    path("images/<int:image_id>.jpg", researcher_image, name="researcher-image"),
    path("reward-models/", reward_models, name="reward-models"),
    path("reward-models/refresh/", reward_models_refresh, name="reward-models-refresh"),
]
