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

$(STAMP): requirements/base.txt requirements/test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/test.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

clean-data:
	rm -rf data
