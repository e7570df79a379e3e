"""Reads for the researcher's model pages: the workers' jobs, a checkpoint's images with their
reward scores (raw beside TextNorm), and the TIA2 reward-vs-human report, cached.

Every read here is bounded by a page, a checkpoint or a LIMIT: none counts a whole table."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from django.core.cache import cache
from django.core.paginator import Page, Paginator
from django.db.models import Count, Exists, F, Max, OuterRef, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from annotate.models import (
    Checkpoint, ContrastivePromptSet, Dataset, GenerationJob, HumanLabel, Image, Judgment, Prompt, RewardModel,
    RewardScore, ScoringJob, Study, WorkerJob,
)

JOBS_LIMIT = 100
PROMPTS_PER_PAGE = 12
# A checkpoint with many seeds would make a page of thousands of images; the rest are counted.
IMAGES_PER_PROMPT = 50
LABEL_FILTERS = ("aligned", "not_aligned")
ACTIVE_STATUSES = (WorkerJob.Status.QUEUED, WorkerJob.Status.RUNNING)


# ---- jobs --------------------------------------------------------------------------------

def job_lists(*, limit: int = JOBS_LIMIT) -> dict:
    """The newest generation and scoring jobs (at most ``limit`` of each) with what they work on."""
    generation = list(GenerationJob.objects.select_related("checkpoint", "dataset")
                      .order_by("-created_at", "-id")[:limit])
    scoring = list(ScoringJob.objects.select_related("reward_model", "checkpoint", "dataset")
                   .order_by("-created_at", "-id")[:limit])
    return {"generation": generation, "scoring": scoring,
            "any_active": any(j.status in ACTIVE_STATUSES for j in [*generation, *scoring])}


def job_get(*, kind: str, job_id: int) -> GenerationJob | ScoringJob | None:
    model = {"generation": GenerationJob, "scoring": ScoringJob}.get(kind)
    return model and model.objects.filter(pk=job_id).first()


# ---- galleries: a checkpoint's images, or a dataset's own (TIA2's) ----------------------

@dataclass(frozen=True)
class ImageSource:
    """The images a gallery shows: a checkpoint's, or the images of a dataset that no
    checkpoint made (TIA2's, imported with their human labels)."""

    checkpoint: Checkpoint | None = None
    dataset: Dataset | None = None

    def q(self, prefix: str = "") -> Q:
        """These images, as a filter on Image (or on a model whose ``prefix`` leads to one)."""
        if self.checkpoint is not None:
            return Q(**{f"{prefix}checkpoint": self.checkpoint})
        return Q(**{f"{prefix}prompt__dataset": self.dataset, f"{prefix}checkpoint__isnull": True})

    @property
    def title(self) -> str:
        return self.checkpoint.name if self.checkpoint is not None else f"{self.dataset.name}: its own images"


@dataclass(frozen=True)
class TextnormSetting:
    """One way TextNorm scores were made: prompt-set source (and version, except for imported
    sets, whose version is a hash per prompt), normalisation and its knob."""

    source: str
    version: str
    normalize: str
    scale: float
    temperature: float
    scores: int = 0  # how many of the checkpoint's images have a score in this setting

    @property
    def key(self) -> str:
        return "|".join([self.source, self.version, self.normalize, repr(self.scale), repr(self.temperature)])

    @property
    def label(self) -> str:
        minmax = self.normalize == RewardScore.Normalize.MINMAX
        knob = f"s={self.scale:g}" if minmax else f"tau={self.temperature:g}"
        version = f" {self.version}" if self.version else ""
        return f"{self.source} prompt sets{version}, {self.normalize} {knob}"

    def score_filter(self) -> Q:
        q = Q(variant=RewardScore.Variant.TEXTNORM, prompt_set__source=self.source, normalize=self.normalize,
              scale=self.scale, temperature=self.temperature)
        return q & Q(prompt_set__version=self.version) if self.version else q


def checkpoint_get(*, checkpoint_id: int) -> Checkpoint | None:
    return Checkpoint.objects.select_related("derived_from").filter(pk=checkpoint_id).first()


def gallery_reward_models(*, source: ImageSource) -> list[RewardModel]:
    """The reward models with at least one score on the source's images (EXISTS per model)."""
    scored = RewardScore.objects.filter(source.q("image__"), reward_model=OuterRef("pk"))
    return list(RewardModel.objects.filter(Exists(scored)).order_by("name"))


def gallery_textnorm_settings(*, source: ImageSource, reward_model: RewardModel) -> list[TextnormSetting]:
    """The TextNorm settings of the model's scores on the source's images, the most common first."""
    rows = (RewardScore.objects
            .filter(source.q("image__"), reward_model=reward_model,
                    variant=RewardScore.Variant.TEXTNORM)
            .values_list("prompt_set__source", "prompt_set__version", "normalize", "scale", "temperature")
            .annotate(n=Count("id")).order_by())
    counts: dict[tuple, int] = defaultdict(int)
    for source, version, normalize, scale, temperature, n in rows:
        version = "" if source == ContrastivePromptSet.Source.IMPORTED else version
        counts[(source, version, normalize, scale, temperature)] += n
    settings = [TextnormSetting(*key, scores=n) for key, n in counts.items()]
    return sorted(settings, key=lambda s: (-s.scores, s.key))


def gallery_categories(*, source: ImageSource) -> list[str]:
    has_images = Image.objects.filter(source.q(), prompt=OuterRef("pk"))
    return list(Prompt.objects.filter(Exists(has_images)).exclude(category="")
                .order_by("category").values_list("category", flat=True).distinct())


def image_with_file(*, image_id: int) -> Image | None:
    """The image if it has a file (an imported image whose pixels were not supplied has none)."""
    return Image.objects.only("id", "file").exclude(file="").filter(pk=image_id).first()


def _rated(source: ImageSource):
    """Per image of the source rated in binary rating studies: its aligned and all answers."""
    return (Judgment.objects.filter(source.q("item__image_a__"), item__study__kind=Study.Kind.RATING,
                                    choice__in=[Judgment.Choice.ALIGNED, Judgment.Choice.NOT_ALIGNED])
            .values("item__image_a_id").order_by()
            .annotate(yes=Count("id", filter=Q(choice=Judgment.Choice.ALIGNED)), n=Count("id")))


def _gallery_images(*, source: ImageSource, category: str, label: str) -> QuerySet[Image]:
    images = Image.objects.filter(source.q())
    if category:
        images = images.filter(prompt__category=category)
    if label in LABEL_FILTERS:
        # Imported labels (SPEC section 1: aligned when at least 2 of the 3 equal 1), or the
        # majority of the answers in rating studies (a tie counts as neither); unlabelled images are out.
        ones = Count("id", filter=Q(value=HumanLabel.Value.ALIGNED))
        labelled = (HumanLabel.objects.filter(source.q("image__")).values("image_id")
                    .annotate(ones=ones).order_by())
        labelled = labelled.filter(ones__gte=2) if label == "aligned" else labelled.filter(ones__lt=2)
        rated = _rated(source)
        rated = (rated.filter(yes__gt=F("n") - F("yes")) if label == "aligned"
                 else rated.filter(yes__lt=F("n") - F("yes")))
        images = images.filter(Q(id__in=labelled.values("image_id")) | Q(id__in=rated.values("item__image_a_id")))
    return images


def gallery_page(
    *, source: ImageSource, reward_model: RewardModel | None, setting: TextnormSetting | None,
    category: str = "", label: str = "", page: str | int | None = 1,
) -> Page:
    """A page of the source's prompts (12, by source_index) that have images passing the
    filters. Each prompt carries ``gallery_images`` (its first IMAGES_PER_PROMPT by seed and
    index) and ``image_total``; each image ``raw``, ``textnorm`` (the score in ``setting``),
    ``textnorm_alternatives`` (other scores in that setting: re-imported prompt sets, the
    newest set's shown), ``labels`` (slot order), ``rated`` ((aligned, all) answers in rating
    studies) and ``aligned``. Eight queries whatever the page holds."""
    images = _gallery_images(source=source, category=category, label=label)
    prompts = (Prompt.objects.filter(Exists(images.filter(prompt=OuterRef("pk"))))
               .order_by("source_index", "dataset_id", "id"))
    page_obj = Paginator(prompts, PROMPTS_PER_PAGE).get_page(page)
    page_prompts = list(page_obj.object_list)
    by_prompt: dict[int, list[Image]] = defaultdict(list)
    totals: dict[int, int] = {}
    rows = (images.filter(prompt__in=[p.id for p in page_prompts])
            .annotate(position=Window(RowNumber(), partition_by=[F("prompt_id")],
                                      order_by=[F("seed").asc(), F("index").asc(), F("id").asc()]),
                      prompt_total=Window(Count("id"), partition_by=[F("prompt_id")]))
            .filter(position__lte=IMAGES_PER_PROMPT)
            .order_by("prompt_id", "seed", "index", "id"))
    for image in rows:
        image.raw = image.textnorm = None
        image.textnorm_alternatives = 0
        image.labels = []
        image.rated = None
        by_prompt[image.prompt_id].append(image)
        totals[image.prompt_id] = image.prompt_total
    shown = {image.id: image for group in by_prompt.values() for image in group}
    if reward_model is not None and shown:
        _attach_scores(shown, reward_model=reward_model, setting=setting)
    for image_id, value in (HumanLabel.objects.filter(image_id__in=list(shown))
                            .order_by("image_id", "slot").values_list("image_id", "value")):
        shown[image_id].labels.append(value)
    for image_id, yes, n in _rated(source).filter(item__image_a_id__in=list(shown)).values_list(
            "item__image_a_id", "yes", "n"):
        shown[image_id].rated = (yes, n)
    for image in shown.values():
        ones = sum(v == HumanLabel.Value.ALIGNED for v in image.labels)
        image.aligned = ones >= 2 if image.labels else None
        if image.aligned is None and image.rated and image.rated[0] * 2 != image.rated[1]:
            image.aligned = image.rated[0] * 2 > image.rated[1]
        image.selected_from = image.metadata.get("selected_from")
    for prompt in page_prompts:
        prompt.gallery_images = by_prompt.get(prompt.id, [])
        prompt.image_total = totals.get(prompt.id, 0)
    page_obj.object_list = page_prompts
    return page_obj


def _attach_scores(shown: dict[int, Image], *, reward_model: RewardModel,
                   setting: TextnormSetting | None) -> None:
    wanted = Q(variant=RewardScore.Variant.RAW)
    if setting is not None:
        wanted |= setting.score_filter()
    scores = (RewardScore.objects.filter(wanted, image_id__in=list(shown), reward_model=reward_model)
              .order_by("image_id", "variant", "-prompt_set_id")
              .values_list("image_id", "variant", "value"))
    for image_id, variant, value in scores:
        image = shown[image_id]
        if variant == RewardScore.Variant.RAW:
            image.raw = value
        elif image.textnorm is None:  # the newest prompt set's score comes first
            image.textnorm = value
        else:
            image.textnorm_alternatives += 1


# ---- reward models against TIA2's human labels -------------------------------------------

REPORT_CACHE_PREFIX = "calibra:tia2-report:v1"
REPORT_CACHE_SECONDS = 7 * 24 * 3600
METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"), ("ap@5", "AP@5"), ("ap@10", "AP@10"), ("ap@25", "AP@25"),
           ("spearman", "Spearman"), ("kendall", "Kendall"))


