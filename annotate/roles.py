"""The two roles. A researcher runs studies and sees results; an annotator only judges."""
RESEARCHERS = "researchers"
ANNOTATORS = "annotators"


def is_researcher(user) -> bool:
    return bool(
        user.is_authenticated
        and (user.is_superuser or user.groups.filter(name=RESEARCHERS).exists())
    )
