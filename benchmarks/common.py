"""What the benchmark scripts share: labelled water frames, timing, tiny committees trained on the spot.

Imported by the scripts of this folder (``python benchmarks/<script>.py`` puts the folder on
the import path); not part of the package.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from cagoflow.io import write_structures
from cagoflow.structures import water_box


def best_time(function: Callable[[], object], repeat: int) -> float:
    """Smallest wall time of ``repeat`` calls, s."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def labelled_frames(folder: Path, waters: int = 8, count: int = 24) -> tuple[Path, Path]:
    """Rattled boxes of ``waters`` H2O labelled with GFN1-xTB (tblite), as train and validation
    files (the last 4 frames validate)."""
    from cagoflow.engines.tblite import TbliteReference

    reference = TbliteReference(method="GFN1-xTB")
    frames = []
    for k in range(count):
        atoms = water_box(waters, seed=k % 3)
        atoms.rattle(stdev=0.03, seed=k)
        frames.append(reference.compute(atoms).labelled())
    return write_structures(folder / "train.extxyz", frames[:-4]), write_structures(folder / "validation.extxyz", frames[-4:])


def trained_committee(
    backend_name: str, folder: Path, files: tuple[Path, Path], members: int, steps: int, device: str | None = None
):
    """A committee of ``members`` tiny members of a backend, trained here for ``steps`` steps each."""
    from cagoflow.backends import TrainingSettings, get_backend, train

    backend = get_backend(backend_name)
    models = []
    for m in range(members):
        settings = TrainingSettings(steps=steps, seed=m + 1, type_map=("O", "H"))
        result = train(backend, files[0], files[1], folder / backend_name / f"member-{m}", settings)
        if result.status != "success":
            raise SystemExit(f"{backend_name} member {m} did not train: {result.message}")
        models.append(result.model)
    return backend.load(models, device=device)