def tia2_report_fingerprint() -> str:
    """What the report depends on, cheaply: the newest row of each table it reads (MAX over
    the primary key: one index probe each, never a count). A new score, label, prompt set or
    reward model changes it; a deletion that spares the newest row does not (the page has a
    button to recompute)."""
    newest = [model.objects.aggregate(m=Max("id"))["m"] or 0
              for model in (RewardScore, HumanLabel, ContrastivePromptSet, RewardModel)]
    return ":".join(str(n) for n in newest)


def _report_key(fingerprint: str) -> str:
    return f"{REPORT_CACHE_PREFIX}:{fingerprint}"


_LATEST = f"{REPORT_CACHE_PREFIX}:latest"


def tia2_report_compute() -> dict:
    """Compute the report now and keep it, under the fingerprint it was computed for and as
    the latest one (a worker runs this: ``workers.tasks.tia2_report_build``)."""
    from annotate.services.tia2_report import Tia2ReportError, tia2_report

    fingerprint = tia2_report_fingerprint()
    started = time.perf_counter()
    try:
        report, error = tia2_report(), ""
    except Tia2ReportError as exc:
        report, error = None, str(exc)
    entry = {"report": report, "error": error, "computed_at": timezone.now(),
             "seconds": time.perf_counter() - started, "fingerprint": fingerprint}
    cache.set(_report_key(fingerprint), entry, REPORT_CACHE_SECONDS)
    cache.set(_LATEST, entry, REPORT_CACHE_SECONDS)
    cache.delete(_report_key(fingerprint) + ":building")
    return entry


