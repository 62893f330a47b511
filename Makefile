# The two quick-start commands: `make demo` and `make test`.
# Each creates .venv from requirements.txt when it is missing or stale (hash of requirements.txt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.sha256

.PHONY: venv test test-slow demo lint bench clean-venv

venv:
	@want=$$(sha256sum requirements.txt | cut -d' ' -f1); \
	have=$$(cat $(STAMP) 2>/dev/null); \
	if [ -x "$(PY)" ] && [ "$$want" = "$$have" ]; then \
		echo "venv: $(VENV) is up to date with requirements.txt"; \
	else \
		echo "venv: creating $(VENV) from requirements.txt (first time takes a few minutes)"; \
		$(PYTHON) -m venv $(VENV) && \
		$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt && \
		echo "$$want" > $(STAMP) || { echo "venv: installing requirements.txt failed" >&2; exit 1; }; \
	fi

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

test-slow: venv
	$(PY) -m pytest -q -m slow

lint: venv
	$(VENV)/bin/ruff check .

demo: venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) scripts/bench.py --model_s resnet32 --model_t resnet110 --relational ckd --device cpu

clean-venv:
	rm -rf $(VENV)
