"""Tests of cagoflow.dataset: append-only store, crash safety, provenance, splits."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import cagoflow.dataset as dataset_module
from cagoflow.dataset import (
    AppendResult,
    Dataset,
    DatasetEntry,
    MemberSplit,
    Provenance,
    Splits,
    make_splits_for_hashes,
    split_draw,
)
from cagoflow.errors import InputError
from cagoflow.hashing import labelled_hash, structure_hash
from cagoflow.io import read_structures, write_structures


def water(number: int, *, labelled: bool = True, stress: bool = False) -> Atoms:
    """A displaced H2O (distinct for each ``number``) with deterministic labels."""
    rng = np.random.default_rng(number)
    atoms = molecule("H2O")
    atoms.positions += 0.05 * rng.normal(size=(3, 3)) + [number * 0.1, 0.0, 0.0]
    if labelled:
        results = {"energy": -14.0 - 0.01 * number, "forces": rng.normal(size=(3, 3))}
        if stress:
            results["stress"] = rng.normal(size=6) * 1e-3
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


DATA = Path(__file__).parents[1] / "data"
CAGO = Provenance(2, "cago", "tblite", parent="abc123", extra={"true_error": 0.123, "delta": 0.1})
INITIAL = Provenance(iteration=0, stage="initial", engine="cp2k")


# --- append and read back ------------------------------------------------------------------


def test_append_and_read_back_keeps_labels_and_provenance(tmp_path):
    ds = Dataset(tmp_path / "dataset")
    assert len(ds) == 0 and not (tmp_path / "dataset").exists()  # created lazily
    structures = [water(0, stress=True), water(1), water(2)]
    provenances = [INITIAL, CAGO, Provenance(1, "md", "tblite", extra={"hit_ratio": 1.5, "ok": True})]

    result = ds.append(structures, provenances)

    assert isinstance(result, AppendResult)
    assert result.refused == () and result.file == "batch-00000.extxyz"
    assert len(result.added) == 3 and len(ds) == 3
    assert [e.index for e in ds.entries] == [0, 1, 2]
    assert {e.file for e in ds.entries} == {"batch-00000.extxyz"}
    assert ds.hashes == set(result.added)
    back = ds.structures()
    for original, stored, provenance in zip(structures, back, provenances):
        np.testing.assert_allclose(stored.positions, original.positions, atol=1e-8)
        assert stored.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(stored.get_forces(), original.get_forces(), atol=1e-8)
        assert Provenance.from_info(stored.info) == provenance
    np.testing.assert_allclose(back[0].get_stress(), structures[0].get_stress(), atol=1e-12)
    assert [labelled_hash(a) for a in back] == list(result.added)
    # a subset, in the requested order
    assert [labelled_hash(a) for a in ds.structures([2, 0])] == [result.added[2], result.added[0]]


def test_provenance_round_trip_through_raw_extxyz(tmp_path):
    provenance = Provenance(
        iteration=4,
        stage="cago",
        engine="cp2k",
        parent=None,
        extra={"true_error": 0.0871234567891, "steps": np.int64(37), "hit": True, "note": "it's fine", "gap": None},
    )
    ds = Dataset(tmp_path)
    ds.append([water(3)], provenance)

    raw = read_structures(tmp_path / "batch-00000.extxyz", require_labels=True)

    assert Provenance.from_info(raw[0].info) == provenance
    assert raw[0].info["provenance"]["extra"]["steps"] == 37
    assert json.loads(json.dumps(provenance.to_dict())) == provenance.to_dict()
    assert Provenance.from_dict(provenance.to_dict()) == provenance


def test_provenance_validation():
    with pytest.raises(ValueError, match="quote"):
        Provenance(0, 'bad"stage', "x")
    with pytest.raises(ValueError, match="JSON scalar"):
        Provenance(0, "cago", "x", extra={"array": [1, 2]})
    with pytest.raises(ValueError, match="iteration"):
        Provenance(-1, "cago", "x")
    with pytest.raises(ValueError, match="lacks"):
        Provenance.from_dict({"iteration": 1, "stage": "md"})
    assert Provenance(np.int64(3), "md", "x", extra={"e": np.float32(0.5)}).to_dict()["extra"] == {"e": 0.5}


def test_records_are_frozen_hashable_and_picklable():
    entry = DatasetEntry("h", "batch-00000.extxyz", 0, CAGO)
    assert pickle.loads(pickle.dumps(entry)) == entry
    assert copy.deepcopy(CAGO) == CAGO and hash(CAGO) == hash(Provenance.from_dict(CAGO.to_dict()))
    assert dataclasses.asdict(CAGO)["extra"] == {"true_error": 0.123, "delta": 0.1}
    with pytest.raises(TypeError, match="read-only"):
        CAGO.extra["delta"] = 0.2  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        CAGO.stage = "md"  # type: ignore[misc]


def test_index_round_trip(tmp_path):
    ds = Dataset(tmp_path)
    ds.append([water(0), water(1)], INITIAL)
    ds.append([water(2)], CAGO)

    reopened = Dataset.open(tmp_path)

    assert reopened.entries == ds.entries
    assert reopened.batch_files == ("batch-00000.extxyz", "batch-00001.extxyz")
    assert reopened.entries[2] == DatasetEntry(labelled_hash(water(2)), "batch-00001.extxyz", 0, CAGO)
    data = json.loads((tmp_path / "index.json").read_text())
    assert data["format"] == "cagoflow-dataset" and len(data["entries"]) == 3
    assert water(2) in reopened and labelled_hash(water(5)) not in reopened


def test_index_of_an_earlier_version_still_opens(tmp_path):
    """tests/data/dataset-v1: two batches appended (water(0..3) below) before the index was read
    with pydantic (commit 0a7fb97); the same structures and provenance come back."""
    shutil.copytree(DATA / "dataset-v1", tmp_path / "dataset")
    ds = Dataset.open(tmp_path / "dataset")
    cago = Provenance(2, "cago", "tblite", parent="abc123", extra={"true_error": 0.123, "delta": 0.1, "hit_ratio": 1.23})
    md = Provenance(2, "md", "tblite", extra={"steps": 37, "hit": True, "note": "it's fine", "gap": None})
    expected = [
        (water(0, stress=True), INITIAL, "batch-00000.extxyz", 0),
        (water(1), INITIAL, "batch-00000.extxyz", 1),
        (water(2), cago, "batch-00001.extxyz", 0),
        (water(3), md, "batch-00001.extxyz", 1),
    ]

    assert ds.batch_files == ("batch-00000.extxyz", "batch-00001.extxyz")
    assert ds.entries == tuple(DatasetEntry(labelled_hash(a), name, k, prov) for a, prov, name, k in expected)
    for stored, (original, provenance, _, _) in zip(ds.structures(), expected):
        np.testing.assert_allclose(stored.positions, original.positions, atol=1e-8)
        assert stored.get_potential_energy() == original.get_potential_energy()
        np.testing.assert_allclose(stored.get_forces(), original.get_forces(), atol=1e-8)
        assert Provenance.from_info(stored.info) == provenance
    np.testing.assert_allclose(ds.structures([0])[0].get_stress(), expected[0][0].get_stress(), atol=1e-12)
    assert ds.append([water(4)], INITIAL).file == "batch-00002.extxyz"
    assert len(Dataset.open(tmp_path / "dataset")) == 5


# --- refusals ----------------------------------------------------------------------------


def test_duplicates_refused_within_and_across_batches(tmp_path):
    ds = Dataset(tmp_path)
    a, b = water(0), water(1)
    a_again = a.copy()
    a_again.calc = SinglePointCalculator(a_again, energy=1.0, forces=np.zeros((3, 3)))  # other labels, same geometry

    first = ds.append([a, a_again, b], INITIAL)

    assert first.added == (labelled_hash(a), labelled_hash(b))
    assert first.refused == ((labelled_hash(a_again), "duplicate of structure 0 of this batch"),)

    nearly_b = b.copy()
    nearly_b.positions += 1e-10  # below the stored precision: the same structure
    nearly_b.calc = SinglePointCalculator(nearly_b, **b.calc.results)
    second = ds.append([nearly_b, water(2)], CAGO)

    assert second.added == (labelled_hash(water(2)),)
    assert second.refused == ((labelled_hash(b), "already in the dataset"),)
    assert len(ds) == 3 and len(ds.structures()) == 3
    assert ds.entries[0].provenance == INITIAL  # the first copy keeps its provenance


def test_a_relabelled_structure_is_a_new_entry(tmp_path):
    """A reference run again (new labels, same geometry) is stored; the same labels are not."""
    ds = Dataset(tmp_path)
    (old,) = ds.append([water(0)], INITIAL).added
    relabelled = water(0)
    relabelled.calc = SinglePointCalculator(relabelled, energy=relabelled.get_potential_energy() + 0.01,
                                            forces=relabelled.get_forces())  # fmt: skip

    (new,) = ds.append([relabelled], INITIAL).added

    assert new != old and structure_hash(relabelled) == structure_hash(water(0))
    assert [a.get_potential_energy() for a in ds.structures()] == pytest.approx(
        [water(0).get_potential_energy(), water(0).get_potential_energy() + 0.01]
    )
    assert ds.append([water(0)], INITIAL).refused == ((old, "already in the dataset"),)


def test_a_label_changed_in_a_batch_file_is_refused_on_read(tmp_path):
    ds = Dataset(tmp_path)
    ds.append([water(0)], INITIAL)
    (atoms,) = read_structures(tmp_path / "batch-00000.extxyz")
    atoms.calc.results["forces"][0, 0] += 0.1
    write_structures(tmp_path / "batch-00000.extxyz", [atoms])
    with pytest.raises(InputError, match="does not match its hash") as info:
        Dataset.open(tmp_path).structures()
    assert info.value.field == "entries.0.hash"


def test_unlabelled_and_nonfinite_structures_refused(tmp_path):
    ds = Dataset(tmp_path)
    bad = water(1)
    bad.calc = SinglePointCalculator(bad, energy=np.nan, forces=np.zeros((3, 3)))

    result = ds.append([water(0, labelled=False), bad, water(2)], INITIAL)

    assert result.added == (labelled_hash(water(2)),)
    assert [reason for _, reason in result.refused] == [
        "no reference energy and forces",
        "reference energy or forces are not finite",
    ]
    # the unlabelled structure may be appended later, once labelled
    assert ds.append([water(0)], INITIAL).added == (labelled_hash(water(0)),)


def test_append_of_nothing_new_writes_nothing(tmp_path):
    path = tmp_path / "dataset"
    result = Dataset(path).append([water(0, labelled=False)], INITIAL)
    assert result.added == () and result.file is None
    assert not path.exists()


def test_provenance_count_must_match(tmp_path):
    with pytest.raises(ValueError, match="2 provenance records for 3 structures"):
        Dataset(tmp_path).append([water(0), water(1), water(2)], [INITIAL, CAGO])


def test_hash_is_stable_through_extxyz_precision(tmp_path):
    """Positions right on a rounding boundary hash the same once stored and read back."""
    # 1e-6 Å boundaries (the old hash rounding) and 1e-8 Å ones (the extxyz text precision)
    atoms = Atoms(
        "H4",
        positions=[[0.0, 0.0, 0.12345650001], [0.0, 0.0, 1.23456749999], [1.0, 0.0, 2.123456785], [2.0, 0.0, -4e-9]],
    )
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((4, 3)))
    back = _extxyz_roundtrip(atoms)
    # the edge cases are real: rounding to 1e-6 Å, or even np.round to 1e-8 Å, would split them
    assert not np.array_equal(np.round(back.positions, 6), np.round(atoms.positions, 6))
    assert not np.array_equal(np.round(back.positions, 8), np.round(atoms.positions, 8))
    assert structure_hash(back) == structure_hash(atoms)  # structure_hash survives the round trip
    ds = Dataset(tmp_path)
    (digest,) = ds.append([atoms], INITIAL).added
    assert labelled_hash(ds.structures()[0]) == digest == labelled_hash(atoms) == labelled_hash(back)
    assert ds.append([atoms], INITIAL).refused == ((digest, "already in the dataset"),)
    assert ds.append([back], INITIAL).refused == ((digest, "already in the dataset"),)


def _extxyz_roundtrip(atoms: Atoms) -> Atoms:
    import io

    from ase.io import read, write

    buffer = io.StringIO()
    write(buffer, atoms, format="extxyz")
    return read(io.StringIO(buffer.getvalue()), format="extxyz")


# --- crash safety ------------------------------------------------------------------------


def test_stray_batch_file_is_ignored_and_overwritten(tmp_path):
    ds = Dataset(tmp_path)
    ds.append([water(0), water(1)], INITIAL)
    # killed between the batch write and the index write: batch-00001 exists, index unaware
    write_structures(tmp_path / "batch-00001.extxyz", [water(7), water(8), water(9)])
    (tmp_path / "batch-00004.extxyz").write_text("garbage")
    (tmp_path / ".index.json.x1y2.tmp").write_text("{half")

    reopened = Dataset(tmp_path)
    assert len(reopened) == 2
    assert len(reopened.structures()) == 2

    result = reopened.append([water(2)], CAGO)

    assert result.file == "batch-00001.extxyz"
    assert len(read_structures(tmp_path / "batch-00001.extxyz")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-00000.extxyz", "batch-00001.extxyz", "index.json"]
    assert [labelled_hash(a) for a in Dataset.open(tmp_path).structures()] == [
        labelled_hash(water(0)),
        labelled_hash(water(1)),
        labelled_hash(water(2)),
    ]


def test_killed_between_batch_and_index_then_rerun_gives_same_result(tmp_path, monkeypatch):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    for path in (clean, crashed):
        Dataset(path).append([water(0)], INITIAL)
    expected = Dataset(clean).append([water(1), water(2)], CAGO)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the index was written")

    monkeypatch.setattr(dataset_module, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        Dataset(crashed).append([water(1), water(2)], CAGO)
    monkeypatch.undo()
    assert (crashed / "batch-00001.extxyz").exists() and len(Dataset(crashed)) == 1

    rerun = Dataset(crashed).append([water(1), water(2)], CAGO)

    assert rerun == expected
    assert (crashed / "batch-00001.extxyz").read_bytes() == (clean / "batch-00001.extxyz").read_bytes()
    assert (crashed / "index.json").read_bytes() == (clean / "index.json").read_bytes()


# --- errors ------------------------------------------------------------------------------


def test_missing_batch_file_raises_input_error(tmp_path):
    ds = Dataset(tmp_path)
    ds.append([water(0)], INITIAL)
    ds.append([water(1)], INITIAL)
    (tmp_path / "batch-00001.extxyz").unlink()

    with pytest.raises(InputError, match="batch-00001.extxyz, which does not exist") as info:
        Dataset.open(tmp_path)

    assert info.value.file == str(tmp_path / "index.json")
    assert info.value.field == "batches.1"


def test_corrupt_index_raises_input_error(tmp_path):
    Dataset(tmp_path).append([water(0)], INITIAL)
    index = tmp_path / "index.json"
    data = json.loads(index.read_text())

    data["entries"][0]["hash"] = 42
    index.write_text(json.dumps(data))
    with pytest.raises(InputError, match="expected a valid string, found 42") as info:
        Dataset(tmp_path)
    assert info.value.field == "entries.0.hash" and info.value.file == str(index)

    index.write_text('{"format": "cagoflow-dataset", "entries": [')
    with pytest.raises(InputError, match="not valid JSON"):
        Dataset(tmp_path)


@pytest.mark.parametrize(
    "change, field, message",
    [
        (lambda d: d.update(format="cagoflow.committee-calibration"), "format", "expected 'cagoflow-dataset'"),
        (lambda d: d.update(version=3), "version", "expected 1 or 2, found 3"),
        (lambda d: d["batches"].reverse(), "batches.0", "expected 'batch-00000.extxyz'"),
        (lambda d: d["entries"][1].update(index=-1), "entries.1.index", "greater than or equal to 0"),
        (lambda d: d["entries"][1].update(file="batch-00007.extxyz"), "entries.1.file", "not listed in 'batches'"),
        (lambda d: d["entries"][3].update(hash=d["entries"][0]["hash"]), "entries.3.hash", "repeats entry 0"),
        (lambda d: d["entries"][1].update(index=0), "entries.1.index", "listed twice"),
        (lambda d: d["entries"][2]["provenance"].pop("stage"), "entries.2.provenance", "lacks the key"),
        (lambda d: d["entries"][2].update(extra=1), "entries.2.extra", "unknown key 'extra'"),
    ],
)
def test_inconsistent_index_names_the_field(tmp_path, change, field, message):
    shutil.copytree(DATA / "dataset-v1", tmp_path / "dataset")
    index = tmp_path / "dataset" / "index.json"
    data = json.loads(index.read_text())
    change(data)
    index.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as info:
        Dataset.open(tmp_path / "dataset")
    assert info.value.field == field and info.value.file == str(index)


def test_changed_batch_file_is_detected(tmp_path):
    ds = Dataset(tmp_path)
    ds.append([water(0)], INITIAL)
    write_structures(tmp_path / "batch-00000.extxyz", [water(5)])
    with pytest.raises(InputError, match="does not match its hash") as info:
        ds.structures()
    assert info.value.field == "entries.0.hash"


def test_open_requires_existing_dataset(tmp_path):
    with pytest.raises(InputError, match="index.json does not exist"):
        Dataset.open(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="found a file"):
        Dataset(tmp_path / "file")


# --- splits ------------------------------------------------------------------------------


def names(n: int) -> list[str]:
    """Stand-in content hashes of ``n`` structures."""
    return [f"structure-{i}" for i in range(n)]


def test_splits_are_reproducible_and_seed_dependent():
    assert make_splits_for_hashes(names(200), 4, seed=7) == make_splits_for_hashes(names(200), 4, seed=7)
    assert make_splits_for_hashes(names(200), 4, seed=7) != make_splits_for_hashes(names(200), 4, seed=8)


def test_split_sizes_bootstrap_and_disjointness():
    n = 1000
    splits = make_splits_for_hashes(names(n), 3, seed=1)

    expected_test = tuple(i for i in range(n) if split_draw(1, f"structure-{i}") < 0.1)
    assert splits.test == expected_test
    assert 70 <= len(splits.test) <= 130
    pool = set(range(n)) - set(splits.test)
    assert len(splits.members) == 3
    for member in splits.members:
        assert len(member.train) == round(0.8 * len(pool))
        assert len(set(member.train)) < len(member.train)  # bootstrap: repeats
        assert list(member.train) == sorted(member.train)
        assert set(member.train) <= pool
        assert len(member.validation) == round(0.1 * len(pool))
        assert len(set(member.validation)) == len(member.validation)
        assert not set(member.validation) & set(member.train)
        assert not set(member.validation) & set(splits.test)
    assert splits.members[0] != splits.members[1] != splits.members[2]


def test_test_set_is_stable_when_dataset_grows():
    hashes = [f"{i:064x}" for i in range(300)]
    small = make_splits_for_hashes(hashes[:120], 2, seed=3)
    large = make_splits_for_hashes(hashes, 2, seed=3)

    assert len(small.test) >= 5
    assert set(small.test_hashes) <= set(large.test_hashes)
    assert large.test[: len(small.test)] == small.test
    # positions that joined later never move old structures out of (or into) the test set
    assert set(large.test_hashes) & set(hashes[:120]) == set(small.test_hashes)


def test_small_datasets_get_one_test_structure_that_can_be_kept():
    assert make_splits_for_hashes([], 2, seed=0) == Splits(test=(), members=(MemberSplit((), ()), MemberSplit((), ())))
    one = make_splits_for_hashes(names(1), 2, seed=0)
    assert one.test == () and one.members[0] == MemberSplit(train=(0,), validation=())
    two = make_splits_for_hashes(["a", "b"], 2, seed=0)
    assert len(two.test) == 1
    assert all(m.train and set(m.train).isdisjoint(two.test) for m in two.members)
    # the forced test structure is kept later when the previous test hashes are passed on
    grown = make_splits_for_hashes(["a", "b", "c", "d"], 2, seed=0, fixed_test=two.test_hashes)
    assert set(two.test_hashes) <= set(grown.test_hashes)


def test_structures_routed_to_the_test_set_count_toward_min_test():
    hashes = names(40)
    routed = hashes[:12]  # a campaign's CAGO structures, placed in the test set on purpose
    splits = make_splits_for_hashes(hashes, 2, seed=3, min_test=8, fixed_test=routed)
    drawn = {h for h in hashes[12:] if split_draw(3, h) < 0.1}
    assert set(splits.test_hashes) == set(routed) | drawn  # 12 >= 8: nothing joins to fill the minimum
    few = make_splits_for_hashes(hashes, 2, seed=3, min_test=8, fixed_test=routed[:3])
    rest = sorted(hashes[3:], key=lambda h: split_draw(3, h))
    assert set(few.test_hashes) == set(routed[:3]) | set(rest[:5])  # 3 routed + the 5 smallest draws: 8


def test_dataset_splits_follow_content_hashes(tmp_path):
    ds = Dataset(tmp_path)
    ds.append([water(i) for i in range(30)], INITIAL)
    before = make_splits_for_hashes([e.hash for e in ds.entries], 3, seed=11, test_fraction=0.2)
    ds.append([water(i) for i in range(30, 60)], CAGO)
    after = make_splits_for_hashes([e.hash for e in ds.entries], 3, seed=11, test_fraction=0.2)

    assert before.hashes == tuple(e.hash for e in ds.entries[:30])
    assert set(before.test_hashes) == set(after.test_hashes) & set(before.hashes)
    assert len(after.test) > len(before.test) >= 1


def test_splits_save_and_load(tmp_path):
    splits = make_splits_for_hashes([f"h{i}" for i in range(40)], 3, seed=5)
    path = splits.save(tmp_path / "splits.json")
    assert Splits.load(path) == splits
    assert Splits.from_json(splits.to_json()) == splits

    path.write_text(json.dumps({"test": [1, "x"], "members": []}))
    with pytest.raises(InputError, match="'test'") as info:
        Splits.load(path)
    assert info.value.file == str(path)
