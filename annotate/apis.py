"""The REST API: one thin view per operation, with its own input and output serializers.

Researchers manage studies and export judgments; annotators ask for the next item and
answer it. Annotator responses carry item ids and image slots only, never a checkpoint,
an image id or a gold answer.
"""
import time
import uuid

from django.conf import settings
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import permissions, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.pagination import CursorPagination
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from annotate import selectors
from annotate.models import Checkpoint, Dataset, Skip, Study, StudyMembership
from annotate.roles import is_researcher
from annotate.ratelimit import rate_count
from annotate.authentication import FastTokenAuthentication
from annotate.parsers import SafeJSONParser
from annotate.services import annotation, queue_sql, studies


class IsResearcher(permissions.BasePermission):
    def has_permission(self, request, view):
        return is_researcher(request.user)


def error_response(exc: Exception) -> Response:
    if isinstance(exc, annotation.AnnotationError):
        return Response({"error": exc.code, "detail": str(exc)}, status=exc.status)
    return Response({"error": "invalid", "detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)


# --- researchers -------------------------------------------------------------------------

@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}],
                      "description": "the object's id, or its exact name"})
class NameOrIdField(serializers.PrimaryKeyRelatedField):
    """An object by its id (a number, or digits in a string: as before) or by its unique
    ``name`` (a string), since the list responses show names. An unknown name is a 400 that
    names the field and the value. A string that is the name of one object and the id of
    another is refused as ambiguous (give the id as a number); so is a name shared by several
    objects, should the model ever allow that."""

    default_error_messages = {
        "no_such_name": 'No {what} named "{name}" (give its id or its exact name).',
        "ambiguous_name": '"{name}" is the name of more than one {what}; give the id.',
        "ambiguous_digits": '"{name}" is the name of {what} {named_id} and the id of {what} {other_id}; '
                            "give the id as a number.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str):
            return super().to_internal_value(data)  # ids exactly as before
        queryset = self.get_queryset()
        what = queryset.model._meta.verbose_name
        named = [] if "\x00" in data else list(queryset.filter(name=data)[:2])
        if len(named) > 1:
            self.fail("ambiguous_name", what=what, name=data)
        by_id = queryset.filter(pk=int(data)).first() if data.isascii() and data.isdigit() else None
        if named and by_id is not None and by_id.pk != named[0].pk:
            self.fail("ambiguous_digits", what=what, name=data, named_id=named[0].pk, other_id=by_id.pk)
        if named:
            return named[0]
        if by_id is not None:
            return by_id
        if data.isascii() and data.isdigit():
            self.fail("does_not_exist", pk_value=data)
        self.fail("no_such_name", what=what, name=data[:200])


class StudyOutput(serializers.ModelSerializer):
    checkpoints = serializers.SlugRelatedField(many=True, read_only=True, slug_field="name")
    items = serializers.IntegerField(source="item_count", read_only=True)

    class Meta:
        model = Study
        fields = ["id", "public_id", "name", "kind", "status", "question", "instructions", "rating_scale",
                  "redundancy", "gold_share", "gold_min_accuracy", "gold_min_answers", "lease_seconds",
                  "max_open_leases", "items_per_annotator", "item_order", "completion_code", "crowd_link", "dataset",
                  "checkpoints",
                  "items", "created_at", "opened_at", "closed_at"]


class StudyCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=Study.Kind.choices)
    dataset = NameOrIdField(queryset=Dataset.objects.all())
    checkpoints = NameOrIdField(queryset=Checkpoint.objects.all(), many=True, required=False)
    pairing = serializers.ChoiceField(choices=["matched", "random"], default="matched")
    rating_scale = serializers.ChoiceField(choices=Study.RatingScale.choices, default=Study.RatingScale.BINARY)
    instructions = serializers.CharField(allow_blank=True, default="")
    question = serializers.CharField(allow_blank=True, default="", max_length=300)
    redundancy = serializers.IntegerField(min_value=1, max_value=100, default=3)
    gold_share = serializers.FloatField(min_value=0, max_value=1, default=0.0)
    gold_min_accuracy = serializers.FloatField(min_value=0, max_value=1, default=0.7)
    gold_min_answers = serializers.IntegerField(min_value=1, max_value=1000, default=5)
    lease_seconds = serializers.IntegerField(min_value=10, max_value=24 * 3600, default=600)
    max_open_leases = serializers.IntegerField(min_value=1, max_value=20, default=3,
                                               help_text="items one annotator may hold at once")
    items_per_annotator = serializers.IntegerField(min_value=1, max_value=2**31 - 1, required=False, allow_null=True,
                                                   default=None)  # the column's range on every database
    item_order = serializers.ChoiceField(choices=Study.ItemOrder.choices, default=Study.ItemOrder.CLOSEST_TO_COMPLETION)
    crowd_link = serializers.BooleanField(default=False, help_text="crowd workers join by /s/<public_id>/?PROLIFIC_PID=...")
    seed = serializers.IntegerField(min_value=0, default=0)


class StudyListCreateApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=StudyOutput(many=True))
    def get(self, request):
        return Response(StudyOutput(Study.objects.prefetch_related("checkpoints"), many=True).data)

    @extend_schema(request=StudyCreateInput, responses={201: StudyOutput})
    def post(self, request):
        data = StudyCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        kind, pairing = fields.pop("kind"), fields.pop("pairing")
        checkpoints = fields.pop("checkpoints", [])
        try:
            if kind == Study.Kind.PAIRWISE:
                fields.pop("rating_scale")
                study = studies.study_create_pairwise(checkpoints=checkpoints, pairing=pairing,
                                                      created_by=request.user, **fields)
            else:
                study = studies.study_create_rating(checkpoints=checkpoints or None, created_by=request.user,
                                                    **fields)
        except studies.StudyError as exc:
            return error_response(exc)
        return Response(StudyOutput(study).data, status=status.HTTP_201_CREATED)


class StudyDetailApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=StudyOutput)
    def get(self, request, study_id: int):
        return Response(StudyOutput(get_object_or_404(Study, pk=study_id)).data)


class StudyOpenApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(request=None, responses=StudyOutput)
    def post(self, request, study_id: int):
        try:
            study = studies.study_open(study=get_object_or_404(Study, pk=study_id))
        except studies.StudyError as exc:
            return error_response(exc)
        return Response(StudyOutput(study).data)


class StudyCloseApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(request=None, responses=StudyOutput)
    def post(self, request, study_id: int):
        return Response(StudyOutput(studies.study_close(study=get_object_or_404(Study, pk=study_id))).data)


class StudyMemberOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="annotator.username", read_only=True)
    answered = serializers.IntegerField(source="answered_count", read_only=True)
    skipped = serializers.IntegerField(source="skipped_count", read_only=True)

    class Meta:
        model = StudyMembership
        fields = ["id", "username", "is_paused", "paused_reason", "answered", "skipped", "gold_answered",
                  "gold_correct", "external_worker_id", "joined_at", "completed_at"]


class StudyMembersApi(APIView):
    permission_classes = [IsResearcher]

    class Input(serializers.Serializer):
        """The body of StudyMembersApi (its own component in the schema)."""

        class Meta:
            ref_name = "StudyMembersInput"

        usernames = serializers.ListField(child=serializers.CharField(max_length=150), min_length=1)

    @extend_schema(responses=StudyMemberOutput(many=True))
    def get(self, request, study_id: int):
        """The study's members: who is paused, and why."""
        study = get_object_or_404(Study, pk=study_id)
        return Response(StudyMemberOutput(study.memberships.select_related("annotator").order_by("pk"),
                                          many=True).data)

    @extend_schema(request=Input, responses=inline_serializer("MembersOutput", {"members": serializers.IntegerField()}))
    def post(self, request, study_id: int):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            studies.study_add_members(study=get_object_or_404(Study, pk=study_id), usernames=data.validated_data["usernames"])
        except studies.StudyError as exc:
            return error_response(exc)
        return Response({"members": Study.objects.get(pk=study_id).memberships.count()})


