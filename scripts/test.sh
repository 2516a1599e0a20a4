#!/usr/bin/env bash
# The README's second command: set up, then run the test suite (unit + integration on real servers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
