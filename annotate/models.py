"""The domain of a text-to-image human evaluation study.

Data flows top to bottom: datasets of prompts (with contrastive prompt sets) are rendered
by checkpoints in generation jobs into images; reward models score the images (raw and
TextNorm-calibrated); humans label them, either imported (TIA2) or collected here through
studies, whose items are leased to annotators (assignments) and answered (judgments).

Models hold fields, constraints and trivial properties; writes live in ``services``,
reads in ``selectors``.
"""
import secrets
import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone

from annotate.media import random_image_name


class Dataset(models.Model):
    class Source(models.TextChoices):
        TIA2 = "tia2", "TIA2 benchmark"
        DEMO = "demo", "Demo"
        CUSTOM = "custom", "Custom"

    name = models.CharField(max_length=200, unique=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.CUSTOM)
    category = models.CharField(max_length=64, blank=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Prompt(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField()
    category = models.CharField(max_length=64, blank=True, db_index=True)
    # Position in the source (TIA2's promptIndex in image_{promptIndex}_{seed}_{index}.jpg).
    source_index = models.PositiveIntegerField()
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["dataset_id", "source_index"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "source_index"], name="prompt_unique_index"),
        ]

    def __str__(self) -> str:
        return self.text


class ContrastivePromptSet(models.Model):
    """Prompts that contrast with one prompt, for TextNorm. The original is never in ``texts``."""

    class Source(models.TextChoices):
        IMPORTED = "imported", "Imported"
        RULE_BASED = "rule_based", "Rule-based"
        LANGUAGE_MODEL = "language_model", "Language model"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="contrastive_sets")
    source = models.CharField(max_length=16, choices=Source.choices)
    # Identifies the content and its generator: same version, same texts.
    version = models.CharField(max_length=64)
    generator = models.CharField(max_length=500, blank=True, help_text="file, rule set or model path")
    texts = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["prompt", "source", "version"], name="contrastive_set_unique_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prompt_id}:{self.source}:{self.version}"

    @property
    def prompt_set(self) -> list[str]:
        """TextNorm's P: the original prompt first, then the contrastive prompts, de-duplicated
        and without the original (SPEC 2.1), however the set was written."""
        from workers.ml.textnorm import prompt_set

        return prompt_set(self.prompt.text, self.texts)