class JudgmentExportOutput(serializers.Serializer):
    id = serializers.IntegerField()
    item = serializers.UUIDField(source="item.public_id")
    prompt = serializers.CharField(source="item.prompt.text")
    image_a = serializers.IntegerField(source="item.image_a_id")
    image_b = serializers.IntegerField(source="item.image_b_id", allow_null=True)
    checkpoint_a = serializers.CharField(source="item.image_a.checkpoint.name", default=None)
    checkpoint_b = serializers.CharField(source="item.image_b.checkpoint.name", default=None)
    annotator = serializers.CharField(source="annotator.username")
    choice = serializers.CharField()
    answer = serializers.SerializerMethodField(help_text="a, b or tie for pairs; aligned / not_aligned for ratings")
    score = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField()
    a_on_left = serializers.BooleanField(allow_null=True)
    time_spent_ms = serializers.IntegerField(allow_null=True)
    is_gold = serializers.BooleanField(source="item.is_gold")
    gold_correct = serializers.BooleanField(allow_null=True)
    is_flagged = serializers.BooleanField()
    created_at = serializers.DateTimeField()

    def get_answer(self, judgment) -> str:
        return annotation.canonical_answer(judgment)


class ExportPagination(CursorPagination):
    ordering = "pk"
    page_size = 1000


class StudyJudgmentsApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=JudgmentExportOutput(many=True))
    def get(self, request, study_id: int):
        study = get_object_or_404(Study, pk=study_id)
        paginator = ExportPagination()
        page = paginator.paginate_queryset(selectors.study_judgments_export(study=study), request, view=self)
        return paginator.get_paginated_response(JudgmentExportOutput(page, many=True).data)


# --- annotators --------------------------------------------------------------------------

_NOT_READ = object()


def _membership(request, public_id) -> StudyMembership:
    membership = getattr(request._request, "calibra_membership", _NOT_READ)  # read with the token
    if membership is _NOT_READ:
        membership = queue_sql.membership_with_study(annotator=request.user, study_public_id=public_id)
    if membership is None:
        raise Http404
    return membership


class SubmissionThrottle(BaseThrottle):
    """Judgments and skips per annotator: ``CALIBRA_SUBMIT_RATE_COUNT`` in each fixed window of
    ``CALIBRA_SUBMIT_RATE_WINDOW_S`` seconds, then 429 with Retry-After (the rest of the window)
    and a JSON body. One cache increment per request; with the cache unavailable, no limit."""

    def allow_request(self, request, view):
        limit, period = settings.CALIBRA_SUBMIT_RATE_COUNT, settings.CALIBRA_SUBMIT_RATE_WINDOW_S
        if not limit:
            return True
        now = time.time()
        count = rate_count(f"submit:{request.user.pk}:{int(now // period)}", period)
        if count is None or count <= limit:
            return True
        self.retry_after = period - now % period
        return False

    def wait(self):
        return self.retry_after


