# The two quick-start commands: `make demo` and `make test`.
# `make venv` creates .venv with the runtime requirements (requirements.txt) and this project installed editable
# (pyproject.toml: `python scripts/X.py` then imports helper/, dataset/, ... of this checkout) when it is missing or
# stale; `make venv-dev` adds the test/lint tools (requirements-dev.txt, which includes requirements.txt).
# Each level has a stamp holding the sha256 of the files it installed, so a second call installs nothing:
#   .venv/.requirements.sha256      requirements.txt + pyproject.toml         (make demo, make bench)
#   .venv/.requirements-dev.sha256  requirements.txt + requirements-dev.txt   (make test, make lint)
PYTHON ?= python3
# test processes of `make test` (pytest-xdist); the suite takes about 4.5 minutes on two idle cores with 2
TEST_WORKERS ?= 2
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.sha256
DEV_STAMP := $(VENV)/.requirements-dev.sha256
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: venv venv-dev test test-slow demo lint bench clean-venv

# setuptools >= 71 builds the editable install without the separate `wheel` package (a fresh venv of Python 3.11
# brings setuptools 65, 3.12+ none)
venv:
	@want=$$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1); \
	have=$$(cat $(STAMP) 2>/dev/null); \
	if [ -x "$(PY)" ] && [ "$$want" = "$$have" ]; then \
		echo "venv: $(VENV) is up to date with requirements.txt and pyproject.toml"; \
	else \
		echo "venv: installing requirements.txt and this project (editable) into $(VENV) (first time takes a few minutes)"; \
		{ [ -x "$(PY)" ] || $(PYTHON) -m venv $(VENV); } && \
		$(PIP_INSTALL) -r requirements.txt && \
		$(PIP_INSTALL) "setuptools>=71" && \
		$(PIP_INSTALL) --no-deps --no-build-isolation -e . && \
		echo "$$want" > $(STAMP) || { echo "venv: installing requirements.txt or this project failed" >&2; exit 1; }; \
	fi

venv-dev: venv
	@want=$$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1); \
	have=$$(cat $(DEV_STAMP) 2>/dev/null); \
	if [ "$$want" = "$$have" ]; then \
		echo "venv: $(VENV) is up to date with requirements-dev.txt"; \
	else \
		echo "venv: installing requirements-dev.txt (pytest, ruff) into $(VENV)"; \
		$(PIP_INSTALL) -r requirements-dev.txt && \
		echo "$$want" > $(DEV_STAMP) || { echo "venv: installing requirements-dev.txt failed" >&2; exit 1; }; \
	fi

test: venv-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS)

test-slow: venv-dev
	$(PY) -m pytest -q -m slow

lint: venv-dev
	$(VENV)/bin/ruff check .

demo: venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) benchmarks/bench.py --model_s resnet32 --model_t resnet110 --relational ckd --device cpu

clean-venv:
	rm -rf $(VENV)
