#!/usr/bin/env bash
# Install the test dependencies, then run the linter and the whole test suite.
# Extra arguments go to pytest (e.g. -k restart, -x).
set -euo pipefail
EXTRAS=test source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
echo "==> ruff"
"$PYTHON" -m ruff check jupyter_aigrid tests benchmarks examples
echo "==> labextension unit tests (jest)"
(cd labextension && jlpm test --silent)
echo "==> pytest"
exec "$PYTHON" -m pytest "$@"