class Checkpoint(models.Model):
    class Backend(models.TextChoices):
        DIFFUSERS = "diffusers", "Diffusers folder"
        SINGLE_FILE = "single_file", "Single-file checkpoint"
        LORA = "lora", "Base model + LoRA"
        PROCEDURAL = "procedural", "Procedural (demo and tests)"
        BEST_OF_N = "best_of_n", "Best-of-n selection from another checkpoint"

    name = models.CharField(max_length=200, unique=True)
    backend = models.CharField(max_length=16, choices=Backend.choices)
    location = models.CharField(max_length=1024, blank=True, help_text="folder, file or LoRA path")
    base_model = models.CharField(max_length=1024, blank=True, help_text="base pipeline for LoRA")
    config = models.JSONField(default=dict, blank=True)
    # A best-of-n checkpoint makes no images of its own: it selects among its parent's.
    derived_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="derived"
    )
    # sha256 over the weights' files and the config; the worker's model cache key.
    fingerprint = models.CharField(max_length=64, blank=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(backend__in=["procedural", "best_of_n"]) | ~Q(location=""),
                name="checkpoint_weights_have_location",
            ),
            models.CheckConstraint(
                condition=Q(backend="best_of_n", derived_from__isnull=False)
                | (~Q(backend="best_of_n") & Q(derived_from__isnull=True)),
                name="checkpoint_best_of_n_has_parent",
            ),
            models.CheckConstraint(
                condition=~Q(backend="lora") | ~Q(base_model=""),
                name="checkpoint_lora_has_base_model",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class WorkerJob(models.Model):
    """What the GPU workers' jobs share: a status, progress over images, the error of a failed
    run, and who asked for it when."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    total_images = models.PositiveIntegerField(default=0)
    done_images = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    @property
    def progress(self) -> float:
        return self.done_images / self.total_images if self.total_images else 0.0


class GenerationJob(WorkerJob):
    class DType(models.TextChoices):
        FLOAT32 = "float32"
        FLOAT16 = "float16"
        BFLOAT16 = "bfloat16"

    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="jobs")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="jobs")
    seeds = models.JSONField(default=list, help_text="list of integer seeds")
    images_per_seed = models.PositiveSmallIntegerField(default=1)
    num_inference_steps = models.PositiveSmallIntegerField(default=25)
    guidance_scale = models.FloatField(default=7.5)
    width = models.PositiveIntegerField(default=512)
    height = models.PositiveIntegerField(default=512)
    scheduler = models.CharField(max_length=64, blank=True)
    dtype = models.CharField(max_length=16, choices=DType.choices, default=DType.FLOAT16)

    class Meta(WorkerJob.Meta):
        constraints = [
            models.CheckConstraint(
                condition=Q(done_images__lte=models.F("total_images")),
                name="job_progress_within_total",
            ),
            models.CheckConstraint(
                condition=Q(width__gte=8, height__gte=8, images_per_seed__gte=1, num_inference_steps__gte=1),
                name="job_sane_parameters",
            ),
        ]

    def __str__(self) -> str:
        return f"job {self.pk}: {self.checkpoint} on {self.dataset}"


def image_upload_to(instance: "Image", filename: str) -> str:
    # The name given (a prompt, a model) never reaches storage: annotate/media.py.
    extension = filename.rpartition(".")[2].lower()
    return random_image_name(extension if extension in ("jpg", "jpeg", "png", "webp") else "jpg")


class Image(models.Model):
    """One image for one prompt: generated by a checkpoint, or imported (checkpoint None).

    An imported image whose pixels were not supplied is recorded with an empty ``file``.
    """

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="images")
    checkpoint = models.ForeignKey(
        Checkpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="images"
    )
    job = models.ForeignKey(
        GenerationJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="images"
    )
    seed = models.PositiveBigIntegerField()
    index = models.PositiveIntegerField()
    source_name = models.CharField(max_length=255, blank=True, help_text="file name in the source")
    file = models.FileField(upload_to=image_upload_to, max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    # What the generator knows about the image, e.g. the procedural backend's ground truth
    # {"matches_prompt": false, "drawn": "..."}. Never shown to annotators.
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["checkpoint", "prompt", "seed", "index"],
                condition=Q(checkpoint__isnull=False),
                name="image_unique_generated",
            ),
            models.UniqueConstraint(
                fields=["prompt", "seed", "index"],
                condition=Q(checkpoint__isnull=True),
                name="image_unique_imported",
            ),
            models.CheckConstraint(
                condition=(Q(file="") & Q(sha256="") & Q(size_bytes__isnull=True))
                | (~Q(file="") & ~Q(sha256="") & Q(size_bytes__isnull=False)),
                name="image_file_has_checksum",
            ),
        ]

    def __str__(self) -> str:
        return self.source_name or f"image {self.pk}"

    @property
    def is_missing(self) -> bool:
        return not self.file


class RewardModel(models.Model):
    class Kind(models.TextChoices):
        CLIP = "clip", "CLIP score (cosine)"
        PICKSCORE = "pickscore", "PickScore"
        BLIP_ITM = "blip_itm", "BLIP image-text matching"
        BLIP2_ITM = "blip2_itm", "BLIP-2 image-text matching"
        IMAGEREWARD = "imagereward", "ImageReward"
        HPSV2 = "hpsv2", "HPSv2"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    location = models.CharField(max_length=1024, help_text="local path or hub id")
    config = models.JSONField(default=dict, blank=True)
    fingerprint = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RewardScore(models.Model):
    """A reward model's score of an image: raw, or TextNorm over a contrastive prompt set.

    Ensembles (mean, uncertainty-regularised) are functions of the per-model TextNorm
    scores and are computed when read, not stored.
    """

    class Variant(models.TextChoices):
        RAW = "raw", "Raw"
        TEXTNORM = "textnorm", "TextNorm"

    class Normalize(models.TextChoices):
        MINMAX = "minmax", "Min-max (authors' code)"
        NONE = "none", "Temperature (paper)"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="reward_scores")
    reward_model = models.ForeignKey(RewardModel, on_delete=models.CASCADE, related_name="scores")
    variant = models.CharField(max_length=16, choices=Variant.choices)
    prompt_set = models.ForeignKey(
        ContrastivePromptSet, null=True, blank=True, on_delete=models.PROTECT, related_name="scores"
    )
    normalize = models.CharField(max_length=16, choices=Normalize.choices, blank=True)
    scale = models.FloatField(default=1.0, help_text="s, for min-max")
    temperature = models.FloatField(default=1.0, help_text="tau, for normalize='none'")
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["image", "reward_model"],
                condition=Q(variant="raw"),
                name="score_unique_raw",
            ),
            models.UniqueConstraint(
                fields=["image", "reward_model", "prompt_set", "normalize", "scale", "temperature"],
                condition=Q(variant="textnorm"),
                name="score_unique_textnorm",
            ),
            models.CheckConstraint(
                condition=(Q(variant="raw") & Q(prompt_set__isnull=True) & Q(normalize=""))
                | (
                    Q(variant="textnorm")
                    & Q(prompt_set__isnull=False)
                    & Q(normalize__in=["minmax", "none"])
                ),
                name="score_variant_parameters",
            ),
            models.CheckConstraint(
                condition=Q(scale__gt=0, temperature__gt=0), name="score_positive_parameters"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reward_model.name} {self.variant} score of image {self.image_id}"


class ScoringJob(WorkerJob):
    """Score every image of a generation job, a checkpoint or a dataset with one reward model:
    raw, TextNorm, or both. Idempotent: a rerun scores only what is missing."""

    reward_model = models.ForeignKey(RewardModel, on_delete=models.PROTECT, related_name="jobs")
    dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="scoring_jobs"
    )
    checkpoint = models.ForeignKey(
        Checkpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="scoring_jobs"
    )
    generation_job = models.ForeignKey(
        GenerationJob, null=True, blank=True, on_delete=models.PROTECT, related_name="scoring_jobs"
    )
    variants = models.JSONField(default=list, help_text='["raw"], ["textnorm"] or both')
    prompt_set_source = models.CharField(
        max_length=16, choices=ContrastivePromptSet.Source.choices, blank=True
    )
    prompt_set_version = models.CharField(max_length=64, blank=True)
    normalize = models.CharField(max_length=16, choices=RewardScore.Normalize.choices, blank=True)
    scale = models.FloatField(default=1.0)
    temperature = models.FloatField(default=1.0)
    batch_size = models.PositiveIntegerField(default=64)

    class Meta(WorkerJob.Meta):
        constraints = [
            models.CheckConstraint(
                condition=Q(dataset__isnull=False) | Q(checkpoint__isnull=False)
                | Q(generation_job__isnull=False),
                name="scoring_job_has_images",
            ),
            models.CheckConstraint(
                condition=Q(done_images__lte=models.F("total_images")),
                name="scoring_job_progress_within_total",
            ),
            models.CheckConstraint(
                condition=Q(scale__gt=0, temperature__gt=0, batch_size__gte=1),
                name="scoring_job_positive_parameters",
            ),
        ]

    def __str__(self) -> str:
        return f"scoring job {self.pk}: {self.reward_model}"


class HumanLabel(models.Model):
    """An externally collected alignment label. TIA2 has three slots per image; a slot is
    a position in the release, not an annotator."""

    class Value(models.IntegerChoices):
        ALIGNED = 1, "Aligned"
        NOT_ALIGNED = 0, "Not aligned"
        NO_LABEL = -1, "No label recorded"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="human_labels")
    slot = models.PositiveSmallIntegerField()
    value = models.SmallIntegerField(choices=Value.choices)
    source = models.CharField(max_length=32, default="tia2")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "slot"], name="label_unique_slot"),
            models.CheckConstraint(condition=Q(value__in=[-1, 0, 1]), name="label_known_value"),
        ]

    def __str__(self) -> str:
        return f"label {self.slot} of image {self.image_id}: {self.value}"


class Study(models.Model):
    class Kind(models.TextChoices):
        RATING = "rating", "Per-image alignment rating"
        PAIRWISE = "pairwise", "Pairwise side by side"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    class RatingScale(models.TextChoices):
        BINARY = "binary", "Aligned / not aligned"
        LIKERT5 = "likert5", "1-5 scale"

    class ItemOrder(models.TextChoices):
        CLOSEST_TO_COMPLETION = "closest", "Closest to completion first"
        RANDOM = "random", "Random"

    # Annotators and crowd links see this, never the primary key.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    instructions = models.TextField(blank=True, help_text="Markdown")
    question = models.CharField(max_length=300, blank=True)
    rating_scale = models.CharField(
        max_length=16, choices=RatingScale.choices, default=RatingScale.BINARY
    )
    redundancy = models.PositiveSmallIntegerField(default=3, help_text="judgments per item")
    gold_share = models.FloatField(default=0.0)
    gold_min_accuracy = models.FloatField(default=0.7)
    gold_min_answers = models.PositiveSmallIntegerField(default=5)
    lease_seconds = models.PositiveIntegerField(default=600)
    items_per_annotator = models.PositiveIntegerField(
        null=True, blank=True, help_text="how many items one annotator answers at most (empty: all)"
    )
    item_order = models.CharField(
        max_length=16, choices=ItemOrder.choices, default=ItemOrder.CLOSEST_TO_COMPLETION
    )
    completion_code = models.CharField(max_length=64, blank=True)
    # Off: only invited members annotate. On: /s/<public_id>/?PROLIFIC_PID=... makes an account
    # for each crowd worker who arrives by it (anyone who has the link).
    crowd_link = models.BooleanField(default=False, help_text="crowd workers join by the study's link")
    # Leases one annotator may hold at once in this study: the page holds the item on screen and
    # one preloaded; a few more cover a second tab. Without a cap one account could hoard items.
    max_open_leases = models.PositiveSmallIntegerField(
        default=3, help_text="items one annotator may hold at once (1-20)")
    # Items are made with the study and never added later; kept so pages need not count them.
    item_count = models.PositiveIntegerField(default=0)
    dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="studies"
    )
    checkpoints = models.ManyToManyField(Checkpoint, blank=True, related_name="studies")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="created_studies",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"
        constraints = [
            models.CheckConstraint(condition=Q(redundancy__gte=1), name="study_redundancy_positive"),
            models.CheckConstraint(
                condition=Q(gold_share__gte=0, gold_share__lte=1), name="study_gold_share_fraction"
            ),
            models.CheckConstraint(
                condition=Q(gold_min_accuracy__gte=0, gold_min_accuracy__lte=1),
                name="study_gold_accuracy_fraction",
            ),
            models.CheckConstraint(condition=Q(lease_seconds__gte=1), name="study_lease_positive"),
            models.CheckConstraint(
                condition=Q(max_open_leases__gte=1, max_open_leases__lte=20), name="study_open_leases_bounded"),
        ]

    def get_absolute_url(self) -> str:
        """The researcher's page of the study (the admin's "view on site")."""
        from django.urls import reverse

        return reverse("study-detail", args=[self.pk])

    def __str__(self) -> str:
        return self.name


def random_rank() -> int:
    return secrets.randbelow(2**31)


class StudyItem(models.Model):
    """What an annotator judges: one image (rating) or two images of one prompt (pairwise)."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # No index of its own: the queue indexes lead with the study.
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="items", db_index=False)
    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="study_items")
    image_a = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="+")
    image_b = models.ForeignKey(Image, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    is_gold = models.BooleanField(default=False)
    gold_answer = models.CharField(max_length=16, blank=True)
    # Kept by the judgment service so that the assignment query never counts rows.
    judgment_count = models.PositiveIntegerField(default=0)
    # Slots taken: judgments plus leases not yet settled or released (lapsed ones included
    # until released). The queue orders and filters by it, so a full item is never walked,
    # and a new lease changes the item's own row, which serialises concurrent leases on it.
    taken = models.PositiveIntegerField(default=0)
    # A random position: each annotator walks the items in this order from their own
    # starting point, so orders differ per annotator and concurrent annotators spread out.
    rank = models.PositiveIntegerField(default=random_rank)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "image_a", "image_b"],
                condition=Q(image_b__isnull=False),
                name="item_unique_pair",
            ),
            models.UniqueConstraint(
                fields=["study", "image_a"],
                condition=Q(image_b__isnull=True),
                name="item_unique_single",
            ),
            models.CheckConstraint(
                condition=~Q(image_a=models.F("image_b")), name="item_two_distinct_images"
            ),
            models.CheckConstraint(
                condition=Q(is_gold=False) | ~Q(gold_answer=""), name="item_gold_has_answer"
            ),
            models.CheckConstraint(condition=Q(taken__gte=models.F("judgment_count")), name="item_taken_counts_judgments"),
        ]
        indexes = [
            # Serves "closest to completion first, then by rank" with LIMIT 1 in the assignment
            # query: one bounded range per value of taken. judgment_count is in no index, so
            # counting a judgment is a HOT update.
            models.Index(fields=["study", "-taken", "rank"], name="item_study_queue"),
        ]

    def __str__(self) -> str:
        return f"item {self.pk} of {self.study.name}"


