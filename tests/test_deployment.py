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


def test_python_services_share_one_environment_and_two_images():
    services = compose()["services"]
    python = [services[n] for n in ("web", "worker-gpu", "worker-cpu", "flower")]
    assert {n: (services[n]["image"], services[n]["build"]["target"]) for n in ("web", "worker-gpu", "flower")} == {
        "web": ("calibra:latest", "web"), "worker-gpu": ("calibra-gpu:latest", "gpu"),
        "flower": ("calibra:latest", "web")}
    envs = [s["environment"] for s in python]
    assert all(e == envs[0] for e in envs)
    env = envs[0]
    assert env["DJANGO_SETTINGS_MODULE"] == "webapp.settings.production"
    # The bundled services unless .env names others (a GPU worker on another machine).
    assert env["DATABASE_URL"] == "${DATABASE_URL:-postgres://calibra:${POSTGRES_PASSWORD}@postgres:5432/calibra}"
    assert env["CELERY_BROKER_URL"] == "${CELERY_BROKER_URL:-redis://redis:6379/0}"
    assert "?" in env["SECRET_KEY"]  # compose refuses to start without it
    assert "?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    for name in ("AWS_S3_REGION_NAME", "AWS_S3_ENDPOINT_URL", "FLOWER_BASIC_AUTH"):
        assert env[name] == f"${{{name}:-}}"
    for s in python:
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "media:/data/media" in s["volumes"]


def test_service_commands():
    services = compose()["services"]
    web = services["web"]["command"]
    assert "exec gunicorn webapp.wsgi:application" in web  # gunicorn gets the stop signal, not sh
    assert web.index("migrate") < web.index("gunicorn")
    gpu, cpu = services["worker-gpu"]["command"], services["worker-cpu"]["command"]
    assert gpu[:4] == ["celery", "-A", "webapp", "worker"] and gpu[gpu.index("--queues") + 1] == "gpu"
    assert cpu[:4] == ["celery", "-A", "webapp", "worker"] and cpu[cpu.index("--queues") + 1] == "cpu"
    assert "-E" in gpu and "-E" in cpu  # task events, for flower
    assert services["flower"]["command"][:4] == ["celery", "-A", "webapp", "flower"]
    assert services["worker-gpu"]["stop_grace_period"] == "15m" and services["worker-cpu"]["stop_grace_period"] == "2m"


def test_only_loopback_ports_are_published_and_the_web_service_checks_its_health():
    services = compose()["services"]
    assert services["web"]["ports"] == ["${WEB_BIND:-127.0.0.1}:8000:8000"]  # the proxy is the way in
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert all("ports" not in services[n] for n in ("postgres", "redis", "worker-gpu", "worker-cpu"))
    check = " ".join(services["web"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in check


def _default(value: str) -> str:
    """The default of a ${NAME:-default} value, with nested ${NAME:-default}s resolved."""
    import re

    while (inner := re.search(r"\$\{[A-Z_]+:-([^${}]*)\}", value)) is not None:
        value = value[:inner.start()] + inner.group(1) + value[inner.end():]
    return value


def test_only_the_compose_networks_gateway_and_loopback_are_trusted_proxies():
    """Whole private ranges once stood here: a client on the LAN, whose address the host's
    proxy appends, was then skipped for whatever address it had written itself."""
    import ipaddress

    listed = _default(compose()["x-app"]["environment"]["TRUSTED_PROXIES"])
    trusted = [ipaddress.ip_network(address) for address in listed.split(",")]
    network = compose()["networks"]["default"]["ipam"]["config"][0]
    gateway, subnet = ipaddress.ip_address(_default(network["gateway"])), ipaddress.ip_network(_default(network["subnet"]))
    assert all(net.num_addresses == 1 for net in trusted)
    assert gateway in subnet and ipaddress.ip_network(gateway) in trusted


def test_gpu_worker_reserves_an_nvidia_device():
    devices = compose()["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["${GPU_DEVICE:-0}"], "capabilities": ["gpu"]}]
    assert "deploy" not in compose()["services"]["worker-cpu"]


def dockerfile_stages() -> dict[str, list[str]]:
    stages, current = {}, None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            current = line.split(" AS ")[1].strip()
            stages[current] = [line]
        elif current and line.strip() and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_the_dockerfile_builds_a_web_image_by_default_and_a_gpu_image_with_the_ml_stack():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "web"  # `docker build .` makes the web image
    deps = "\n".join(stages["app-deps"])
    assert "pip install -r requirements/production.txt" in deps
    assert "mkdir -p /data/media && chown -R calibra:calibra /data" in deps  # a new media volume is writable
    gpu_deps = "\n".join(stages["gpu-deps"])
    assert stages["gpu-deps"][0] == "FROM app-deps AS gpu-deps"
    assert "pip install -r requirements/ml.txt" in gpu_deps and "gcc" in gpu_deps
    for name in ("gpu", "web"):
        assert any(line.startswith("USER calibra") for line in stages[name])
        assert any("collectstatic" in line for line in stages[name])
    # What the web image imports (the report statistics: workers.stats) is in its requirements.
    base = (ROOT / "requirements" / "base.txt").read_text().split()
    assert any(line.startswith("scipy==") for line in base) and any(line.startswith("numpy==") for line in base)
    assert (ROOT / "requirements" / "production.txt").read_text().startswith("-r base.txt")


def test_secrets_models_and_datasets_stay_out_of_the_image_and_the_repository():
    docker = (ROOT / ".dockerignore").read_text().split()
    git = (ROOT / ".gitignore").read_text().split()
    for name in (".env", "models", "datasets"):
        assert name in docker or f"{name}/" in docker, name
        assert name in git or f"/{name}/" in git or f"{name}/" in git, name


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