class _FirstRendererNegotiation(DefaultContentNegotiation):
    """The view's one renderer whatever the client accepts, without parsing its Accept header:
    JSON for the annotator's endpoints (on their hot path) and for the errors of a streamed
    export. Bodies are still parsed by their Content-Type (415 for what no parser takes)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class AnnotatorApi(APIView):
    """The annotator's endpoints: JSON in and out, token auth without the ORM (hot path)."""

    authentication_classes = [FastTokenAuthentication, SessionAuthentication]
    parser_classes = [SafeJSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _FirstRendererNegotiation


ItemOutput = inline_serializer("AnnotatorItem", {
    "item": serializers.UUIDField(), "lease": serializers.IntegerField(), "kind": serializers.CharField(),
    "rating_scale": serializers.CharField(),
    "prompt": serializers.CharField(), "question": serializers.CharField(),
    "images": serializers.ListField(child=serializers.DictField()), "expires_at": serializers.DateTimeField(),
    "progress": serializers.DictField(),
})


class AnnotatorStudiesApi(AnnotatorApi):
    @extend_schema(responses=inline_serializer("AnnotatorStudy", {
        "study": serializers.UUIDField(), "name": serializers.CharField(), "kind": serializers.CharField(),
        "progress": serializers.DictField()}, many=True))
    def get(self, request):
        return Response([
            {"study": str(m.study.public_id), "name": m.study.name, "kind": m.study.kind,
             "progress": annotation.progress_of(m)}
            for m in selectors.annotator_open_memberships(annotator=request.user)
        ])


# A lease id is a bigint: anything past it names no lease (and would overflow the query).
LEASE_ID_MAX = 2**63 - 1


class HotInput:
    """Validation of the two hot endpoints' bodies, equal in effect and messages to their
    documented serializers (``Input``; tests/annotate/test_api.py checks both agree) at a
    fraction of the cost: the serializers cost about 0.1 ms a judgment, a few percent of its
    server CPU."""

    MAX_SPENT_MS = 24 * 3600 * 1000

    def __init__(self, data):
        self.data = data if isinstance(data, dict) else {}
        self.errors: dict = {}
        self._whole = not isinstance(data, dict)  # the body itself is wrong: no field errors
        if data is None:
            self.errors["non_field_errors"] = ["No data provided"]
        elif self._whole:
            self.errors["non_field_errors"] = ["Invalid data. Expected a dictionary, but got "
                                               f"{type(data).__name__}."]

    def _error(self, name: str, message: str) -> None:
        if not self._whole:
            self.errors.setdefault(name, []).append(message)

    def uuid_field(self, name: str) -> uuid.UUID | None:
        if name not in self.data:
            return self._error(name, "This field is required.")
        if self.data[name] is None:
            return self._error(name, "This field may not be null.")
        try:
            return self._as_uuid(self.data[name])
        except (ValueError, AttributeError, TypeError):
            return self._error(name, "Must be a valid UUID.")

    @staticmethod
    def _as_uuid(value) -> uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return uuid.UUID(int=value)
        return uuid.UUID(str(value))

    def text(self, name: str, max_length: int, *, required: bool = True, default: str = "") -> str | None:
        if name not in self.data:
            return self._error(name, "This field is required.") if required else default
        value = self.data[name]
        if value is None:
            return self._error(name, "This field may not be null.")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return self._error(name, "Not a valid string.")
        value = str(value).strip()
        if required and value == "":
            return self._error(name, "This field may not be blank.")
        if len(value) > max_length:
            return self._error(name, f"Ensure this field has no more than {max_length} characters.")
        return value

    def integer(self, name: str, *, low: int | None = None, high: int | None = None,
                required: bool = False) -> int | None:
        if required and name not in self.data:
            return self._error(name, "This field is required.")
        value = self.data.get(name)
        if value is None or value == "":
            return self._error(name, "This field may not be null.") if required else None
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value if not isinstance(value, str) else value.strip())
        except (ValueError, TypeError, OverflowError):
            return self._error(name, "A valid integer is required.")
        if low is not None and value < low:
            return self._error(name, f"Ensure this value is greater than or equal to {low}.")
        if high is not None and value > high:
            return self._error(name, f"Ensure this value is less than or equal to {high}.")
        return value

    def uuid_list(self, name: str, max_length: int) -> list:
        value = self.data.get(name, [])
        if self._whole:
            return []
        if not isinstance(value, list):
            self._error(name, f'Expected a list of items but got type "{type(value).__name__}".')
            return []
        if len(value) > max_length:
            self._error(name, f"Ensure this field has no more than {max_length} elements.")
            return []
        out, bad = [], {}
        for index, element in enumerate(value):
            try:
                out.append(self._as_uuid(element))
            except (ValueError, AttributeError, TypeError):
                bad[index] = ["Must be a valid UUID."]
        if bad:
            self.errors[name] = bad
        return out

    def response(self) -> Response | None:
        return Response(self.errors, status=status.HTTP_400_BAD_REQUEST) if self.errors else None