class StudyMembership(models.Model):
    """An annotator's standing in one study, including crowd-worker identifiers."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="memberships")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="study_memberships"
    )
    external_worker_id = models.CharField(max_length=128, blank=True)
    external_session_id = models.CharField(max_length=128, blank=True)
    # A crowd worker's session is bound to the browser that joined: the SHA-256 of a secret kept
    # in that browser's cookie. Another browser with the same worker id is refused.
    crowd_browser_hash = models.CharField(max_length=64, blank=True)
    # The worker's own completion code (crowd members only), which the researcher's export lists
    # so that a code pasted into the crowd platform can be checked against the work done.
    completion_code = models.CharField(max_length=32, blank=True)
    is_paused = models.BooleanField(default=False)
    paused_reason = models.CharField(max_length=300, blank=True)
    gold_answered = models.PositiveIntegerField(default=0)
    gold_correct = models.PositiveIntegerField(default=0)
    # Kept by the answer services: the progress bar reads them without counting.
    answered_count = models.PositiveIntegerField(default=0)
    skipped_count = models.PositiveIntegerField(default=0)
    # The rank of the item last answered: the annotator's walk of the study's random order
    # goes on from here (empty: from a start drawn per annotator), so it never walks back
    # over what they answered.
    cursor_rank = models.PositiveIntegerField(null=True, blank=True)
    joined_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "annotator"], name="membership_unique"),
            models.CheckConstraint(
                condition=Q(gold_correct__lte=models.F("gold_answered")),
                name="membership_gold_within_answered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.annotator.username} in {self.study.name}"


class Assignment(models.Model):
    """A lease: an item reserved for one annotator until ``expires_at``."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        ANSWERED = "answered", "Answered"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"
        RELEASED = "released", "Released"

    item = models.ForeignKey(StudyItem, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    # Pairwise: whether image_a is shown on the left, drawn when the lease is made.
    a_on_left = models.BooleanField(null=True, blank=True)
    # The client id of the answer last taken back (undo) under this lease: a late resend of it,
    # from another tab whose response was lost, must not bring it back.
    taken_back_client_id = models.UUIDField(null=True, blank=True)
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            # Annotator first: it also finds an annotator's unsettled leases (the held lease).
            models.UniqueConstraint(
                fields=["annotator", "item"],
                condition=Q(state="active"),
                name="assignment_one_active_per_annotator",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__gt=models.F("leased_at")), name="assignment_expires_after_lease"
            ),
        ]

    def __str__(self) -> str:
        return f"lease {self.pk} of item {self.item_id} to {self.annotator.username}"


