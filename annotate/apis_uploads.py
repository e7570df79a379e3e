"""The REST API for researchers' uploads into a dataset: an image of one of its prompts, or a
CSV file of prompts. Bodies larger than the limits are refused (413) before they are read."""
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotate.apis import IsResearcher
from annotate.models import Dataset, Image
from annotate.services import prompt_import, uploads

# Room for the multipart envelope and the other fields around the file itself.
ENVELOPE_BYTES = 64 * 1024


def _too_large(field: str, limit: int) -> Response:
    detail = f"{field}: more than the limit of {limit / (1024 * 1024):.1f} MB"
    return Response({"error": "too_large", "detail": detail},
                    status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)


def _declared_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _upload_error(exc: uploads.UploadError) -> Response:
    if exc.status == status.HTTP_400_BAD_REQUEST:
        return Response({exc.field: [exc.message]}, status=exc.status)
    return Response({"error": exc.code, "detail": str(exc)}, status=exc.status)


ERRORS = {
    400: OpenApiResponse(description="invalid input; the body names the field"),
    404: OpenApiResponse(description="no such dataset"),
    413: OpenApiResponse(description="the file is larger than the limit"),
}


def _body(serializer_class, request, limit: int):
    """The validated body, or a 413 when the request says it is larger than ``limit`` (refused
    before the body is read)."""
    if _declared_length(request) > limit + ENVELOPE_BYTES:
        return None, _too_large("file", limit)
    data = serializer_class(data=request.data)
    data.is_valid(raise_exception=True)
    return data, None

class ImageOutput(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = ["id", "prompt", "seed", "index", "source_name", "sha256", "size_bytes", "width", "height",
                  "url", "created_at"]

    def get_url(self, image) -> str:
        # The researchers' image view: media files are not served as such.
        return reverse("researcher-image", args=[image.pk])


class DatasetImageUploadApi(APIView):
    """Upload a JPEG, PNG or WebP image of one of the dataset's prompts (an imported image)."""

    permission_classes = [IsResearcher]
    parser_classes = [MultiPartParser]

    @extend_schema_serializer(component_name="ImageUploadInput")  # other views have an Input too
    class Input(serializers.Serializer):
        file = serializers.FileField(help_text="JPEG, PNG or WebP")
        prompt = serializers.IntegerField(min_value=1, max_value=2**63 - 1,
                                          help_text="a prompt of the dataset")
        seed = serializers.IntegerField(min_value=0, max_value=uploads.MAX_SEED, required=False)
        index = serializers.IntegerField(min_value=0, max_value=uploads.MAX_INDEX, required=False)

    @extend_schema(request={"multipart/form-data": Input},
                   responses={201: ImageOutput, 200: ImageOutput, **ERRORS,
                              409: OpenApiResponse(description="another image holds that seed and index")})
    def post(self, request, dataset_id: int):
        dataset = get_object_or_404(Dataset, pk=dataset_id)
        data, refused = _body(self.Input, request, uploads.upload_max_bytes())
        if refused is not None:
            return refused
        fields = data.validated_data
        try:
            result = uploads.image_upload(dataset=dataset, prompt_id=fields["prompt"], file=fields["file"],
                                          seed=fields.get("seed"), index=fields.get("index"))
        except uploads.UploadError as exc:
            return _upload_error(exc)
        return Response(ImageOutput(result.image).data,
                        status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class DatasetPromptsCsvApi(APIView):
    """Import prompts from a UTF-8 CSV file (columns text, category, source_index): all or
    nothing, and prompts already there are not added again."""

    permission_classes = [IsResearcher]
    parser_classes = [MultiPartParser]

    @extend_schema_serializer(component_name="PromptsCsvInput")
    class Input(serializers.Serializer):
        file = serializers.FileField(help_text="UTF-8 CSV, header line first: text, category, source_index")

    Output = inline_serializer("PromptImport", {
        "dataset": serializers.IntegerField(), "created": serializers.IntegerField(),
        "existing": serializers.IntegerField()})

    @extend_schema(request={"multipart/form-data": Input}, responses={201: Output, 200: Output, **ERRORS})
    def post(self, request, dataset_id: int):
        dataset = get_object_or_404(Dataset, pk=dataset_id)
        limit = prompt_import.import_max_bytes()
        data, refused = _body(self.Input, request, limit)
        if refused is not None:
            return refused
        file = data.validated_data["file"]
        if file.size > limit:
            return _too_large("file", limit)
        try:
            result = prompt_import.prompts_csv_import(dataset=dataset, data=file.read(),
                                                      name=file.name or "prompts.csv")
        except prompt_import.PromptImportError as exc:
            return Response({"file": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        return Response({"dataset": dataset.pk, "created": result.created, "existing": result.existing},
                        status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)
