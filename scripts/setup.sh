#!/usr/bin/env bash
# Installs cagoflow into ./.venv on a fresh machine: the virtual environment, torch pinned to
# 2.11.0 (the build deepmd-kit 3.2.0's compiled parts expect), cagoflow (editable) with its
# engines and test tools. Idempotent: a second run with the same pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv

stamp=.venv/.cagoflow-installed
wanted=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    exit 0
fi

echo "cagoflow setup: installing into .venv (torch==2.11.0 is a large download the first time)" >&2
# torch first and alone, pinned, so that nothing later can pull a newer release.
.venv/bin/pip install --quiet "torch==2.11.0"
.venv/bin/pip install --quiet "torch==2.11.0" -e ".[xtb,test]"
echo "$wanted" > "$stamp"