class LeaseOutcome(models.Model):
    """What became of a lease: a judgment or a skip. ``client_id`` is made by the client, so
    that a retried submission is recognised and stored once."""

    item = models.ForeignKey(StudyItem, on_delete=models.CASCADE, related_name="%(class)ss")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="%(class)ss"
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="%(class)s"
    )
    client_id = models.UUIDField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True


class Judgment(LeaseOutcome):
    class Choice(models.TextChoices):
        LEFT = "left", "Left"
        RIGHT = "right", "Right"
        TIE = "tie", "Tie"
        ALIGNED = "aligned", "Aligned"
        NOT_ALIGNED = "not_aligned", "Not aligned"
        SCORE = "score", "Scale score"

    choice = models.CharField(max_length=16, choices=Choice.choices)
    score = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1-5 scale")
    reason = models.CharField(max_length=64, blank=True)
    a_on_left = models.BooleanField(null=True, blank=True)
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    # On gold items: whether the answer matched the known one.
    gold_correct = models.BooleanField(null=True, blank=True)
    is_flagged = models.BooleanField(default=False)
    flag_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="judgment_one_per_annotator"),
            models.UniqueConstraint(fields=["annotator", "client_id"], name="judgment_unique_client_id"),
            models.CheckConstraint(
                condition=(Q(choice="score") & Q(score__gte=1) & Q(score__lte=5))
                | (~Q(choice="score") & Q(score__isnull=True)),
                name="judgment_score_on_scale",
            ),
            models.CheckConstraint(
                condition=~Q(choice__in=["left", "right", "tie"]) | Q(a_on_left__isnull=False),
                name="judgment_pairwise_records_side",
            ),
        ]

    def __str__(self) -> str:
        return f"judgment {self.pk} by {self.annotator.username} on item {self.item_id}"


