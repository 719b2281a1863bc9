# FlashSend: `make run` to start it, `make test` to test it. Needs python3 (3.11+) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run demo test bench lint typecheck pytest setup migrate clean

help:
	@echo "make run    install, migrate and start API + worker + scheduler on http://127.0.0.1:8000"
	@echo "make test   install and run the whole suite (pytest, ruff, mypy)"
	@echo "make demo   like run, with local fake Twilio, Vonage and SMTP servers as providers"
	@echo "make bench  benchmarks on the local PostgreSQL and RabbitMQ (MODE=full for long runs)"

$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "FlashSend needs Python 3.11 or newer; found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@# --inexact keeps pip and uv themselves in the virtualenv.
	@VIRTUAL_ENV=$(VENV) $(BIN)/uv sync --frozen --inexact --active --quiet --compile-bytecode
	@touch $@

setup: $(STAMP)
	@$(BIN)/python manage.py migrate --noinput
	@$(BIN)/python manage.py flashsend_setup

run: setup
	@$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@echo "FlashSend: API on http://127.0.0.1:8000 (docs /api/docs/, admin /admin/). Ctrl-C stops all."
	@$(BIN)/honcho --no-colour -f Procfile start

demo: setup
	@$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@echo "FlashSend demo: providers are local fakes (Twilio :8025, Vonage :8026, SMTP :1025)."
	@$(BIN)/honcho --no-colour -f Procfile.demo -e deploy/demo.env start

bench: $(STAMP)
	@bash scripts/services.sh
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	$(BIN)/python -m bench.run --mode $(or $(MODE),quick)

pytest: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

test: $(STAMP)
	@$(MAKE) --no-print-directory lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
