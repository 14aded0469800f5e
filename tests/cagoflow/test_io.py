"""Tests of cagoflow.io: atomic writes, JSON and structure reading with errors naming the file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from cagoflow.errors import InputError
from cagoflow.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_structures,
    last_lines,
    log_tail,
    read_json,
    read_structures,
    structure_labels,
    write_structures,
)


def labelled_water(shift: float = 0.0) -> Atoms:
    atoms = molecule("H2O")
    atoms.positions += [shift, 0.0, 0.0]
    atoms.calc = SinglePointCalculator(atoms, energy=-14.2 + shift, forces=np.full((3, 3), 0.1))
    return atoms


def temp_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_writes_replace_content_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "dir" / "file.bin"  # parents are created

    assert atomic_write_bytes(path, b"\x00first") == path
    assert path.read_bytes() == b"\x00first"
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"

    atomic_write_text(path, "tr\u00e8s long\n")
    assert path.read_text(encoding="utf-8") == "tr\u00e8s long\n"

    atomic_write_json(path, {"b": [1, 2.5], "a": None})
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2.5]}
    assert path.read_text().endswith("\n")

    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_failed_json_write_keeps_old_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"iteration": 1})
    before = path.read_bytes()

    with pytest.raises(TypeError):
        atomic_write_json(path, {"iteration": 2, "bad": object()})  # not JSON serialisable

    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_write_failing_after_temp_file_was_created_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "state.txt"
    atomic_write_text(path, "old")

    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]  # fails inside the temp file
    assert path.read_text() == "old" and temp_files(tmp_path) == []

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    monkeypatch.undo()

    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.txt"]


# --- read_json ---------------------------------------------------------------------------


def test_read_json_round_trip(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"k": [1, {"n": 2}]})
    assert read_json(path) == {"k": [1, {"n": 2}]}
    assert read_json(str(path)) == {"k": [1, {"n": 2}]}


def test_read_json_missing_file_names_it(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(InputError, match="does not exist") as info:
        read_json(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)


def test_read_json_malformed_file_names_it_and_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(InputError, match=r"not valid JSON \(line 4") as info:
        read_json(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)


def test_read_json_undecodable_or_unreadable_file_names_it(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="cannot read the file") as info:
        read_json(path)
    assert info.value.file == str(path)

    with pytest.raises(InputError, match="cannot read the file") as info:
        read_json(tmp_path)  # a directory
    assert info.value.file == str(tmp_path)


# --- read_structures ---------------------------------------------------------------------


def test_write_and_read_structures_keeps_labels(tmp_path):
    path = write_structures(tmp_path / "s.extxyz", [labelled_water(0.0), labelled_water(1.0)])

    back = read_structures(path, require_labels=True)

    assert len(back) == 2 and temp_files(tmp_path) == []
    np.testing.assert_allclose(back[1].positions, labelled_water(1.0).positions, atol=1e-8)
    assert structure_labels(back[1])["energy"] == pytest.approx(-13.2)
    np.testing.assert_allclose(structure_labels(back[0])["forces"], 0.1)
    assert len(read_structures(path, index=0)) == 1


def test_read_structures_missing_file(tmp_path):
    path = tmp_path / "nothing.extxyz"
    with pytest.raises(InputError, match="does not exist") as info:
        read_structures(path)
    assert info.value.file == str(path)


def test_read_structures_directory(tmp_path):
    with pytest.raises(InputError, match="found a directory") as info:
        read_structures(tmp_path)
    assert info.value.file == str(tmp_path)


@pytest.mark.parametrize("content", ["", "0\nProperties=species:S:1:pos:R:3\n"], ids=["empty", "no-atoms"])
def test_read_structures_empty_file(tmp_path, content):
    path = tmp_path / "empty.extxyz"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_structures(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    ["hello world\nthis is not a structure\n", "3\n\nH 0.0 0.0 0.0\n", "2\n\nH 0 0 0\nH x y z\n"],
    ids=["text", "truncated", "bad-number"],
)
def test_read_structures_garbage(tmp_path, content):
    path = tmp_path / "garbage.extxyz"
    path.write_text(content)
    with pytest.raises(InputError, match="cannot parse the structure file") as info:
        read_structures(path)
    assert info.value.file == str(path)


def test_read_structures_require_labels(tmp_path):
    bare = molecule("H2O")
    path = write_structures(tmp_path / "mixed.extxyz", [labelled_water(), bare])

    assert len(read_structures(path)) == 2  # labels not required: fine
    with pytest.raises(InputError, match="structure 1 has no reference energy and forces") as info:
        read_structures(path, require_labels=True)
    assert info.value.file == str(path)


# --- check_structures --------------------------------------------------------------------


def test_check_structures_accepts_sane_structures():
    check_structures([labelled_water(), molecule("CH4")], file="in.extxyz")


def test_check_structures_refuses_overlapping_atoms():
    good = molecule("H2O")
    overlapping = Atoms("H3", positions=[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.3, 0.0]])

    with pytest.raises(InputError, match=r"structure 1 has overlapping atoms: two atoms are 0\.300 Å apart") as info:
        check_structures([good, overlapping], file="in.extxyz")
    assert info.value.file == "in.extxyz"

    check_structures([overlapping], file="in.extxyz", min_distance=0.25)  # threshold is configurable


def test_check_structures_sees_periodic_images():
    atoms = Atoms("H2", positions=[[0.1, 0.0, 0.0], [9.8, 0.0, 0.0]], cell=[10.0, 10.0, 10.0], pbc=True)
    with pytest.raises(InputError, match=r"structure 0 has overlapping atoms: two atoms are 0\.300 Å apart"):
        check_structures([atoms], file="box.extxyz")
    atoms.pbc = False
    check_structures([atoms], file="box.extxyz")


def test_last_lines_keeps_the_end_and_titles_it_with_the_file_name():
    text = "".join(f"line {k}\n" for k in range(30)) + "\n\n"
    assert last_lines(text, 3) == "line 27\nline 28\nline 29"
    assert last_lines(text, 2, "out.log") == "\n--- last lines of out.log ---\nline 28\nline 29"
    assert last_lines("  \n", 5, "empty.log") == ""


def test_log_tail_reads_a_file_and_is_empty_for_a_missing_or_empty_one(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("start\nstep 1\nERROR: lost atoms\n")
    assert log_tail(log, 2) == "step 1\nERROR: lost atoms"
    assert log_tail(log, 1, titled=True) == "\n--- last lines of train.log ---\nERROR: lost atoms"
    assert log_tail(tmp_path / "missing.log") == ""
    assert log_tail(None) == ""
    (tmp_path / "empty.log").write_text("")
    assert log_tail(tmp_path / "empty.log", titled=True) == ""
