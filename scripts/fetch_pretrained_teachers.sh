#!/bin/sh
# Fetch, check and install the published RepDistiller CIFAR-100 teachers (docs/teachers.md; --help lists the flags).
# The work is done by scripts/fetch_teachers.py; this runs it with $PYTHON, else .venv/bin/python, else python3.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
PROBE='import importlib.util as u, sys; print(sys.version_info >= (3, 11) and u.find_spec("torch") is not None)'
if [ "$("$PY" -c "$PROBE" 2>/dev/null)" != True ]; then
    echo "error: ${PYTHON:+PYTHON=}$PY is not a Python 3.11 or newer with the project's requirements (torch) installed; ${PYTHON:+unset PYTHON or }point PYTHON at the project's Python (e.g. PYTHON=.venv/bin/python)" >&2
    exit 2
fi
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" "$ROOT/scripts/fetch_teachers.py" "$@"
