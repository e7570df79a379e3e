"""The REST API for checkpoints and the workers' jobs (researchers only): register a
checkpoint, start generation and scoring jobs, follow their progress, retry or cancel them."""
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotate.apis import IsResearcher, NameOrIdField, error_response
from annotate.audit import audit
from annotate.models import Checkpoint, Dataset, GenerationJob, RewardModel, RewardScore, ScoringJob
from annotate.services import jobs
from annotate.services.checkpoints import REGISTRABLE, CheckpointRegistrationError, checkpoint_register
from annotate.services.generation import GenerationError, generation_job_create
from annotate.services.scoring import ScoringError, scoring_job_create

JOB_FIELDS = ["id", "status", "done_images", "total_images", "error", "created_at", "started_at", "finished_at"]


class CheckpointOutput(serializers.ModelSerializer):
    derived_from = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Checkpoint
        fields = ["id", "name", "backend", "location", "base_model", "config", "derived_from", "fingerprint",
                  "description", "created_at"]


class CheckpointInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    backend = serializers.ChoiceField(choices=list(REGISTRABLE))
    location = serializers.CharField(max_length=1024, allow_blank=True, default="")
    base_model = serializers.CharField(max_length=1024, allow_blank=True, default="")
    config = serializers.DictField(default=dict)
    description = serializers.CharField(allow_blank=True, default="")


class CheckpointListCreateApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=CheckpointOutput(many=True))
    def get(self, request):
        return Response(CheckpointOutput(Checkpoint.objects.select_related("derived_from").order_by("name"),
                                         many=True).data)

    @extend_schema(request=CheckpointInput, responses={201: CheckpointOutput})
    def post(self, request):
        data = CheckpointInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            checkpoint = checkpoint_register(**data.validated_data)
        except CheckpointRegistrationError as exc:
            return error_response(exc)
        return Response(CheckpointOutput(checkpoint).data, status=status.HTTP_201_CREATED)


class GenerationJobOutput(serializers.ModelSerializer):
    checkpoint = serializers.SlugRelatedField(slug_field="name", read_only=True)
    dataset = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = GenerationJob
        fields = [*JOB_FIELDS, "checkpoint", "dataset", "seeds", "images_per_seed", "num_inference_steps",
                  "guidance_scale", "width", "height", "scheduler", "dtype"]


class GenerationJobInput(serializers.Serializer):
    checkpoint = NameOrIdField(queryset=Checkpoint.objects.all())
    dataset = NameOrIdField(queryset=Dataset.objects.all())
    seeds = serializers.ListField(child=serializers.IntegerField(min_value=0, max_value=2**63 - 1), min_length=1,
                                  max_length=10_000)
    images_per_seed = serializers.IntegerField(min_value=1, max_value=64, default=1)
    num_inference_steps = serializers.IntegerField(min_value=1, max_value=1000, default=25)
    guidance_scale = serializers.FloatField(min_value=0, max_value=100, default=7.5)
    width = serializers.IntegerField(min_value=8, max_value=4096, default=512)
    height = serializers.IntegerField(min_value=8, max_value=4096, default=512)
    scheduler = serializers.CharField(max_length=64, allow_blank=True, default="")
    dtype = serializers.ChoiceField(choices=GenerationJob.DType.choices, default=GenerationJob.DType.FLOAT16)


