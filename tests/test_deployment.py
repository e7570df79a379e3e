"""docker-compose.yml (no Docker engine runs here: the file is parsed and checked) and the
production settings."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_services():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "web", "worker-gpu", "worker-cpu", "flower"}


def test_python_services_share_one_image_and_one_environment():
    services = compose()["services"]
    python = [services[n] for n in ("web", "worker-gpu", "worker-cpu", "flower")]
    assert {s["image"] for s in python} == {"calibra:latest"}
    assert all(s["build"] == "." for s in python)
    envs = [s["environment"] for s in python]
    assert all(e == envs[0] for e in envs)
    env = envs[0]
    assert env["DJANGO_SETTINGS_MODULE"] == "webapp.settings.production"
    assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert "?" in env["SECRET_KEY"]  # compose refuses to start without it
    for s in python:
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "media:/data/media" in s["volumes"]


def test_service_commands():
    services = compose()["services"]
    assert "gunicorn webapp.wsgi:application" in services["web"]["command"]
    assert "migrate" in services["web"]["command"]
    gpu, cpu = services["worker-gpu"]["command"], services["worker-cpu"]["command"]
    assert gpu[:4] == ["celery", "-A", "webapp", "worker"] and gpu[gpu.index("--queues") + 1] == "gpu"
    assert cpu[:4] == ["celery", "-A", "webapp", "worker"] and cpu[cpu.index("--queues") + 1] == "cpu"
    assert services["flower"]["command"][:4] == ["celery", "-A", "webapp", "flower"]


def test_gpu_worker_reserves_an_nvidia_device():
    devices = compose()["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in compose()["services"]["worker-cpu"]


def test_celery_routes_generation_and_scoring_to_the_gpu_queue():
    from webapp.celery import app

    router = app.amqp.router
    assert router.route({}, "workers.tasks.generation_job_run")["queue"].name == "gpu"
    assert router.route({}, "workers.tasks.scoring_job_run")["queue"].name == "gpu"
    assert router.route({}, "workers.tasks.report_build")["queue"].name == "cpu"
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert app.conf.task_acks_late is True


def load_settings(module: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "MEDIA_STORAGE")}
    code = (
        "import django, json; from django.conf import settings; django.setup(); "
        "print(json.dumps({'debug': settings.DEBUG, 'storage': settings.STORAGES['default']['BACKEND'], "
        "'static': settings.STORAGES['staticfiles']['BACKEND'], 'db': settings.DATABASES['default']['ENGINE'], "
        "'broker': settings.CELERY_BROKER_URL}))"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, "DJANGO_SETTINGS_MODULE": module, **env})


def test_production_requires_a_secret_key_and_keeps_debug_off():
    missing = load_settings("webapp.settings.production")
    assert missing.returncode != 0 and "SECRET_KEY" in missing.stderr
    ok = load_settings("webapp.settings.production", SECRET_KEY="x" * 50)
    assert ok.returncode == 0, ok.stderr
    assert '"debug": false' in ok.stdout and "CompressedManifestStaticFilesStorage" in ok.stdout


def test_environment_selects_database_broker_and_object_storage(tmp_path):
    default = load_settings("webapp.settings.local", CALIBRA_DATA_DIR=str(tmp_path), DATABASE_URL="",
                            CELERY_BROKER_URL="")
    assert default.returncode == 0, default.stderr
    assert "sqlite3" in default.stdout and "filesystem://" in default.stdout
    assert "FileSystemStorage" in default.stdout
    prod = load_settings(
        "webapp.settings.production", SECRET_KEY="x" * 50, MEDIA_STORAGE="s3", AWS_STORAGE_BUCKET_NAME="images",
        DATABASE_URL="postgres://u:p@db:5432/calibra", CELERY_BROKER_URL="redis://redis:6379/0",
    )
    assert prod.returncode == 0, prod.stderr
    assert "S3Storage" in prod.stdout and "postgresql" in prod.stdout and "redis://redis" in prod.stdout
    bad = load_settings("webapp.settings.local", MEDIA_STORAGE="ftp")
    assert bad.returncode != 0 and "MEDIA_STORAGE" in bad.stderr
