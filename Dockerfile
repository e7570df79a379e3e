# Two images from one file: "web" (the default target: web app, CPU worker, flower) and "gpu"
# (the same app with the ML stack and a C compiler, for the GPU worker). Each compose service
# sets its own command.
FROM python:3.11-slim-bookworm AS app-deps
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=webapp.settings.production
WORKDIR /app
COPY requirements/ requirements/
RUN pip install -r requirements/production.txt
# /data/media exists in the image, owned by the app's user: a new named volume mounted there
# takes that owner, so the app can write images and reports to it.
RUN useradd --create-home --uid 1000 calibra && mkdir -p /data/media && chown -R calibra:calibra /data

# torch from PyPI is the CUDA build on Linux x86_64 (its CUDA libraries come as wheels; the
# host needs only the NVIDIA driver and the NVIDIA Container Toolkit). torch.compile and
# Triton need a C compiler.
FROM app-deps AS gpu-deps
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
RUN pip install -r requirements/ml.txt

FROM gpu-deps AS gpu
COPY . .
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput
USER calibra
CMD ["celery", "-A", "webapp", "worker", "--queues", "gpu", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO"]

FROM app-deps AS web
COPY . .
# collectstatic needs a key to import the settings; this one is never used to sign anything.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput
USER calibra
EXPOSE 8000
CMD ["gunicorn", "webapp.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "4"]