class NextItemApi(AnnotatorApi):
    class Input(serializers.Serializer):
        """The body of NextItemApi (its own component in the schema)."""

        class Meta:
            ref_name = "NextItemInput"

        exclude = serializers.ListField(child=serializers.UUIDField(), required=False, default=list, max_length=50)

    @extend_schema(request=Input, responses={200: ItemOutput, 204: inline_serializer(
        "Done", {"done": serializers.BooleanField(), "completion_code": serializers.CharField(),
                 "reason": serializers.CharField()})})
    def post(self, request, study_id):
        membership = _membership(request, study_id)
        study = membership.study
        data = HotInput(request.data)
        exclude = data.uuid_list("exclude", 50)
        if (invalid := data.response()) is not None:
            return invalid
        try:
            lease = annotation.assignment_next(study=study, annotator=request.user, membership=membership,
                                               exclude=exclude)
        except annotation.AnnotationError as exc:
            return error_response(exc)
        progress = annotation.progress_of(membership)
        if lease is None:
            # The completion code pays a crowd worker: only for work done (their quota of answers,
            # or every item they could answer). Someone who arrives when the others have filled
            # every slot, or who skipped their way to the end of a quota, is told so, without a code.
            quota = study.items_per_annotator
            if progress["answered"] and (quota is None or progress["answered"] >= quota):
                return Response({"done": True, "completion_code": membership.completion_code or study.completion_code,
                                 "reason": "finished", "progress": progress})
            return Response({"done": True, "completion_code": "", "reason": "no_items_left", "progress": progress})
        return Response({**selectors.annotator_item_payload(lease=lease, study=study), "progress": progress})


class SubmitApi(AnnotatorApi):
    throttle_classes = [SubmissionThrottle]

    class Input(serializers.Serializer):
        """The body of SubmitApi (its own component in the schema)."""

        class Meta:
            ref_name = "SubmitInput"

        item = serializers.UUIDField()
        lease = serializers.IntegerField(min_value=1, max_value=LEASE_ID_MAX,
                                         help_text="the lease of the display answered (next/ gives it)")
        client_id = serializers.UUIDField()
        choice = serializers.CharField(max_length=16)
        score = serializers.IntegerField(required=False, allow_null=True, default=None)
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
        time_spent_ms = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=0,
                                                 max_value=24 * 3600 * 1000)

    @staticmethod
    def hot_fields(data: HotInput) -> dict:
        """The body's fields as ``Input`` would validate them (HotInput's errors as its errors)."""
        return {"item": data.uuid_field("item"),
                "lease": data.integer("lease", low=1, high=LEASE_ID_MAX, required=True),
                "client_id": data.uuid_field("client_id"), "choice": data.text("choice", 16),
                "score": data.integer("score"), "reason": data.text("reason", 64, required=False),
                "time_spent_ms": data.integer("time_spent_ms", low=0, high=HotInput.MAX_SPENT_MS)}

    @extend_schema(request=Input, responses={201: inline_serializer("Submitted", {
        "client_id": serializers.UUIDField(), "created": serializers.BooleanField(),
        "progress": serializers.DictField()})})
    def post(self, request, study_id):
        membership = _membership(request, study_id)
        data = HotInput(request.data)
        fields = self.hot_fields(data)
        if (invalid := data.response()) is not None:
            return invalid
        try:
            result = annotation.judgment_submit(study=membership.study, annotator=request.user,
                                                membership=membership, item_public_id=fields.pop("item"),
                                                lease_id=fields.pop("lease"), **fields)
        except annotation.AnnotationError as exc:
            return error_response(exc)
        return Response(
            {"client_id": str(result.client_id), "created": result.created, "progress": result.progress},
            status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        )


