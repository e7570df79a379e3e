from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "annotate"
    verbose_name = "Studies and data"

    def ready(self):
        # The sign-in signals' receivers (audit events, failure counters) are connected here.
        from annotate import ratelimit  # noqa: F401
