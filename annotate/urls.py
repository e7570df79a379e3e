from django.urls import path

from annotate import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("datasets/<int:dataset_id>/", views.dataset_detail, name="dataset-detail"),
]
