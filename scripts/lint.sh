#!/usr/bin/env bash
# The static checks, configured in pyproject.toml; scripts/test.sh runs them before pytest.
#   ruff: pyflakes (F), pycodestyle (E, W), import order (I), and one name per module (TID: no
#         relative imports, no bare `collector`/`api`/`shared`/`subscribers`: docs/TESTING.md)
#   mypy: the syswatch package (collector, api, shared, subscribers) and harness/
#
#   scripts/lint.sh            # both; exit status non-zero on any finding
#   ruff check --fix .         # rewrite what ruff can (import order, unused imports)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for tool in ruff mypy; do
    python3 -c "import $tool" 2>/dev/null \
        || { echo "lint.sh: error: $tool is missing: python3 -m pip install -r requirements-dev.txt" >&2; exit 2; }
done
python3 -m ruff check .
python3 -m mypy
