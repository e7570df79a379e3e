#!/usr/bin/env bash
# The workers' GPU benchmarks on a lent GPU machine, in two halves.
#
#   bash scripts/gpu_check.sh fetch            here, where the package registries answer: the
#                                              wheels the GPU machine lacks, into .whl/ (21 MB)
#   bash scripts/gpu_check.sh run [scoring|workers]
#                                              there (it has Python 3.12, torch and transformers,
#                                              no Django or diffusers, no network): installs .whl/
#                                              into /tmp/site and prints the benchmark's JSON line
#
# With the device tool: run(command="bash scripts/gpu_check.sh run scoring", carry=[".whl"]).
# "scoring" (about 2 minutes) is scripts/bench_scoring_section.py; "workers" (about 4) is
# scripts/bench_workers.py, generation and scoring.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(amqp asgiref billiard celery click-didyoumean click-plugins click-repl diffusers==0.42.1 Django==5.2.19
        django-environ djangorestframework drf-spectacular drf-spectacular-sidecar importlib_metadata inflection
        jsonschema jsonschema-specifications kombu prompt_toolkit referencing rpds-py sqlparse tzlocal uritemplate
        vine wcwidth whitenoise)

case "${1:-}" in
  fetch)
    grep -qx ".whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo ".whl/" >> .git/info/exclude; }
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls .whl | wc -l
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    echo "cpus: $(nproc)"
    case "${2:-scoring}" in
      scoring) python3 scripts/bench_scoring_section.py --device cuda ;;
      workers) python3 scripts/bench_workers.py --device cuda ;;
      *) echo "run what? scoring or workers" >&2; exit 2 ;;
    esac
    ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
