import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
TIA2 = Path(os.environ.get("TIA2_PATH", SHARED / "tia2"))

_skipped: list[str] = []


def pytest_collection_modifyitems(config, items):
    from django.conf import settings

    on_postgres = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    on_redis = settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
    for item in items:
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(pytest.mark.skip(reason="needs DATABASE_URL=postgres://..."))
        if "redis" in item.keywords and not on_redis:
            item.add_marker(pytest.mark.skip(reason="needs CELERY_BROKER_URL=redis://..."))


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    # CI sets FAIL_ON_SKIP: a test that CI must run (PostgreSQL, Redis, browser) may not skip.
    if os.environ.get("FAIL_ON_SKIP") == "1" and _skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("FAIL_ON_SKIP") == "1" and _skipped:
        terminalreporter.write_line(
            f"FAIL_ON_SKIP=1: {len(_skipped)} test(s) skipped, which counts as a failure here:", red=True
        )
        for nodeid in _skipped:
            terminalreporter.write_line(f"  {nodeid}", red=True)


@pytest.fixture(autouse=True)
def fresh_caches():
    """Counters (rate limits) and cached pages from one test never reach the next: user ids
    are reused from test to test."""
    from django.core.cache import caches

    for alias in ("default", "ratelimit"):
        caches[alias].clear()
    yield


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Every test writes media into its own temporary folder."""
    media = tmp_path / "media"
    media.mkdir()
    settings.MEDIA_ROOT = str(media)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(media), "base_url": "/media/"}},
    }
    return media


@pytest.fixture
def tia2_root() -> Path:
    if not (TIA2 / "human_annotations").is_dir():
        pytest.fail(f"TIA2 files not found at {TIA2} (set TIA2_PATH)")
    return TIA2


@pytest.fixture
def researcher(db):
    from annotate.roles import RESEARCHERS
    from annotate.services.accounts import user_create_with_role

    return user_create_with_role(username="res", password="res-pass-123", role=RESEARCHERS)


@pytest.fixture
def annotator(db):
    from annotate.roles import ANNOTATORS
    from annotate.services.accounts import user_create_with_role

    return user_create_with_role(username="ann", password="ann-pass-123", role=ANNOTATORS)


@pytest.fixture
def small_tia2(tmp_path, tia2_root) -> Path:
    """A TIA2 release of two prompts per category, cut from the official files."""
    import json

    root = tmp_path / "tia2"
    (root / "human_annotations").mkdir(parents=True)
    (root / "prompts").mkdir()
    for category in ("counting", "composition"):
        labels = json.loads((tia2_root / f"human_annotations/human_labels_{category}.json").read_text())
        keep = {k: v for k, v in labels.items() if k.split("_")[1] in ("0", "1")}
        (root / f"human_annotations/human_labels_{category}.json").write_text(json.dumps(keep))
        captions = {v["caption"] for v in keep.values()}
        sets = json.loads((tia2_root / f"prompts/prompt_set_{category}.json").read_text())
        (root / f"prompts/prompt_set_{category}.json").write_text(
            json.dumps({p: s for p, s in sets.items() if p in captions})
        )
    return root
