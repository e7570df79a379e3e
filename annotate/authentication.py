"""Token authentication in one SQL statement, for the annotation hot paths.

Same semantics as DRF's TokenAuthentication (``Authorization: Token <key>``, inactive users
refused); it only skips the ORM's query building, which cost more than the query. On a view
whose URL names a study (``study_id``), the same statement also reads the user's membership
of that study, which the view would otherwise fetch next: one round trip instead of two.
"""
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.authtoken.models import Token

from annotate.services import queue_sql
from annotate.services.queue_sql import from_db

_USER_FIELDS = ["id", "username", "is_active", "is_staff", "is_superuser"]


class FastTokenAuthentication(TokenAuthentication):
    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header.")
        try:
            key = parts[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid token header.") from None
        user_model = get_user_model()
        columns = ", ".join(f"u.{name}" for name in _USER_FIELDS)
        study_id = (getattr(request, "parser_context", None) or {}).get("kwargs", {}).get("study_id")
        study_key = None
        if study_id is not None:
            study_key = queue_sql.uuid_or_none(study_id)
            if study_key is None:  # not a UUID: the view answers 404
                study_id = None
        with connection.cursor() as cursor:
            if study_id is None:
                cursor.execute(f"SELECT {columns} FROM {Token._meta.db_table} t"
                               f" JOIN {user_model._meta.db_table} u ON u.id = t.user_id WHERE t.key = %s", [key])
            else:
                cursor.execute(
                    f"SELECT {columns}, {queue_sql.MEMBERSHIP_COLUMNS} FROM {Token._meta.db_table} t"
                    f" JOIN {user_model._meta.db_table} u ON u.id = t.user_id"
                    f" LEFT JOIN ({queue_sql.MEMBERSHIP_JOIN}) ON s.public_id = %s AND m.annotator_id = u.id"
                    f" WHERE t.key = %s", [study_key, key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        n = len(_USER_FIELDS)
        user = from_db(user_model, {"id": row[0], "username": row[1], "is_active": bool(row[2]),
                                    "is_staff": bool(row[3]), "is_superuser": bool(row[4])})
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        if study_id is not None:
            # Read by the view instead of a query of its own (None: not a member).
            request._request.calibra_membership = queue_sql.membership_from_row(row[n:], user)
        return user, key
