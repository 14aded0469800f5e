#!/usr/bin/env bash
# Builds .gpu-bundle/ HERE, where the package registries can be reached, for benchmarks/gpu_check.sh
# on a lent GPU machine that has none (nvidia-h200: Python 3.12, torch 2.11.0+cu130, numpy, scipy,
# matplotlib, h5py, einops, e3nn, lightning, torchmetrics, pyyaml, typer, rich, ... preinstalled).
#
#   bash benchmarks/gpu_bundle.sh [DIR]        (DIR: .gpu-bundle)
#
# It holds what the README's set-up installs and that machine lacks, nothing else:
#   wheels/     cp312 manylinux wheels (pinned to the versions of ./.venv), installed there with
#               pip install --no-index --no-deps --target
#   native.tar.xz  LAMMPS trimmed to what `lmp` and DeePMD-kit's plugin need (the lmp program,
#               liblammps.so, the libraries it links, the Python module; no potentials, examples
#               or headers), MPICH's libmpi.so.12 with its libraries, and the CUDA 12 runtime
#               (libcudart.so.12: DeePMD-kit's C++ library is a CUDA 12 build, the device's torch
#               a CUDA 13 one), laid out as a prefix (lib/libmpi.so.12,
#               lib/python3.12/site-packages/...) so that the dist-info RECORD that DeePMD-kit
#               reads (metadata.files("mpich")) points at real files
#   frames/     train.extxyz and validation.extxyz: 24 rattled boxes of 8 H2O labelled with
#               GFN1-xTB here (tblite is not carried)
# Idempotent: what is already there is kept. Prints the size at the end (the working tree that
# travels to the device, repo included, must stay under 64 MiB).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=$(mkdir -p "${1:-$root/.gpu-bundle}" && cd "${1:-$root/.gpu-bundle}" && pwd)
python=${PYTHON:-$root/.venv/bin/python}
cache=${TMPDIR:-/tmp}/cagoflow-gpu-bundle-cache
mkdir -p "$bundle/wheels" "$cache"

# What the device lacks (KINDS.md's package list), at the versions of ./.venv. mendeleev is
# needed: `dp --pt train` sorts the observed elements with it (deepmd.utils.econf_embd), which
# imports sqlalchemy and pint. Not carried: tblite (the frames are labelled here), parsl (the
# check runs no workflow).
packages=(
    deepmd-kit==3.2.0 dargs==0.5.1 typeguard==4.6.1 wcmatch==12.0.1 bracex==3.2.3
    array-api-compat==1.16.0 lmdb==3.0.0 dpdata==1.1.0
    mendeleev==1.3.0 sqlalchemy==2.1.9 pint==0.24.4 flexcache==0.3 flexparser==0.4
    platformdirs==4.14.8 deprecated==1.3.1 pyfiglet==0.8.post1
    nequip==0.19.1 nequip-allegro==0.8.3 e3nn==0.6.0 matscipy==1.3.1
    hydra-core==1.3.8 omegaconf==2.3.1
    ase==3.29.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
    typing-inspection==0.4.5 typing-extensions==4.16.0
)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done

