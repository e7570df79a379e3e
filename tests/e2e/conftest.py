"""Browser tests in headless Chromium (pytest-playwright + pytest-django's live_server).

They run in their own pytest invocation, ``pytest tests/e2e``: the Playwright sync API runs an
event loop in the test thread, so database access from the test needs
DJANGO_ALLOW_ASYNC_UNSAFE, which switches Django's check off for the whole process. A plain
``pytest`` (testpaths = tests) therefore does not collect this folder at all; it is collected
only when a path inside it is named on the command line.
"""
import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRATCH = HERE.parents[1] / ".e2e"  # git-ignored: Chromium's profile, cache and temporary files
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


def _e2e_requested(config) -> bool:
    for arg in config.args:
        path = (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path).resolve()
    if (path == HERE or HERE in path.parents) and not _e2e_requested(config):
        return True
    return None


@pytest.fixture(scope="session", autouse=True)
def _e2e_process_env():
    """Set before Playwright starts (autouse session fixtures come first) and before any database
    access from the test thread; put back afterwards."""
    scratch = {name: SCRATCH / sub for name, sub in
               (("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"), ("TMPDIR", "tmp"))}
    wanted = {"DJANGO_ALLOW_ASYNC_UNSAFE": "true", **{k: str(v) for k, v in scratch.items()}}
    for folder in scratch.values():
        folder.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args, _e2e_process_env):
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-quic"]}


@pytest.fixture(scope="session")
def base_url(live_server) -> str:
    """Pages and page.request resolve relative URLs against the live server. (Overriding the
    fixture also keeps pytest-playwright's fallback one, deprecated under pytest 9, unused.)"""
    return live_server.url