class Skip(LeaseOutcome):
    """An item an annotator passed on, with why: an outcome, not a judgment."""

    class Reason(models.TextChoices):
        IMAGE_NOT_LOADED = "image_not_loaded", "Image did not load"
        UNSURE = "unsure", "Unsure"
        OTHER = "other", "Other"

    reason = models.CharField(max_length=32, choices=Reason.choices)
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["annotator", "client_id"], name="skip_unique_client_id"),
        ]
        indexes = [models.Index(fields=["item", "annotator"], name="skip_item_annotator")]

    def __str__(self) -> str:
        return f"skip {self.pk} by {self.annotator.username} of item {self.item_id}"


class Report(models.Model):
    class Format(models.TextChoices):
        HTML = "html", "HTML"
        CSV = "csv", "CSV"
        JSON = "json", "JSON"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reports")
    format = models.CharField(max_length=8, choices=Format.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    params = models.JSONField(default=dict, blank=True, help_text="bootstrap rounds, seed, exclusions")
    file = models.FileField(upload_to="reports/", max_length=500, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"report {self.pk} ({self.format}) of {self.study.name}: {self.status}"


class AuditEvent(models.Model):
    """A researcher's action, an admin change or a sign-in, kept for who-did-what questions.

    Written by ``annotate.audit.audit`` only; never changed or deleted through the app.
    Annotators' work (leases, judgments, skips) is not recorded here: it has tables of its own.
    """

    created_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    # The username then (kept if the account is renamed or deleted); for a failed sign-in, the
    # username that was tried.
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, help_text="e.g. study.open, login.failed, admin.change")
    target_type = models.CharField(max_length=100, blank=True, help_text="app_label.model")
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["-created_at"], name="audit_created"),
            models.Index(fields=["actor", "-created_at"], name="audit_actor_created"),
        ]

    def __str__(self) -> str:
        who = self.actor_name or "system"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {who} {self.action} {self.target_repr}".rstrip()