class SkipApi(AnnotatorApi):
    throttle_classes = [SubmissionThrottle]

    class Input(serializers.Serializer):
        """The body of SkipApi (its own component in the schema)."""

        class Meta:
            ref_name = "SkipInput"

        item = serializers.UUIDField()
        lease = serializers.IntegerField(min_value=1, max_value=LEASE_ID_MAX,
                                         help_text="the lease of the display skipped (next/ gives it)")
        client_id = serializers.UUIDField()
        reason = serializers.ChoiceField(choices=Skip.Reason.choices)
        note = serializers.CharField(required=False, allow_blank=True, default="", max_length=300)

    @extend_schema(request=Input, responses={201: inline_serializer("Skipped", {
        "client_id": serializers.UUIDField(), "created": serializers.BooleanField(),
        "progress": serializers.DictField()})})
    def post(self, request, study_id):
        study = _membership(request, study_id).study
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            fields = dict(data.validated_data)
            skip, created = annotation.skip_submit(study=study, annotator=request.user,
                                                   item_public_id=fields.pop("item"), lease_id=fields.pop("lease"),
                                                   **fields)
        except annotation.AnnotationError as exc:
            return error_response(exc)
        return Response({"client_id": str(skip.client_id), "created": created,
                         "progress": selectors.annotator_progress(study=study, annotator=request.user)},
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class UndoApi(AnnotatorApi):
    @extend_schema(request=None, responses=ItemOutput)
    def post(self, request, study_id):
        study = _membership(request, study_id).study
        try:
            lease = annotation.judgment_undo(study=study, annotator=request.user)
        except annotation.AnnotationError as exc:
            return error_response(exc)
        return Response({**selectors.annotator_item_payload(lease=lease, study=study),
                         "progress": selectors.annotator_progress(study=study, annotator=request.user)})


class ProgressApi(AnnotatorApi):
    @extend_schema(responses=inline_serializer("Progress", {
        "answered": serializers.IntegerField(), "skipped": serializers.IntegerField(),
        "target": serializers.IntegerField()}))
    def get(self, request, study_id):
        return Response(annotation.progress_of(_membership(request, study_id)))


# --- streaming judgment exports (appended) -------------------------------------------------

from django.http import StreamingHttpResponse  # noqa: E402
from drf_spectacular.types import OpenApiTypes  # noqa: E402

from annotate.services import exports  # noqa: E402


class StudyJudgmentsStreamApi(APIView):
    """The study's judgments as one CSV or JSON Lines file, streamed with constant memory.

    Same columns as the paginated export, in judgment id order; researchers only."""

    permission_classes = [IsResearcher]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _FirstRendererNegotiation

    @extend_schema(
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/x-ndjson"): OpenApiTypes.STR},
        description="CSV (header row) or JSON Lines, one judgment per row, columns as in the paginated "
                    "export: " + ", ".join(exports.COLUMNS),
    )
    def get(self, request, study_id: int, fmt: str):
        study = get_object_or_404(Study, pk=study_id)
        response = StreamingHttpResponse(exports.judgments_export_chunks(study=study, fmt=fmt),
                                         content_type=exports.CONTENT_TYPES[fmt])
        filename = exports.export_filename(study=study, fmt=fmt)
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "no-store"
        return response


# --- reports (researchers) ------------------------------------------------------------------

from django.http import FileResponse  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils.text import slugify  # noqa: E402

from annotate.models import Report  # noqa: E402
from annotate.services import reports  # noqa: E402


class ReportOutput(serializers.ModelSerializer):
    study = serializers.SlugRelatedField(slug_field="public_id", read_only=True)
    download = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = ["id", "study", "format", "status", "params", "error", "created_at", "finished_at", "download"]

    def get_download(self, report) -> str | None:
        if report.status != Report.Status.SUCCEEDED:
            return None
        return reverse("api-report-download", args=[report.pk])


class StudyReportsApi(APIView):
    """A study's reports: ask for one (built by a worker; poll its status), or list them."""

    permission_classes = [IsResearcher]

    class Input(serializers.Serializer):
        """The body of StudyReportsApi (its own component in the schema)."""

        class Meta:
            ref_name = "StudyReportsInput"

        format = serializers.ChoiceField(choices=Report.Format.choices, default=Report.Format.HTML)
        rounds = serializers.IntegerField(min_value=reports.MIN_ROUNDS, max_value=reports.MAX_ROUNDS,
                                          default=reports.DEFAULT_ROUNDS)
        seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, default=reports.DEFAULT_SEED)

    @extend_schema(request=Input, responses={202: ReportOutput})
    def post(self, request, study_id: int):
        study = get_object_or_404(Study, pk=study_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            report = reports.report_request(study=study, fmt=data.validated_data["format"],
                                            rounds=data.validated_data["rounds"], seed=data.validated_data["seed"],
                                            created_by=request.user)
        except reports.ReportError as exc:
            return error_response(exc)
        return Response(ReportOutput(report).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=ReportOutput(many=True))
    def get(self, request, study_id: int):
        study = get_object_or_404(Study, pk=study_id)
        return Response(ReportOutput(study.reports.all()[:50], many=True).data)


class ReportDetailApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=ReportOutput)
    def get(self, request, report_id: int):
        return Response(ReportOutput(get_object_or_404(Report, pk=report_id)).data)


