"""What the commands share: finding the row an option names, and naming a service's error
by the command's flags. Both end in a CommandError that names the flag and its value."""
import re

from django.core.management.base import CommandError


def row_named(model, flag: str, value, what: str, **lookup):
    """The row ``flag`` names (None when the option is not given), or a CommandError naming
    the flag and its value."""
    if value is None or value == "":
        return None
    try:
        return model.objects.get(**lookup)
    except model.DoesNotExist:
        raise CommandError(f"{flag} {value!r}: no such {what}") from None


def by_flags(message: str, renamed: dict[str, str] | None = None) -> str:
    """``message`` with its leading "parameter[, parameter or parameter]:" (a service's names
    for its fields) named by the command's flags: ``--`` and dashes, or ``renamed``."""
    renamed = renamed or {}
    head, sep, rest = message.partition(":")
    if not sep or not re.fullmatch(r"[a-z_.]+((, | or )[a-z_.]+)*", head):
        return message
    parts = re.split(r"(, | or )", head)
    parts[::2] = [renamed.get(p, "--" + p.replace("_", "-")) for p in parts[::2]]
    return "".join(parts) + sep + rest