have() {  # a wheel of NAME==VERSION in a folder
    local name=${1%%==*} version=${1##*==}
    name=$(echo "$name" | tr 'A-Z.-' 'a-z__')
    (shopt -s nocaseglob; compgen -G "$2/${name}-${version}-*.whl" > /dev/null)  # Pint-0.24.4-...
}

download() {  # NAME==VERSION FOLDER
    have "$1" "$2" || "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "$2" "$1" 2> >(grep -v "^WARNING: Location" >&2)
}

for package in "${packages[@]}"; do
    download "$package" "$bundle/wheels"
done
# antlr4-python3-runtime 4.9.3 (what omegaconf and hydra need) exists only as a source archive:
# a pure-Python wheel is built from it here.
have antlr4-python3-runtime==4.9.3 "$bundle/wheels" ||
    "$python" -m pip wheel --quiet --no-deps -w "$bundle/wheels" antlr4-python3-runtime==4.9.3

# LAMMPS and MPICH: the wheels are large (86 and 13 MB) and pip --target would drop MPICH's
# lib/ files; a trimmed prefix archive instead.
if [ ! -s "$bundle/native.tar.xz" ]; then
    download lammps==2025.7.22.2.0 "$cache"
    download mpich==5.0.2 "$cache"
    download nvidia-cuda-runtime-cu12==12.9.79 "$cache"
    "$python" - "$cache" "$bundle/native.tar.xz" << 'EOF'
import base64, hashlib, io, re, sys, tarfile, time, zipfile
from pathlib import Path

cache, output = Path(sys.argv[1]), Path(sys.argv[2])
site = "lib/python3.12/site-packages"
lammps = zipfile.ZipFile(next(cache.glob("lammps-2025.7.22.2.0-*.whl")))
mpich = zipfile.ZipFile(next(cache.glob("mpich-5.0.2-*.whl")))
cudart = zipfile.ZipFile(next(cache.glob("nvidia_cuda_runtime_cu12-12.9.79-*.whl")))
members = []  # (path in the archive, bytes, mode) or (path, None, link target)


def record(paths_and_data, prefix=""):
    lines = []
    for path, data in paths_and_data:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{prefix}{path},sha256={digest},{len(data)}")
    return lines


# LAMMPS: the Python module, the lmp program, liblammps and the bundled libraries they link (ldd)
keep = re.compile(r"^lammps/([^/]+\.py|lmp|liblammps\.so\.0|mliap/[^/]+\.py)$|^lammps\.libs/lib(gomp|jpeg)-")
files = [(n, lammps.read(n)) for n in lammps.namelist() if keep.match(n)]
info = [n for n in lammps.namelist() if n.startswith("lammps-2025.7.22.2.0.dist-info/")]
metadata = [(n, lammps.read(n)) for n in info if n.rsplit("/", 1)[-1] in ("METADATA", "WHEEL", "entry_points.txt")]
script = b"#!/usr/bin/env python3\nimport sys\nfrom lammps.executable import lmp\nif __name__ == '__main__':\n    sys.exit(lmp())\n"
for name, data in files + metadata:
    executable = name.endswith(("lmp", ".so.0")) or ".libs/" in name
    members.append((f"{site}/{name}", data, 0o755 if executable else 0o644))
members.append((f"{site}/lammps/liblammps.so", None, "liblammps.so.0"))  # the Python module loads this name
members.append((f"{site}/bin/lmp", script, 0o755))
rows = record(files + metadata) + ["bin/lmp,,", "lammps/liblammps.so,,"]
members.append((f"{site}/lammps-2025.7.22.2.0.dist-info/RECORD", ("\n".join(rows + ["lammps-2025.7.22.2.0.dist-info/RECORD,,"]) + "\n").encode(), 0o644))

# MPICH: libmpi.so.12 and the libraries it loads (lib/mpich/), as the wheel's data files
data = "mpich-5.0.2.data/data/"
libs = [(n[len(data):], mpich.read(n)) for n in mpich.namelist()
        if n.startswith(data + "lib/") and (n.endswith("libmpi.so.12") or n.startswith(data + "lib/mpich/")) and not n.endswith("/")]
if not any(name == "lib/libmpi.so.12" for name, _ in libs):
    sys.exit(f"no lib/libmpi.so.12 in the mpich wheel: {mpich.namelist()[:20]}")
for name, content in libs:
    members.append((name, content, 0o755))
members.append(("lib/libmpi.so", None, "libmpi.so.12"))
info = [n for n in mpich.namelist() if n.startswith("mpich-5.0.2.dist-info/") and n.rsplit("/", 1)[-1] in ("METADATA", "WHEEL", "top_level.txt")]
metadata = [(n, mpich.read(n)) for n in info]
for name, content in metadata:
    members.append((f"{site}/{name}", content, 0o644))
rows = record(metadata) + record(libs, prefix="../../../") + ["mpich-5.0.2.dist-info/RECORD,,"]
members.append((f"{site}/mpich-5.0.2.dist-info/RECORD", ("\n".join(rows) + "\n").encode(), 0o644))

# the CUDA 12 runtime, where deepmd.lmp looks for it (nvidia.cuda_runtime.lib) to preload it in lmp
name = "nvidia/cuda_runtime/lib/libcudart.so.12"
members.append((f"{site}/{name}", cudart.read(name), 0o755))

partial = output.with_suffix(".partial")
with tarfile.open(partial, "w:xz", preset=9) as archive:
    for name, content, extra in members:
        entry = tarfile.TarInfo(name)
        entry.mtime = int(time.time())
        if content is None:
            entry.type, entry.linkname = tarfile.SYMTYPE, extra
            archive.addfile(entry)
        else:
            entry.size, entry.mode = len(content), extra
            archive.addfile(entry, io.BytesIO(content))
partial.rename(output)
print(f"{output.name}: {len(members)} entries")
EOF
fi

# Labelled water frames for training (GFN1-xTB via tblite in ./.venv; a few seconds)
if [ ! -s "$bundle/frames/validation.extxyz" ]; then
    mkdir -p "$bundle/frames"
    (cd "$root/benchmarks" && OMP_NUM_THREADS=2 "$python" -c "
import sys; from pathlib import Path; from common import labelled_frames
print(*labelled_frames(Path(sys.argv[1])))" "$bundle/frames")
fi

echo "GPU bundle in $bundle:"
du -ab "$bundle" | sort -n | tail -n 8 | awk '{printf "  %6.1f MiB  %s\n", $1 / 1048576, $2}'
repo=$(cd "$root" && { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2> /dev/null | awk '$2 == "total" {s += $1} END {print s}')
total=$(du -sb "$bundle" | cut -f1)
awk -v b="$total" -v r="$repo" 'BEGIN {printf "bundle %.1f MiB + working tree %.1f MiB = %.1f MiB (device limit 64 MiB)\n", b / 1048576, r / 1048576, (b + r) / 1048576}'
