from pathlib import Path

from django.conf import settings


class PathNotAllowed(ValueError):
    pass


def input_path_check(path: Path, *, what: str) -> Path:
    """``path`` resolved, or PathNotAllowed when it lies outside CALIBRA_ALLOWED_INPUT_ROOTS.

    An empty setting (the embedded mode) allows any path; production sets the roots that
    hold checkpoints, reward models and datasets.
    """
    resolved = Path(path).resolve()
    roots = [Path(r).resolve() for r in settings.CALIBRA_ALLOWED_INPUT_ROOTS]
    if roots and not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PathNotAllowed(f"{what} {path} is outside the allowed input roots ({allowed})")
    return resolved
