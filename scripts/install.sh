# Installs jupyter-aigrid and what it needs into the current Python. Sourced by lab.sh and
# test.sh with EXTRAS set ("lab" or "test"); safe to run again (it only adds what is missing).
set -euo pipefail
PYTHON=${PYTHON:-python3}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

echo "==> torch (pinned: 2.13.0)"
pip_install "torch==2.13.0"
echo "==> build tools (hatchling, hatch-jupyter-builder, JupyterLab for jlpm)"
pip_install "hatchling>=1.21" "hatch-jupyter-builder>=0.9" editables "jupyterlab>=4.2,<5"
echo "==> jupyter-aigrid[${EXTRAS:-lab}] (builds the JupyterLab extension on first install)"
pip_install --no-build-isolation --editable ".[${EXTRAS:-lab}]"

if [ "${EXTRAS:-lab}" = "test" ]; then
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> chromium (for the sidebar's browser tests)"
    apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
      || echo "    could not install chromium: the browser tests will be skipped"
  fi
  if ! command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> docker.io (the Docker executor's tests start their own engine)"
    apt-get install -y -qq docker.io >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq docker.io >/dev/null 2>&1; } \
      || echo "    could not install docker.io: the Docker executor's tests will fail in CI"
  fi
  echo "==> labextension node dependencies"
  (cd labextension && jlpm install >/dev/null)
fi