def tia2_report_cached() -> dict:
    """What the page shows, never computed in the request (it takes seconds on TIA2's 27,500
    images): the report for what is in the database now when a worker has made it;
    otherwise the latest one made (``stale``), or none yet (``pending``), with a build asked
    of a worker once (deduplicated across requests and processes)."""
    fingerprint = tia2_report_fingerprint()
    entry = cache.get(_report_key(fingerprint))
    if entry is not None:
        return {**entry, "from_cache": True, "stale": False, "pending": False}
    tia2_report_request(fingerprint)
    entry = cache.get(_report_key(fingerprint))  # a worker running inline (tests, eager mode) is done
    if entry is not None:
        return {**entry, "from_cache": False, "stale": False, "pending": False}
    latest = cache.get(_LATEST)
    if latest is not None:
        return {**latest, "from_cache": True, "stale": True, "pending": True}
    return {"report": None, "error": "", "computed_at": None, "seconds": None, "from_cache": False,
            "stale": False, "pending": True}


def tia2_report_request(fingerprint: str | None = None) -> bool:
    """Ask a worker for the report, unless one is already on it. Whether one was asked."""
    from annotate.services.enqueue import enqueue
    from workers.tasks import tia2_report_build

    building = _report_key(fingerprint or tia2_report_fingerprint()) + ":building"
    if not cache.add(building, True, timeout=15 * 60):
        return False
    if not enqueue(tia2_report_build):  # the broker is down: the next request asks again
        cache.delete(building)
        return False
    return True


