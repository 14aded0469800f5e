#!/usr/bin/env bash
# The GPU check: on a machine with one NVIDIA GPU, in at most 8 minutes and installing nothing
# beyond the README's set-up, trains tiny members of every backend (DeePMD, NequIP, Allegro) on
# the GPU, times batched committee prediction and vectorised CAGO against one structure at a
# time, runs committee MD with LAMMPS `pair_style deepmd` on the GPU, and writes the table
# (absolute times and ratios, the GPU named, every failure as a row with its reason) to
# OUT/gpu_check.md, which it prints at the end.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--out DIR] [--bundle DIR]
#                                [--size full|small] [--budget SECONDS]
#
#   --device   cuda (default) or cpu: the CPU fallback, which hides any GPU and uses the small
#              sizes (4–7 minutes on a busy 2-core machine); run it now and then so that the
#              check does not rot
#   --out      where gpu_check.md, gpu_check.log, results.jsonl and info.json go
#              (default: $OUT when set, else benchmarks/gpu_check_results/)
#   --bundle   a folder made by benchmarks/gpu_bundle.sh (on the lent GPU machine: .gpu-bundle,
#              carried there), installed into /tmp/cagoflow-gpu with the machine's own python3
#              and torch; without it, ./.venv of scripts/setup.sh is used
#   --size     full (default on cuda: 64 boxes of 64 H2O, K = 1, 4, 16, 64, 1000 MD steps) or
#              small (default on cpu)
#   --budget   seconds for the whole check (default 470 on cuda, 900 on cpu); every part runs
#              under `timeout` with its own cap, cut to what is left, and 25 s are kept for
#              the report
#
# Exit code 0 only when every part ran and the table was written; a failed set-up (3), a missing
# table (4) or a failed part (5) ends with a line starting "gpu_check.sh: FAILED".
#
# On a lent GPU (built here first: bash benchmarks/gpu_bundle.sh):
#   bash benchmarks/gpu_check.sh --bundle .gpu-bundle        (carry: .gpu-bundle)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
device=cuda out=${OUT:-} bundle="" size="" budget=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device | --out | --bundle | --size | --budget)
            [ $# -ge 2 ] || { echo "gpu_check.sh: $1 needs a value" >&2; exit 2; }
            declare "${1#--}=$2"
            shift 2
            ;;
        -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$device" in cuda | cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu" >&2; exit 2 ;; esac
out=${out:-$root/benchmarks/gpu_check_results}
mkdir -p "$out" && out=$(cd "$out" && pwd)
budget=${budget:-$([ "$device" = cuda ] && echo 470 || echo 900)}
work=$(mktemp -d "${TMPDIR:-/tmp}/cagoflow-gpu-check.XXXXXX")

# caps per part (s), cut to what is left of the budget
if [ "$device" = cuda ]; then
    caps=(setup:150 info:60 train:210 predict:90 lammps:80 cago:150)
else
    caps=(setup:150 info:90 train:330 predict:90 lammps:150 cago:180)
fi
cap_of() { local entry; for entry in "${caps[@]}"; do [ "${entry%%:*}" = "$1" ] && echo "${entry#*:}"; done; }

# time left for a part: its cap, or the budget less what is spent and 25 s for the report
allowed() {
    local cap left
    cap=$(cap_of "$1")
    left=$((budget - SECONDS - 25))
    echo $((left < cap ? left : cap))
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$work/parts.tsv"; }

setup_bundle() {  # install the bundle for the machine's python3 into $prefix
    local seconds=$1 version started=$SECONDS
    python=python3
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || return 1
    if [ "$version" != 3.12 ]; then
        echo "the bundle holds cp312 wheels; python3 here is $version" >&2
        return 1
    fi
    prefix=${GPU_CHECK_PREFIX:-/tmp/cagoflow-gpu}
    site=$prefix/lib/python3.12/site-packages
    mkdir -p "$site"
    timeout -k 5 "$seconds" "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" "$bundle"/wheels/*.whl || return 1
    "$python" - "$bundle/native.tar.xz" "$prefix" << 'EOF' || return 1
import sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    try:
        archive.extractall(sys.argv[2], filter="tar")
    except TypeError:  # Python without extraction filters
        archive.extractall(sys.argv[2])
EOF
    # cagoflow itself, as pyproject maps it (cagoflow.apps from apps/, ...), from a copy of the tree
    local source project=$prefix/project left
    source=$(mktemp -d "${TMPDIR:-/tmp}/cagoflow-source.XXXXXX")
    cp -r "$root"/pyproject.toml "$root"/README.md "$root"/cagoflow "$root"/apps "$root"/executors "$root"/workflows "$source"/
    left=$((seconds - (SECONDS - started)))
    if [ "$left" -gt 5 ] && timeout -k 5 "$left" "$python" -m pip install -q --no-index --no-deps --no-build-isolation \
        --no-compile --no-cache-dir --upgrade --target "$project" "$source"; then
        echo "cagoflow installed into $project"
    else
        echo "cagoflow could not be installed; importing it from $root" >&2
        project=$root
    fi
    rm -rf "$source"
    export PYTHONPATH="$project:$site${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$site/bin:$project/bin:$PATH"
    # libmpi.so.12 (lmp, DeePMD's ops) and the CUDA 12 runtime DeePMD's C++ library is built for
    export LD_LIBRARY_PATH="$prefix/lib:$site/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    frames=$bundle/frames
}

setup_venv() {  # ./.venv of scripts/setup.sh
    python=$root/.venv/bin/python
    [ -x "$python" ] || { echo "no $python: run scripts/setup.sh, or pass --bundle" >&2; return 1; }
    export VIRTUAL_ENV=$root/.venv
    export PATH="$root/.venv/bin:$PATH"
    export LD_LIBRARY_PATH="$root/.venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    frames=""
    [ -s "$root/.gpu-bundle/frames/validation.extxyz" ] && frames=$root/.gpu-bundle/frames
    return 0
}

run_part() {  # NAME: gpu_check.py --part NAME under timeout
    local name=$1 seconds started=$SECONDS code
    seconds=$(allowed "$name")
    if [ "$seconds" -lt 15 ]; then
        echo "== $name: skipped, the budget is spent"
        record "$name" skipped 0
        return
    fi
    echo "== $name (at most $seconds s, $((SECONDS)) s spent)"
    timeout -k 10 "$seconds" "$python" "$root/benchmarks/gpu_check.py" --part "$name" --device "$device" \
        --work "$work" --seconds "$seconds" ${size:+--size "$size"} ${frames:+--frames "$frames"}
    code=$?
    record "$name" "$code" $((SECONDS - started))
    [ "$code" = 0 ] || echo "== $name: exit code $code"
}

main() {
    echo "cagoflow GPU check: device $device, budget $budget s, work $work, out $out"
    export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
    if [ "$device" = cpu ]; then
        export CUDA_VISIBLE_DEVICES="" DEVICE=cpu  # DEVICE: DeePMD-kit's own switch
    fi
    local started=$SECONDS code=0
    if [ -n "$bundle" ]; then
        bundle=$(cd "$bundle" && pwd) && setup_bundle "$(allowed setup)" || code=$?
    else
        setup_venv || code=$?
    fi
    record setup "$code" $((SECONDS - started))
    if [ "$code" != 0 ]; then
        echo "gpu_check.sh: FAILED: the set-up failed (exit code $code), so nothing ran and no table was written" \
            "(see the lines above; without --bundle, ./.venv of scripts/setup.sh is needed)" >&2
        rm -rf "$work"
        return 3
    fi
    nvidia-smi -L 2> /dev/null || echo "(no nvidia-smi)"
    for part in info train predict lammps cago; do  # CAGO last: it fits its sizes to the time left
        run_part "$part"
    done
    rm -f "$out/gpu_check.md"
    echo "== report ($((SECONDS)) s spent)"
    timeout -k 5 60 "$python" "$root/benchmarks/gpu_check.py" --part report --device "$device" --work "$work" \
        --out "$out" ${size:+--size "$size"} || cat "$work/results.jsonl" 2> /dev/null
    cp "$work/results.jsonl" "$work/info.json" "$out"/ 2> /dev/null
    local failed
    failed=$(awk -F'\t' '$2 != 0 {printf "%s%s (exit code %s)", sep, $1, $2; sep = ", "}' "$work/parts.tsv")
    [ -n "${GPU_CHECK_KEEP:-}" ] && echo "work folder kept: $work" || rm -rf "$work"
    if [ ! -s "$out/gpu_check.md" ]; then
        echo "gpu_check.sh: FAILED after $SECONDS s: no table was written${failed:+; failed parts: $failed}" >&2
        return 4
    fi
    if [ -n "$failed" ]; then
        echo "gpu_check.sh: FAILED after $SECONDS s: $failed; the table with the reasons is $out/gpu_check.md" >&2
        return 5
    fi
    echo "== done in $SECONDS s; the table is $out/gpu_check.md"
}

main 2>&1 | tee "$out/gpu_check.log"