REPORT_CONTENT_TYPES = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8",
                        "json": "application/json"}


class ReportDownloadApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, report_id: int):
        report = get_object_or_404(Report, pk=report_id)
        if report.status != Report.Status.SUCCEEDED or not report.file:
            return Response({"error": "not_ready", "detail": f"the report is {report.status}"},
                            status=status.HTTP_409_CONFLICT)
        name = f"{slugify(report.study.name) or 'study'}-report-{report.pk}.{report.format}"
        return FileResponse(report.file.open("rb"), as_attachment=True, filename=name,
                            content_type=REPORT_CONTENT_TYPES[report.format])


# --- look-ups and study actions (researchers) ------------------------------------------------
# What a script needs to fill the POST bodies above (datasets and reward models by id or
# name), and the dashboard's reopen and pause / resume, through the same services (which
# record the same audit events).

from django.db.models import Q  # noqa: E402

from annotate.models import ContrastivePromptSet, RewardModel  # noqa: E402


class DatasetPromptSetOutput(serializers.Serializer):
    # Plain strings in the schema: an enum here would collide with the other "source" enums.
    source = serializers.CharField(help_text="one of " + ", ".join(ContrastivePromptSet.Source.values))
    version = serializers.CharField()
    prompts = serializers.IntegerField(help_text="prompts of the dataset that have a set of this source and version")


class DatasetOutput(serializers.ModelSerializer):
    prompts = serializers.IntegerField(source="prompt_count", read_only=True)
    images = serializers.IntegerField(source="image_count", read_only=True,
                                      help_text="every image of its prompts, generated or imported")
    images_with_files = serializers.IntegerField(source="image_file_count", read_only=True,
                                                 help_text="those whose pixels are stored (what studies use)")
    prompt_sets = serializers.SerializerMethodField(help_text="TextNorm's contrastive prompt sets, for "
                                                    "a scoring job's prompt_set_source and prompt_set_version")

    class Meta:
        model = Dataset
        fields = ["id", "name", "source", "category", "description", "prompts", "images", "images_with_files",
                  "prompt_sets", "created_at"]

    @extend_schema_field(DatasetPromptSetOutput(many=True))
    def get_prompt_sets(self, dataset) -> list:
        return self.context.get("prompt_sets", {}).get(dataset.pk, [])


class DatasetListApi(APIView):
    """Every dataset, by name, with its counts: the ids (or names) that studies, jobs and uploads take."""

    permission_classes = [IsResearcher]

    @extend_schema(responses=DatasetOutput(many=True))
    def get(self, request):
        return Response(DatasetOutput(selectors.datasets_with_counts(), many=True,
                                      context={"prompt_sets": selectors.prompt_sets_by_dataset()}).data)