def tia2_report_forget() -> None:
    """Drop the report of the current data and ask for a new one (after deletions, which the
    fingerprint does not see)."""
    key = _report_key(tia2_report_fingerprint())
    cache.delete(key)
    cache.delete(key + ":building")
    tia2_report_request()


def _split_column(name: str) -> tuple[str, str, str]:
    """(reward model, "raw" | "textnorm" | "other", TextNorm setting) from tia2_report's column name."""
    if name.endswith(" raw"):
        return name[: -len(" raw")], "raw", ""
    model, sep, setting = name.partition(" textnorm (")
    if sep:
        return model, "textnorm", setting.removesuffix(")")
    return name, "other", ""


def tia2_report_by_category(report: dict) -> list[dict]:
    """For each category: its label figures and one row per score column (reward models in
    name order, raw before TextNorm) with the metric means and kept/dropped prompts."""
    figures = {c["category"]: c for c in report["categories"]}
    sections: dict[str, dict] = {c: {"category": c, "figures": f, "rows": []} for c, f in figures.items()}
    def order(column: dict) -> tuple:
        model, variant, _ = _split_column(column["score"])
        return model, variant != "raw", column["score"]

    columns = sorted(report["reward_models"], key=order)
    for column in columns:
        model, variant, setting = _split_column(column["score"])
        for summary in column["categories"]:
            means = summary["means"].get(column["score"], {})
            section = sections.setdefault(summary["category"],
                                          {"category": summary["category"], "figures": None, "rows": []})
            section["rows"].append({
                "column": column["score"], "model": model, "variant": variant, "setting": setting,
                "values": [means.get(key) for key, _ in METRICS],
                "auroc": means.get("auroc"), "auprc": means.get("auprc"),
                "n_kept": summary["n_kept"], "n_dropped": summary["n_dropped"],
                "dropped": summary["dropped"], "n_images": summary["n_images"],
            })
    return list(sections.values())
