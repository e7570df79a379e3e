"""Thin template views: permission check, one selector or service call, render."""
import functools
import logging
import mimetypes

from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.db import connection
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from annotate import selectors
from annotate.audit import audit, client_ip
from annotate.markdown_safe import render_markdown
from annotate.models import Dataset, Report, Study
from annotate.roles import is_researcher
from annotate.services.annotation import progress_of
from annotate.services.crowd import (
    CrowdEntryRefused, crowd_browser_secret, crowd_link_param, crowd_username, crowd_worker_join,
)

logger = logging.getLogger(__name__)


def researcher_required(view):
    @login_required
    def wrapped(request, *args, **kwargs):
        if not is_researcher(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def _researcher_home(request, *, status: int = 200, **extra):
    context = {
        "datasets": selectors.dataset_list_with_counts(),
        "jobs": selectors.generation_job_list(limit=10),
        "scoring_jobs": selectors.scoring_job_list(limit=10),
        "checkpoints": selectors.checkpoint_list(),
        "studies": selectors.study_list_with_reports(),
        "report_formats": Report.Format.choices,
        **extra,
    }
    return render(request, "annotate/researcher_home.html", context, status=status)


def home(request):
    if is_researcher(request.user):
        return _researcher_home(request)
    studies = []
    if request.user.is_authenticated:
        studies = [(m.study, progress_of(m), m.is_paused)
                   for m in selectors.annotator_open_memberships(annotator=request.user)]
    return render(request, "annotate/home.html", {"studies": studies})


@require_POST
@researcher_required
def study_report_request(request, study_id: int):
    """Ask a worker for a study's report; the overview lists it with its download link."""
    from annotate.services.reports import ReportError, report_request

    study = get_object_or_404(Study, pk=study_id)
    try:
        report = report_request(study=study, fmt=request.POST.get("format", ""), created_by=request.user)
    except ReportError as exc:
        return _researcher_home(request, status=400, report_error=str(exc))  # the overview, with the error
    audit(request, "report.request", report, study=study.pk, format=report.format)
    return redirect(f"{reverse('home')}#studies-h")


@researcher_required
def dataset_detail(request, dataset_id: int):
    dataset = get_object_or_404(Dataset, pk=dataset_id)
    prompts = selectors.dataset_prompts_with_images(dataset=dataset)
    return render(request, "annotate/dataset_detail.html", {"dataset": dataset, "prompts": prompts})


def _instructions_html(text: str) -> str:
    return render_markdown(text)


@never_cache
@login_required
def annotate_study(request, study_id):
    study = selectors.annotator_study_get(annotator=request.user, public_id=study_id)
    if study is None or study.status == Study.Status.DRAFT:  # nothing to see before it opens
        raise Http404
    return render(request, "annotate/annotate.html", {
        "study": study, "instructions": _instructions_html(study.instructions),
        "progress": selectors.annotator_progress(study=study, annotator=request.user),
    })


def _token_user(request):
    """The user of an ``Authorization: Token <key>`` header (the annotator API's clients), None
    without one, False for a key that names no active user."""
    from rest_framework.authentication import TokenAuthentication
    from rest_framework.exceptions import AuthenticationFailed

    try:
        found = TokenAuthentication().authenticate(request)
    except AuthenticationFailed:
        return False
    return found and found[0]


def token_accepted(view):
    """A page view that API clients fetch too (an image URL the API gave them): an
    ``Authorization: Token <key>`` header signs the request in; a bad token is a 401."""
    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            user = _token_user(request)
            if user is False:
                return JsonResponse({"detail": "Invalid token."}, status=401, headers={"WWW-Authenticate": "Token"})
            if user:
                request.user = user
        return view(request, *args, **kwargs)

    return wrapped


@token_accepted
def annotate_image(request, study_id, item_id, slot: str):
    """An image of an item the annotator holds or held a lease on, in an open study they are
    a member of; 404 for anything else, so that nothing can be told apart by guessing.

    Signed in (the annotator's page), or with the API's token (a client of the annotator API
    fetches the URLs that next/ gave it): a bad token is a 401, no credentials go to sign-in."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    study = selectors.annotator_study_get(annotator=request.user, public_id=study_id)
    token = request.GET.get("v")
    image = study and study.status == Study.Status.OPEN and selectors.annotator_image_for_slot(
        study=study, annotator=request.user, item_public_id=item_id, slot=slot, token=token)
    if not image or not image.file:
        raise Http404
    try:
        handle = default_storage.open(image.file.name)
    except FileNotFoundError:
        # The row is there and its file is not (moved, deleted, a storage not mounted): the
        # annotator gets a 404 (the page says so and offers "Image did not load"), the log says which.
        logger.warning("image %s of study %s is missing its file %s", image.pk, study.pk, image.file.name)
        raise Http404 from None
    response = FileResponse(handle, content_type=mimetypes.guess_type(image.file.name)[0] or "image/jpeg")
    # FileResponse names the stored file (prompt, seed, index) in Content-Disposition: not for annotators.
    response.headers.pop("Content-Disposition", None)
    # With its lease's token a URL always names the same image, so the browser may keep it; a
    # URL without one follows the latest lease (its side may differ next time): never kept.
    response["Cache-Control"] = "private, max-age=86400, immutable" if token else "private, no-store"
    return response


# The secret that binds a crowd worker's account to their browser: sent back only to the
# study's link (its path), never readable by scripts.
CROWD_COOKIE = "calibra_crowd"
CROWD_COOKIE_MAX_AGE = 90 * 24 * 3600


@never_cache
def crowd_start(request, study_id):
    """A crowd study link: ?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=... signs the worker in,
    for a study whose crowd link is on (404 otherwise: the study's id is no invitation), in the
    browser that first used this worker id only (annotate.services.crowd).
    Someone already signed in as another account stays who they are: a link followed from
    elsewhere never signs a researcher out."""
    study = get_object_or_404(Study, public_id=study_id)
    worker_id = request.GET.get("PROLIFIC_PID", "")
    if request.user.is_authenticated and selectors.annotator_study_get(annotator=request.user, public_id=study_id) \
            and (not worker_id or request.user.username == crowd_username(study, worker_id)):
        return redirect("annotate-study", study_id=study.public_id)
    if not study.crowd_link:
        raise Http404
    if request.user.is_authenticated:
        return render(request, "annotate/crowd_error.html", {
            "error": f"You are signed in as {request.user.username}. Sign out first to take part as a crowd worker."},
            status=409)
    secret = crowd_browser_secret(request.COOKIES.get(CROWD_COOKIE))
    try:
        crowd_link_param("STUDY_ID", request.GET.get("STUDY_ID", ""))
        user = crowd_worker_join(study=study, worker_id=worker_id, browser_secret=secret,
                                 session_id=request.GET.get("SESSION_ID", ""), address=client_ip(request))
    except CrowdEntryRefused as exc:
        return render(request, "annotate/crowd_error.html", {"error": str(exc), "field": exc.field},
                      status=exc.status)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    response = redirect("annotate-study", study_id=study.public_id)
    response.set_cookie(CROWD_COOKIE, secret, max_age=CROWD_COOKIE_MAX_AGE, httponly=True, samesite="Lax",
                        secure=request.is_secure(), path=reverse("crowd-start", args=[study.public_id]))
    return response


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok", "database": connection.vendor})
