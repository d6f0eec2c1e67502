#!/usr/bin/env bash
# Install everything the test suite needs and run it: torch (CPU wheel if none is
# installed), this package with its test extras, and the reference package
# steerling==0.2.0 as the test oracle. Uses the active virtualenv, else ./.venv.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
# A GPU user's CUDA build of torch is kept; a machine without torch gets the CPU wheel.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
# The oracle declares Python >= 3.13 and pins old releases, but runs on 3.11 with ours.
python -m pip install -q --no-deps --ignore-requires-python steerling==0.2.0
python -m pytest "$@"
