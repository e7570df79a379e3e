"""The audit log (read-only), and the auth app's users and groups through the audit hooks."""
from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters

from annotate import models
from annotate.admin.base import (
    AuditedAdmin,
    ReadOnlyAdmin,
)
from annotate.roles import RESEARCHERS

# ---------------------------------------------------------------- the audit log

class AuditActorFilter(admin.SimpleListFilter):
    """By researcher (and superuser): annotators' sign-ins are in the log too, but listing every
    crowd worker here would make the filter useless; search finds them by name."""

    title = "actor"
    parameter_name = "actor"

    def lookups(self, request, model_admin):
        from django.contrib.auth import get_user_model
        from django.db.models import Q

        users = (get_user_model().objects.filter(Q(is_superuser=True) | Q(groups__name=RESEARCHERS))
                 .distinct().order_by("username"))
        return [(str(u.pk), u.get_username()) for u in users]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            actor_id = int(self.value())
        except ValueError:  # the changelist answers with its "?e=1" page, not a 500
            raise IncorrectLookupParameters(f"actor={self.value()!r} is not a user id") from None
        return queryset.filter(actor_id=actor_id)


@admin.register(models.AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor_name", "action", "target_type", "target_id", "target_repr", "ip"]
    list_filter = ["action", AuditActorFilter, "target_type", "created_at"]
    search_fields = ["actor_name", "action", "target_repr", "=target_id", "=ip"]
    list_select_related = False
    ordering = ["-created_at", "-id"]
    fields = ["created_at", "actor", "actor_name", "action", "target_type", "target_id", "target_repr",
              "details", "ip"]

    def get_readonly_fields(self, request, obj=None):
        return self.fields


def audit_auth_admins() -> None:
    """The auth app's users and groups (who is a researcher) through the audit hooks as well."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    for model in (get_user_model(), Group):
        if not admin.site.is_registered(model):
            continue
        base = type(admin.site.get_model_admin(model))
        if issubclass(base, AuditedAdmin):
            continue
        admin.site.unregister(model)
        admin.site.register(model, type(base.__name__, (AuditedAdmin, base), {"__module__": __name__}))



