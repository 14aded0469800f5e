"""File input/output: atomic writes and structure reading with clear errors.

Every write goes to a temporary file in the target's directory and is renamed into place,
so a reader never sees a half-written file, even if the writer is killed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from ase import Atoms

from cagoflow.errors import InputError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def last_lines(text: str, lines: int, title: str | None = None) -> str:
    """The last ``lines`` lines of ``text`` ("" when it has none); with ``title`` (a file name),
    after a line "--- last lines of TITLE ---" and a newline before it, to append to a message."""
    kept = text.rstrip().splitlines()[-lines:]
    if not kept:
        return ""
    body = "\n".join(kept)
    return body if title is None else f"\n--- last lines of {title} ---\n{body}"


def log_tail(path: str | Path | None, lines: int = 20, *, titled: bool = False) -> str:
    """:func:`last_lines` of the file at ``path`` ("" when there is none or it cannot be read);
    ``titled``: titled with the file's name."""
    if path is None:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return last_lines(text, lines, Path(path).name if titled else None)


def remove_stale_temporaries(directory: str | Path) -> None:
    """Delete the temp files a writer killed mid-write left in ``directory`` (never a result);
    call it before a task runs there again."""
    for stale in Path(directory).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_figure(figure: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    import io as _io

    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`InputError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("file does not exist", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the file ({exc})", file=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno}: {exc.msg})", file=path) from None


def write_structures(path: str | Path, structures: Iterable[Atoms]) -> Path:
    """Write structures as extended XYZ, atomically (``energy``/``forces``/``stress`` kept)."""
    import io as _io

    from ase.io import write

    buffer = _io.StringIO()
    write(buffer, list(structures), format="extxyz")
    return atomic_write_text(path, buffer.getvalue())


def read_structures(path: str | Path, *, index: str | int = ":", require_labels: bool = False) -> list[Atoms]:
    """Read all structures of a file ASE can read (extxyz, POSCAR, cif, ...).

    Raises :class:`InputError` naming the file for a missing, unreadable, empty or
    malformed file, and (with ``require_labels``) for structures without energy and forces.
    """
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise InputError("structure file does not exist", file=path)
    if path.is_dir():
        raise InputError("expected a structure file, found a directory", file=path)
    try:
        result = read(path, index=index)
    except PermissionError:
        raise InputError("structure file is not readable (permission denied)", file=path) from None
    except Exception as exc:  # ASE raises many types for malformed files
        raise InputError(f"cannot parse the structure file ({type(exc).__name__}: {exc})", file=path) from None
    structures = [result] if isinstance(result, Atoms) else list(result)
    if not structures or any(len(atoms) == 0 for atoms in structures):
        raise InputError("the structure file holds no atoms", file=path)
    if require_labels:
        for number, atoms in enumerate(structures):
            if atoms.calc is None or "energy" not in atoms.calc.results or "forces" not in atoms.calc.results:
                raise InputError(
                    f"structure {number} has no reference energy and forces (labelled structures expected)",
                    file=path,
                )
    return structures


def structure_labels(atoms: Atoms) -> dict[str, Any]:
    """Reference labels attached to ``atoms`` (``energy`` eV, ``forces`` eV/Å, ``stress`` eV/Å³)."""
    if atoms.calc is None:
        return {}
    return {key: atoms.calc.results[key] for key in ("energy", "forces", "stress") if key in atoms.calc.results}


def check_structures(structures: Sequence[Atoms], *, file: str | Path, min_distance: float = 0.5) -> None:
    """Refuse structures with overlapping atoms (closer than ``min_distance`` Å)."""
    from cagoflow.geometry import min_interatomic_distance

    for number, atoms in enumerate(structures):
        distance = min_interatomic_distance(atoms)
        if distance < min_distance:
            raise InputError(
                f"structure {number} has overlapping atoms: two atoms are {distance:.3f} Å apart "
                f"(at least {min_distance} Å expected)",
                file=file,
            )
