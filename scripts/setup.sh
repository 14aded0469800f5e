#!/usr/bin/env bash
# Installs cagoflow into ./.venv on a fresh machine: the system programs the engines and tests
# use (CP2K, Quantum ESPRESSO with its pseudopotentials, SLURM, munge and PMIx for srun-started
# MPI, Chromium for the report page's browser test, from apt, when run as root), the
# virtual environment, torch pinned to 2.11.0 (the build deepmd-kit 3.2.0's compiled parts
# expect), and cagoflow (editable) with
# every engine and the test tools. Idempotent: a second run with the same files does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    missing=""
    for package in cp2k quantum-espresso quantum-espresso-data slurm-wlm munge libpmix-dev util-linux chromium; do
        dpkg -s "$package" > /dev/null 2>&1 || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        echo "cagoflow setup: apt-get install$missing" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing > /dev/null
    fi
fi

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
.venv/bin/pip install --quiet "torch==2.11.0" -e ".[all,test]"
echo "$wanted" > "$stamp"
