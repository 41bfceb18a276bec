#!/usr/bin/env bash
# Install everything, then start JupyterLab with the AI Grid master on the local executor.
# Extra arguments go to `jupyter lab` (e.g. --AIGridApp.local_nodes=2 --port=8899).
set -euo pipefail
EXTRAS=lab source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
args=()
[ "$(id -u)" = 0 ] && args+=(--allow-root)
[ -z "${DISPLAY:-}" ] && args+=(--no-browser)
echo "==> starting JupyterLab; the AI Grid master starts with it (see its log line below)"
exec "$PYTHON" -m jupyterlab "${args[@]}" "$@"
