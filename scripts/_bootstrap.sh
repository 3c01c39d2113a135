# Sourced by scripts/demo and scripts/test: makes .venv and installs the project with
# the extras named in $EXTRAS, once per change of pyproject.toml. Needs Python >= 3.11.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "chatbot needs Python 3.11 or newer as '$python' (set PYTHON=/path/to/python3.11)." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> Creating a virtual environment in .venv"
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${EXTRAS}"
if [ ! -f "$stamp" ]; then
  echo "==> Installing chatbot with [${EXTRAS}] into .venv (first run: about a minute)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # pip compiles bytecode as it installs, which keeps Synapse's start fast even
  # where PYTHONDONTWRITEBYTECODE is set.
  .venv/bin/python -m pip install --progress-bar on -e ".[${EXTRAS}]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
