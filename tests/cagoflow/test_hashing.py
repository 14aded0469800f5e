"""Tests of cagoflow.hashing: structure hashes survive extxyz, settings and file hashes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from cagoflow.hashing import HASH_DECIMALS, file_hash, settings_hash, structure_hash


def random_periodic(rng: np.random.Generator, natoms: int = 64) -> Atoms:
    """A random periodic (triclinic) structure with random species and full-precision floats."""
    length = rng.uniform(6.0, 14.0)
    cell = np.diag(rng.uniform(0.9, 1.1, 3) * length) + rng.normal(scale=0.7, size=(3, 3))
    return Atoms(
        numbers=rng.integers(1, 84, natoms),
        scaled_positions=rng.uniform(-0.1, 1.1, (natoms, 3)),
        cell=cell,
        pbc=True,
    )


def extxyz_roundtrip(atoms: Atoms) -> Atoms:
    buffer = io.StringIO()
    write(buffer, atoms, format="extxyz")
    return read(io.StringIO(buffer.getvalue()), format="extxyz")


def water_box() -> Atoms:
    return Atoms(
        "OH2",
        positions=[[1.0, 1.0, 1.0], [1.757, 1.586, 1.0], [0.243, 1.586, 1.0]],
        cell=[[5.0, 0.0, 0.0], [0.3, 5.0, 0.0], [0.0, 0.2, 5.0]],
        pbc=True,
    )


def test_hash_decimals_match_extxyz():
    assert HASH_DECIMALS == 8  # ASE's extxyz writes positions as %16.8f


def test_hash_survives_extxyz_roundtrip_of_random_structures():
    rng = np.random.default_rng(20240611)
    moved = split_by_old_rounding = 0
    for _ in range(200):
        atoms = random_periodic(rng)
        back = extxyz_roundtrip(atoms)
        moved += not np.array_equal(back.positions, atoms.positions)
        split_by_old_rounding += not np.array_equal(np.round(back.positions, 6), np.round(atoms.positions, 6))
        assert structure_hash(back) == structure_hash(atoms)
        assert structure_hash(extxyz_roundtrip(back)) == structure_hash(atoms)
    assert moved == 200  # the round trip really does change the floats
    assert split_by_old_rounding > 20  # the former 1e-6 Å rounding split many of them


def test_hash_survives_roundtrip_of_labelled_structure_and_negative_zero():
    atoms = water_box()
    atoms.positions[0] = [-0.0, -4e-9, 1e-10]  # all snap to (-)0.0: folded into +0.0
    atoms.calc = SinglePointCalculator(atoms, energy=-1.5, forces=np.ones((3, 3)))
    zero = atoms.copy()
    zero.positions[0] = [0.0, 0.0, 0.0]

    assert structure_hash(atoms) == structure_hash(zero)
    assert structure_hash(extxyz_roundtrip(atoms)) == structure_hash(atoms)


def test_non_periodic_structure_without_cell():
    atoms = Atoms("H2", positions=[[0.0, 0.0, 0.1234567851], [0.0, 0.0, 0.74]])
    assert structure_hash(extxyz_roundtrip(atoms)) == structure_hash(atoms)


def test_different_structures_hash_differently():
    base = water_box()
    reference = structure_hash(base)

    geometry = base.copy()
    geometry.positions[1, 0] += 1e-7  # above the 1e-8 Å precision
    species = base.copy()
    species.numbers[0] = 16
    cell = base.copy()
    cell.set_cell(np.asarray(base.cell) * 1.01, scale_atoms=False)
    pbc = base.copy()
    pbc.pbc = [True, True, False]
    order = base[[0, 2, 1]]

    hashes = [structure_hash(a) for a in (geometry, species, cell, pbc, order)]
    assert reference not in hashes
    assert len(set(hashes)) == len(hashes)


def test_tiny_changes_below_precision_keep_the_hash():
    base = water_box()
    nudged = base.copy()
    nudged.positions += 1e-12
    assert structure_hash(nudged) == structure_hash(base)


def test_labels_and_info_do_not_change_the_hash():
    base = water_box()
    labelled = base.copy()
    labelled.calc = SinglePointCalculator(labelled, energy=-10.0, forces=np.full((3, 3), 0.2), stress=np.ones(6))
    labelled.info.update({"provenance": {"stage": "md"}, "note": "anything"})
    labelled.set_initial_magnetic_moments([1.0, 0.0, 0.0])

    assert structure_hash(labelled) == structure_hash(base)


def test_hash_is_a_sha256_hex_digest():
    digest = structure_hash(water_box())
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_settings_hash_ignores_key_order():
    first = {"a": 1, "b": {"x": [1, 2], "y": "z"}, "c": 0.5}
    second = {"c": 0.5, "b": {"y": "z", "x": [1, 2]}, "a": 1}

    assert settings_hash(first) == settings_hash(second)
    assert settings_hash(first) != settings_hash({**first, "c": 0.6})
    assert settings_hash({"b": {"x": [2, 1], "y": "z"}, "a": 1, "c": 0.5}) != settings_hash(first)  # list order counts


@pytest.mark.parametrize("size", [0, 10, 3 << 20])  # empty, small, several read blocks
def test_file_hash_changes_with_content(tmp_path, size):
    path = tmp_path / "data.bin"
    content = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    path.write_bytes(content)
    original = file_hash(path)

    copy = tmp_path / "copy.bin"
    copy.write_bytes(content)
    assert file_hash(copy) == original  # only content counts, not the name
    path.write_bytes(content + b"x")
    assert file_hash(path) != original
    if size:
        path.write_bytes(b"\x00" + content[1:] if content[0] else b"\x01" + content[1:])
        assert file_hash(path) != original
