# make demo   : install, migrate, seed the demo, start a worker and serve http://127.0.0.1:8000/
# make test   : install and run the whole suite (SQLite and the file-system broker by default;
#               set DATABASE_URL and CELERY_BROKER_URL for PostgreSQL and Redis)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install clean-data

install: $(STAMP)

$(STAMP): requirements/base.txt requirements/ml.txt requirements/test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/test.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo

CHROMIUM ?= $(or $(CHROMIUM_PATH),/usr/bin/chromium)

# The browser tests run in their own pytest process (tests/e2e/conftest.py says why). They need
# Debian's chromium (apt-get install chromium); REQUIRE_E2E=1 (CI) makes its absence an error.
# Each file gets its own process and browser; a hang is ended after 5 minutes (stacks dumped
# after 3), not at CI's limit.
E2E_FILES = $(sort $(wildcard tests/e2e/test_*.py))
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)
	@if [ -x "$(CHROMIUM)" ]; then for f in $(E2E_FILES); do \
	  HF_HUB_OFFLINE=1 timeout -k 30 -s INT 300 $(PY) -m pytest $$f -p no:cacheprovider -o faulthandler_timeout=180 || exit 1; \
	done; \
	elif [ -n "$(REQUIRE_E2E)" ]; then echo "no chromium at $(CHROMIUM): apt-get install chromium"; exit 1; \
	else echo "browser tests not run: no chromium at $(CHROMIUM) (apt-get install chromium)"; fi

clean-data:
	rm -rf data