class _JobListCreateApi(APIView):
    """The newest jobs of a kind, or a new one (created by its service, queued after commit)."""

    permission_classes = [IsResearcher]
    model = output = create = error = None
    related: tuple[str, ...] = ()
    kind = ""  # generation or scoring: the audit log's action is "<kind>_job.create"

    def get(self, request):
        rows = self.model.objects.select_related(*self.related).order_by("-created_at")[:200]
        return Response(self.output(rows, many=True).data)

    def post(self, request):
        data = self.input(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            job = type(self).create(created_by=request.user, **data.validated_data)
        except self.error as exc:
            return error_response(exc)
        audit(request, f"{self.kind}_job.create", job)
        return Response(self.output(job).data, status=status.HTTP_201_CREATED)


@extend_schema_view(get=extend_schema(responses=GenerationJobOutput(many=True)),
                    post=extend_schema(request=GenerationJobInput, responses={201: GenerationJobOutput}))
class GenerationJobListCreateApi(_JobListCreateApi):
    model, output, input, error = GenerationJob, GenerationJobOutput, GenerationJobInput, GenerationError
    create = staticmethod(generation_job_create)
    related = ("checkpoint", "dataset")
    kind = "generation"


class ScoringJobOutput(serializers.ModelSerializer):
    reward_model = serializers.SlugRelatedField(slug_field="name", read_only=True)
    checkpoint = serializers.SlugRelatedField(slug_field="name", read_only=True)
    dataset = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = ScoringJob
        fields = [*JOB_FIELDS, "reward_model", "dataset", "checkpoint", "generation_job", "variants",
                  "prompt_set_source", "prompt_set_version", "normalize", "scale", "temperature", "batch_size"]


class ScoringJobInput(serializers.Serializer):
    reward_model = NameOrIdField(queryset=RewardModel.objects.all())
    dataset = NameOrIdField(queryset=Dataset.objects.all(), required=False, allow_null=True)
    checkpoint = NameOrIdField(queryset=Checkpoint.objects.all(), required=False, allow_null=True)
    generation_job = serializers.PrimaryKeyRelatedField(queryset=GenerationJob.objects.all(), required=False,
                                                        allow_null=True)
    variants = serializers.ListField(child=serializers.ChoiceField(choices=RewardScore.Variant.choices),
                                     min_length=1, default=["raw", "textnorm"])
    prompt_set_source = serializers.CharField(max_length=16, default="imported")
    prompt_set_version = serializers.CharField(max_length=64, allow_blank=True, default="")
    normalize = serializers.ChoiceField(choices=RewardScore.Normalize.choices, default=RewardScore.Normalize.MINMAX)
    scale = serializers.FloatField(default=1.0)
    temperature = serializers.FloatField(default=1.0)
    batch_size = serializers.IntegerField(min_value=1, max_value=4096, default=64)

    # The database requires both > 0 whatever the variants; the service checks them only with textnorm.
    def validate_scale(self, value: float) -> float:
        if not value > 0:
            raise serializers.ValidationError("Ensure this value is greater than 0.")
        return value

    validate_temperature = validate_scale


@extend_schema_view(get=extend_schema(responses=ScoringJobOutput(many=True)),
                    post=extend_schema(request=ScoringJobInput, responses={201: ScoringJobOutput}))
class ScoringJobListCreateApi(_JobListCreateApi):
    model, output, input, error = ScoringJob, ScoringJobOutput, ScoringJobInput, ScoringError
    create = staticmethod(scoring_job_create)
    related = ("reward_model", "checkpoint", "dataset")
    kind = "scoring"


_KINDS = {"generation": (GenerationJob, GenerationJobOutput), "scoring": (ScoringJob, ScoringJobOutput)}


class JobDetailApi(APIView):
    """One job, for following its progress."""

    permission_classes = [IsResearcher]

    @extend_schema(responses=ScoringJobOutput)
    def get(self, request, kind: str, job_id: int):
        model, output = _KINDS[kind]
        return Response(output(get_object_or_404(model, pk=job_id)).data)


class JobActionApi(APIView):
    """Retry a failed or cancelled job (only what is missing is redone), or cancel a running one."""

    permission_classes = [IsResearcher]

    @extend_schema(request=None, responses=ScoringJobOutput)
    def post(self, request, kind: str, job_id: int, action: str):
        model, output = _KINDS[kind]
        job = get_object_or_404(model, pk=job_id)
        try:
            job = jobs.job_retry(job) if action == "retry" else jobs.job_cancel(job)
        except jobs.JobError as exc:
            return Response({"error": "conflict", "detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        audit(request, f"{kind}_job.{action}", job)
        return Response(output(job).data)
