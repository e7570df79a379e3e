from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from annotate.roles import ANNOTATORS, RESEARCHERS


@transaction.atomic
def user_create_with_role(*, username: str, password: str, role: str):
    """Create (or reset the password of) a researcher or an annotator account."""
    if role not in (RESEARCHERS, ANNOTATORS):
        raise ValueError(f"role must be {RESEARCHERS!r} or {ANNOTATORS!r}")
    user, created = get_user_model().objects.get_or_create(username=username)
    if created or not user.check_password(password):
        user.set_password(password)  # unchanged otherwise, so that open sessions stay valid
    # Researchers manage everything in the admin; annotators never reach it.
    user.is_staff = role == RESEARCHERS
    user.save()
    group, _ = Group.objects.get_or_create(name=role)
    user.groups.add(group)
    return user