class RewardModelOutput(serializers.ModelSerializer):
    # A plain string in the schema: an enum here would collide with the studies' "kind" enum.
    kind = serializers.CharField(read_only=True, help_text="the architecture: one of "
                                 + ", ".join(RewardModel.Kind.values))
    kind_label = serializers.CharField(source="get_kind_display", read_only=True)

    class Meta:
        model = RewardModel
        fields = ["id", "name", "kind", "kind_label", "location", "config", "fingerprint", "created_at"]


class RewardModelListApi(APIView):
    """Every reward model, by name: the ids (or names) that scoring jobs take."""

    permission_classes = [IsResearcher]

    @extend_schema(responses=RewardModelOutput(many=True))
    def get(self, request):
        return Response(RewardModelOutput(RewardModel.objects.order_by("name"), many=True).data)


class StudyReopenApi(APIView):
    """Open a closed study again (as the dashboard's reopen); an open one is left as it is."""

    permission_classes = [IsResearcher]

    @extend_schema(request=None, responses=StudyOutput)
    def post(self, request, study_id: int):
        try:
            study = studies.study_reopen(study=get_object_or_404(Study, pk=study_id))
        except studies.StudyError as exc:
            return error_response(exc)
        return Response(StudyOutput(study).data)


def study_member(study: Study, member: str) -> StudyMembership:
    """A member of ``study`` by membership id or by username; 404 when none. ValueError when the
    text is the id of one membership and the username of another member."""
    if "\x00" in member:  # no username has one (and PostgreSQL refuses it in a query)
        raise Http404("no such member")
    match = Q(annotator__username=member)
    if member.isascii() and member.isdigit() and len(member) <= 18:
        match |= Q(pk=int(member))
    found = list(StudyMembership.objects.filter(match, study=study).select_related("annotator", "study")[:2])
    if not found:
        raise Http404(f"{member!r} is neither a membership id nor the username of a member of this study")
    if len(found) > 1:
        raise ValueError(f"{member!r} is the id of one membership and the username of another member; "
                         "give the membership id of the one you mean")
    return found[0]


class _StudyMemberActionApi(APIView):
    permission_classes = [IsResearcher]

    def _member(self, study_id: int, member: str):
        study = get_object_or_404(Study, pk=study_id)
        try:
            return study_member(study, member), None
        except ValueError as exc:
            return None, Response({"member": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)


class StudyMemberPauseApi(_StudyMemberActionApi):
    """Pause a member (as the dashboard does): no new items or answers in this study, and the
    items they hold go back to the queue now. ``member``: the membership id or the username."""

    class Input(serializers.Serializer):
        """The body of StudyMemberPauseApi (its own component in the schema)."""

        class Meta:
            ref_name = "StudyMemberPauseInput"

        reason = serializers.CharField(required=False, allow_blank=True, default="",
                                       max_length=studies.PAUSED_REASON_MAX)

    @extend_schema(request=Input, responses=StudyMemberOutput)
    def post(self, request, study_id: int, member: str):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        membership, refused = self._member(study_id, member)
        if refused is not None:
            return refused
        try:
            membership = studies.membership_pause(membership=membership, reason=data.validated_data["reason"])
        except studies.StudyError as exc:
            return error_response(exc)
        return Response(StudyMemberOutput(membership).data)


class StudyMemberResumeApi(_StudyMemberActionApi):
    """Let a paused member get items again (as the dashboard does). ``member``: the membership
    id or the username."""

    @extend_schema(request=None, responses=StudyMemberOutput)
    def post(self, request, study_id: int, member: str):
        membership, refused = self._member(study_id, member)
        if refused is not None:
            return refused
        try:
            membership = studies.membership_resume(membership=membership)
        except studies.StudyError as exc:
            return error_response(exc)
        return Response(StudyMemberOutput(membership).data)
