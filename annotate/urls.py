from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.settings import api_settings

from annotate import apis, apis_jobs, apis_uploads, views, views_create, views_models, views_study

api = [
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # The API's parsers (DRF's view names its own): deep or NUL-laden JSON is a 400 here too.
    path("api/token/", ObtainAuthToken.as_view(parser_classes=api_settings.DEFAULT_PARSER_CLASSES),
         name="api-token"),
    path("api/studies/", apis.StudyListCreateApi.as_view(), name="api-studies"),
    path("api/studies/<int:study_id>/", apis.StudyDetailApi.as_view(), name="api-study"),
    path("api/studies/<int:study_id>/open/", apis.StudyOpenApi.as_view(), name="api-study-open"),
    path("api/studies/<int:study_id>/close/", apis.StudyCloseApi.as_view(), name="api-study-close"),
    path("api/studies/<int:study_id>/reopen/", apis.StudyReopenApi.as_view(), name="api-study-reopen"),
    path("api/studies/<int:study_id>/members/", apis.StudyMembersApi.as_view(), name="api-study-members"),
    # <member>: the membership id or the annotator's username
    path("api/studies/<int:study_id>/members/<str:member>/pause/", apis.StudyMemberPauseApi.as_view(),
         name="api-study-member-pause"),
    path("api/studies/<int:study_id>/members/<str:member>/resume/", apis.StudyMemberResumeApi.as_view(),
         name="api-study-member-resume"),
    path("api/studies/<int:study_id>/reports/", apis.StudyReportsApi.as_view(), name="api-study-reports"),
    path("api/reports/<int:report_id>/", apis.ReportDetailApi.as_view(), name="api-report"),
    path("api/reports/<int:report_id>/download", apis.ReportDownloadApi.as_view(), name="api-report-download"),
    path("api/studies/<int:study_id>/judgments/", apis.StudyJudgmentsApi.as_view(), name="api-study-judgments"),
    path("api/studies/<int:study_id>/judgments.csv", apis.StudyJudgmentsStreamApi.as_view(), {"fmt": "csv"},
         name="api-study-judgments-csv"),
    path("api/studies/<int:study_id>/judgments.jsonl", apis.StudyJudgmentsStreamApi.as_view(), {"fmt": "jsonl"},
         name="api-study-judgments-jsonl"),
    path("api/checkpoints/", apis_jobs.CheckpointListCreateApi.as_view(), name="api-checkpoints"),
    path("api/generation-jobs/", apis_jobs.GenerationJobListCreateApi.as_view(), name="api-generation-jobs"),
    path("api/scoring-jobs/", apis_jobs.ScoringJobListCreateApi.as_view(), name="api-scoring-jobs"),
    *[route for kind in ("generation", "scoring") for route in (
        path(f"api/{kind}-jobs/<int:job_id>/", apis_jobs.JobDetailApi.as_view(), {"kind": kind},
             name=f"api-{kind}-job"),
        *[path(f"api/{kind}-jobs/<int:job_id>/{action}/", apis_jobs.JobActionApi.as_view(),
               {"kind": kind, "action": action}, name=f"api-{kind}-job-{action}") for action in ("retry", "cancel")],
    )],
    path("api/datasets/", apis.DatasetListApi.as_view(), name="api-datasets"),
    path("api/reward-models/", apis.RewardModelListApi.as_view(), name="api-reward-models"),
    path("api/datasets/<int:dataset_id>/images/", apis_uploads.DatasetImageUploadApi.as_view(),
         name="api-dataset-images"),
    path("api/datasets/<int:dataset_id>/prompts.csv", apis_uploads.DatasetPromptsCsvApi.as_view(),
         name="api-dataset-prompts-csv"),
]

# The annotator's endpoints come first: a URL is resolved by trying the patterns in order, and
# these take nearly every request (next + submit per judgment).
annotator_api = [
    path("api/annotate/", apis.AnnotatorStudiesApi.as_view(), name="api-annotator-studies"),
    path("api/annotate/<uuid:study_id>/next/", apis.NextItemApi.as_view(), name="api-next"),
    path("api/annotate/<uuid:study_id>/submit/", apis.SubmitApi.as_view(), name="api-submit"),
    path("api/annotate/<uuid:study_id>/skip/", apis.SkipApi.as_view(), name="api-skip"),
    path("api/annotate/<uuid:study_id>/undo/", apis.UndoApi.as_view(), name="api-undo"),
    path("api/annotate/<uuid:study_id>/progress/", apis.ProgressApi.as_view(), name="api-progress"),
]

urlpatterns = [
    *annotator_api,
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("datasets/<int:dataset_id>/", views.dataset_detail, name="dataset-detail"),
    path("studies/<int:study_id>/reports/", views.study_report_request, name="study-report-request"),
    path("annotate/<uuid:study_id>/", views.annotate_study, name="annotate-study"),
    path("annotate/<uuid:study_id>/items/<uuid:item_id>/<str:slot>.jpg", views.annotate_image,
         name="annotate-image"),
    path("s/<uuid:study_id>/", views.crowd_start, name="crowd-start"),
    *views_study.urlpatterns,  # researchers: a study's page and its actions
    *views_models.urlpatterns,  # researchers: jobs, checkpoint galleries, reward models against humans
    *views_create.urlpatterns,  # researchers: new studies
    *api,
]
