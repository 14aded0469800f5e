"""Tests of cagoflow.backends.nequip: NequIP and Allegro training inputs, results, the committee.

Every test runs for both model families. The ``trained`` fixture trains two tiny members per
family once per module on 20 GFN1-xTB water frames: member 1 is compiled (AOTInductor,
``--target batch``), member 2 is not (its checkpoint serves as the eager model), so the
committee exercises both inference paths and only one compilation per family is paid.
Training and inference run single-threaded: on a shared, busy machine two threads are up to
ten times slower, and on an idle one the tiny models gain nothing from a second thread.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from cagoflow.backends import Backend, TrainingSettings, train
from cagoflow.backends.nequip import (
    CHECKPOINT_NAME,
    COMPILED_NAME,
    CONFIG_NAME,
    LAST_CHECKPOINT_NAME,
    AllegroBackend,
    NequipBackend,
    NequipCommittee,
    deep_merge,
)
from cagoflow.committee import Committee, DifferentiableCommittee
from cagoflow.errors import InputError
from cagoflow.models import load_committee
from cagoflow.structures import water_box
from real_components import require_module, side_by_side

from .committee_checks import (
    assert_batched_equals_one_at_a_time,
    assert_cago_makes_progress,
    assert_exact_gradient_matches_finite_differences,
    assert_spread_grows_away_from_training,
    assert_torch_energy_matches_predict,
    assert_virial_is_strain_derivative,
)

FAMILIES = ("nequip", "allegro")
TYPE_MAP = ("O", "H")
#: Optimiser steps of the committee members (tiny preset, batches of 4 of 20 frames).
STEPS = 100
#: Same float64 model, same structures: batching changes only the summation order (eV, eV/Å).
BATCH_ATOL = 1e-9


def settings(steps: int = STEPS, seed: int = 1, **kwargs) -> TrainingSettings:
    return TrainingSettings(steps=steps, seed=seed, type_map=TYPE_MAP, **kwargs)


def backend(family: str, compile_device: str | None = "cpu") -> NequipBackend:
    """The family's backend with programs that run single-threaded (see the module docstring)."""
    bin_dir = Path(sys.executable).parent
    return NequipBackend(
        family,
        compile_device=compile_device,
        train_command=("env", "OMP_NUM_THREADS=1", str(bin_dir / "nequip-train")),
        compile_command=("env", "OMP_NUM_THREADS=1", str(bin_dir / "nequip-compile")),
    )


def metrics_rows(workdir: Path) -> list[dict[str, str]]:
    """All rows of the CSV logs of a work directory, run after run."""
    rows = []
    for path in sorted((workdir / "logs").glob("version_*/metrics.csv")):
        with open(path, newline="") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


@pytest.fixture(scope="module")
def single_thread():
    """Torch in this process on one thread while this module runs (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, water_frames, tmp_path_factory, single_thread):
    """(family, [TrainingResult, TrainingResult]): member 1 compiled, member 2 checkpoint only."""
    family = request.param
    require_module("nequip")
    if family == "allegro":
        require_module("allegro")
    root = tmp_path_factory.mktemp(f"{family}-committee")

    def member(seed: int, compile_device: str | None):
        return lambda: train(
            backend(family, compile_device), water_frames.train_file, water_frames.validation_file,
            root / f"member-{seed}", settings(seed=seed),
        )  # fmt: skip

    results = side_by_side([member(1, "cpu"), member(2, None)])
    for result in results:
        assert result.status == "success", result.message
    return family, results


@pytest.fixture(scope="module")
def committee(trained) -> NequipCommittee:
    family, results = trained
    return backend(family).load([result.model for result in results], device="cpu")


# --- training input (no training) ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_training_input_from_preset_and_settings(family, water_frames, tmp_path):
    plain = NequipBackend(family)
    assert isinstance(plain, Backend) and plain.name == family
    assert AllegroBackend().name == "allegro" and NequipBackend().name == "nequip"
    hyper = {"training_module": {"optimizer": {"lr": 0.002}}, "data": {"train_dataloader": {"batch_size": 2}}}
    commands = plain.write_training_input(
        water_frames.train_file, water_frames.validation_file, tmp_path, settings(seed=7, hyperparameters=hyper)
    )
    workdir = tmp_path.resolve()
    assert commands[0][1:] == ["-cp", str(workdir), "-cn", CONFIG_NAME, "seed=7", f"hydra.run.dir={workdir}"]
    assert Path(commands[0][0]).name == "nequip-train"
    assert Path(commands[1][0]).name == "nequip-compile"
    assert commands[1][1:] == [
        str(workdir / CHECKPOINT_NAME),
        str(workdir / COMPILED_NAME),
        *("--mode", "aotinductor", "--device", "cpu", "--target", "batch"),
    ]
    config = yaml.safe_load((workdir / CONFIG_NAME).read_text())
    assert config["seed"] == 7 and config["model_type_names"] == ["O", "H"]
    assert config["trainer"]["max_steps"] == STEPS and config["trainer"]["check_val_every_n_epoch"] == 1
    data = config["data"]
    assert data["_target_"] == "nequip.data.datamodule.NequIPDataModule"
    assert data["train_dataset"]["_target_"] == "nequip.data.dataset.ASEDataset"
    assert data["train_dataset"]["file_path"] == str(water_frames.train_file.resolve())
    assert data["val_dataset"]["file_path"] == str(water_frames.validation_file.resolve())
    transforms = [t["_target_"].rsplit(".", 1)[1] for t in data["train_dataset"]["transforms"]]
    assert transforms == ["ChemicalSpeciesToAtomTypeMapper", "NeighborListTransform"]
    assert data["train_dataloader"]["batch_size"] == 2  # merged over the preset
    module = config["training_module"]
    assert module["optimizer"] == {"_target_": "torch.optim.Adam", "lr": 0.002}
    assert module["loss"]["_target_"] == "nequip.train.EnergyForceStressLoss"  # the frames carry stress
    assert module["loss"]["coeffs"] == {"total_energy": 5.0, "forces": 1.0, "stress": 100.0}
    model = module["model"]
    assert model["_target_"] == {"nequip": "nequip.model.NequIPGNNModel", "allegro": "allegro.model.AllegroModel"}[family]
    assert model["l_max"] == 1 and config["cutoff_radius"] == 4.5  # tiny
    assert model["seed"] == "${seed}" and model["type_names"] == "${model_type_names}"

    paper = plain.write_training_input(
        water_frames.train_file, water_frames.validation_file, tmp_path / "paper", settings(preset="paper")
    )
    assert len(paper) == 2
    config = yaml.safe_load((tmp_path / "paper" / CONFIG_NAME).read_text())
    model = config["training_module"]["model"]
    assert config["cutoff_radius"] == 6.0 and model["l_max"] == 2
    assert config["training_module"]["_target_"] == "nequip.train.EMALightningModule"
    if family == "allegro":  # paper-notes.md
        assert model["num_layers"] == 2 and model["num_tensor_features"] == 16
        assert (model["allegro_mlp_hidden_layers_depth"], model["allegro_mlp_hidden_layers_width"]) == (3, 128)
        assert (model["scalar_embed_mlp_hidden_layers_depth"], model["scalar_embed_mlp_hidden_layers_width"]) == (3, 128)
        assert model["radial_chemical_embed"]["num_bessels"] == 8
    else:
        assert model["num_bessels"] == 8


def test_frames_without_stress_train_without_it(water_frames, tmp_path):
    frames = []
    for atoms in water_frames.train[:3]:
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    write(tmp_path / "nostress.extxyz", frames)
    NequipBackend().write_training_input(tmp_path / "nostress.extxyz", water_frames.validation_file, tmp_path, settings())
    module = yaml.safe_load((tmp_path / CONFIG_NAME).read_text())["training_module"]
    assert module["loss"]["_target_"] == "nequip.train.EnergyForceLoss"
    assert "stress" not in module["loss"]["coeffs"] and "stress_rmse" not in module["val_metrics"]["coeffs"]


def test_bad_training_data_names_the_file(water_frames, tmp_path):
    nequip = NequipBackend()
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is not\nan extxyz file\n")
    with pytest.raises(InputError, match="garbage.extxyz"):
        nequip.write_training_input(garbage, water_frames.validation_file, tmp_path / "a", settings())
    only_oxygen_carbon = TrainingSettings(steps=10, seed=1, type_map=("O", "C"))
    with pytest.raises(InputError, match="train.extxyz.*species H are not in the type map"):
        nequip.write_training_input(water_frames.train_file, water_frames.validation_file, tmp_path / "b", only_oxygen_carbon)
    unlabelled = tmp_path / "unlabelled.extxyz"
    write(unlabelled, water_box(2))
    with pytest.raises(InputError, match="unlabelled.extxyz.*no reference energy"):
        nequip.write_training_input(water_frames.train_file, unlabelled, tmp_path / "c", settings())


def test_restart_fine_tuning_and_no_compile_commands(water_frames, tmp_path):
    (tmp_path / LAST_CHECKPOINT_NAME).write_bytes(b"")
    init = tmp_path / "previous" / "model.nequip.pt2"
    init.parent.mkdir()
    init.write_bytes(b"")
    (init.parent / "model.ckpt").write_bytes(b"")
    commands = NequipBackend(compile_device=None).write_training_input(
        water_frames.train_file, water_frames.validation_file, tmp_path, settings(init_model=init)
    )
    assert len(commands) == 1  # no compilation
    assert commands[0][-1] == f"++ckpt_path={tmp_path.resolve() / LAST_CHECKPOINT_NAME}"
    model = yaml.safe_load((tmp_path / CONFIG_NAME).read_text())["training_module"]["model"]
    assert model == {"_target_": "nequip.model.ModelFromCheckpoint", "checkpoint_path": str((init.parent / "model.ckpt").resolve())}
    # a compiled member travels with its eager twin; a checkpoint alone is one file
    assert NequipBackend().model_files(init) == [init, init.parent / "model.ckpt"]
    assert NequipBackend().model_files(init.parent / "model.ckpt") == [init.parent / "model.ckpt"]
    (init.parent / "model.ckpt").unlink()
    with pytest.raises(InputError, match="checkpoint"):
        NequipBackend().write_training_input(
            water_frames.train_file, water_frames.validation_file, tmp_path / "b", settings(init_model=init)
        )


def test_deep_merge_keeps_the_base():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3]}, "e": {"f": 2}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": {"f": 2}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_training_result_from_the_metrics(tmp_path):
    columns = [
        "epoch",
        "step",
        "train_loss_step/weighted_sum",
        "train_metric_epoch/forces_rmse",
        "train_metric_epoch/per_atom_energy_rmse",
        "val0_epoch/forces_rmse",
        "val0_epoch/per_atom_energy_rmse",
    ]
    header = ",".join(columns) + "\n"
    log = tmp_path / "logs" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text(header + "0,0,1.0,,,,\n0,4,0.5,,,0.3,0.01\n0,4,,0.4,0.02,,\n")
    (tmp_path / "step-0.log").write_text("line 1\nline 2\nTRAIN RUN END\n")
    missing = NequipBackend().read_training_result(tmp_path)
    assert missing.status == "failed" and "model.ckpt" in missing.message and "TRAIN RUN END" in missing.message
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"")
    uncompiled = NequipBackend().read_training_result(tmp_path)
    assert uncompiled.status == "failed" and COMPILED_NAME in uncompiled.message
    (tmp_path / COMPILED_NAME).write_bytes(b"")
    result = NequipBackend().read_training_result(tmp_path)
    assert result.status == "success" and result.model == tmp_path / COMPILED_NAME
    assert result.metrics == {
        "train_loss": 0.5,
        "train_forces": 0.4,
        "train_energy_per_atom": 0.02,
        "validation_forces": 0.3,
        "validation_energy_per_atom": 0.01,
    }
    assert NequipBackend(compile_device=None).read_training_result(tmp_path).model == tmp_path / CHECKPOINT_NAME
    # a restart's log (version_1) continues the first one; NaN there fails the member
    restarted = tmp_path / "logs" / "version_1" / "metrics.csv"
    restarted.parent.mkdir()
    restarted.write_text(header + "1,9,nan,,,nan,nan\n")
    diverged = NequipBackend().read_training_result(tmp_path)
    assert diverged.status == "failed" and diverged.model is None
    assert "non-finite" in diverged.message and "validation_forces" in diverged.message


# --- training ---------------------------------------------------------------------------------------


def test_training_succeeds_with_finite_errors(trained, water_frames):
    family, results = trained
    reference_rms = np.sqrt(np.mean(np.concatenate([a.get_forces() for a in water_frames.train]) ** 2))
    compiled, eager = (result.model for result in results)
    assert compiled.name == COMPILED_NAME and (compiled.parent / CHECKPOINT_NAME).is_file()
    assert eager.name == CHECKPOINT_NAME and not (eager.parent / COMPILED_NAME).exists()
    for result in results:
        assert result.metrics["steps"] == STEPS
        for name in ("train_forces", "validation_forces", "train_energy_per_atom", "validation_energy_per_atom"):
            assert np.isfinite(result.metrics[name])
        assert result.metrics["validation_forces"] < 0.6 * reference_rms  # learnt something (untrained: ~1)


@pytest.mark.slow
def test_failed_training_reports_the_log(water_frames, tmp_path):
    """A model nequip cannot build: failed, with the trainer's last lines."""
    require_module("nequip")
    impossible = settings(steps=5, hyperparameters={"training_module": {"model": {"_target_": "nequip.model.NoSuchModel"}}})
    result = train(backend("nequip", None), water_frames.train_file, water_frames.validation_file, tmp_path, impossible)
    assert result.status == "failed" and result.model is None
    assert "exited with code" in result.message and "NoSuchModel" in result.message
    assert result.message.count("\n") >= 5


@pytest.mark.slow
def test_restart_continues_from_the_last_checkpoint(water_frames, tmp_path):
    """A run stopped after 10 steps, rerun for 20: continues at step 10."""
    require_module("nequip")
    nequip = backend("nequip", None)
    first = nequip.write_training_input(water_frames.train_file, water_frames.validation_file, tmp_path, settings(steps=10))
    subprocess.run(first[0], cwd=tmp_path, check=True, capture_output=True)  # the "killed" job
    assert (tmp_path / LAST_CHECKPOINT_NAME).exists()
    assert nequip.resume_step(tmp_path) == 10 and nequip.resume_step(tmp_path / "elsewhere") is None
    result = train(nequip, water_frames.train_file, water_frames.validation_file, tmp_path, settings(steps=20))
    assert result.status == "success", result.message
    assert result.metrics["steps"] == 20
    with open(tmp_path / "logs" / "version_1" / "metrics.csv", newline="") as handle:
        second_run = list(csv.DictReader(handle))
    assert min(int(row["step"]) for row in second_run) >= 10  # no step of the first run again
    assert sum(1 for row in second_run if row.get("train_loss_step/weighted_sum")) == 10


def test_fine_tuning_starts_from_the_given_model(trained, water_frames, tmp_path):
    """Two steps from a trained member: the first step already has its small error."""
    family, results = trained
    start = settings(steps=2, seed=5, init_model=results[0].model)
    result = train(backend(family, None), water_frames.train_file, water_frames.validation_file, tmp_path, start)
    assert result.status == "success", result.message
    first = next(row for row in metrics_rows(tmp_path) if row.get("train_metric_step/forces_rmse"))
    assert float(first["train_metric_step/forces_rmse"]) < 1.5 * results[0].metrics["train_forces"]
    # the fine-tuned checkpoint loads (its model is built from the one it started from)
    tuned = backend(family).load([result.model, results[0].model], device="cpu").predict(water_frames.test)
    assert np.abs(tuned.forces[0] - tuned.forces[1]).max() < 0.5 * np.abs(tuned.forces[1]).max()


# --- the committee -----------------------------------------------------------------------------------


def test_committee_protocols_and_shapes(committee, water_frames):
    assert isinstance(committee, Committee) and isinstance(committee, DifferentiableCommittee)
    assert committee.n_members == 2 and committee.device == "cpu"
    frames = water_frames.test
    prediction = committee.predict(frames)
    assert prediction.energies.shape == (2, len(frames))
    assert prediction.forces.shape == (2, 24 * len(frames), 3)
    assert prediction.virials.shape == (2, len(frames), 3, 3)
    np.testing.assert_array_equal(prediction.natoms, [24] * len(frames))
    # units: eV and eV/Å close to the GFN1-xTB labels (a unit slip would be off by 23× or more)
    reference = np.array([a.get_potential_energy() for a in frames])
    assert np.abs(prediction.energies.mean(0) - reference).max() / 24 < 0.2
    reference_forces = np.concatenate([a.get_forces() for a in frames])
    assert np.corrcoef(prediction.forces.mean(0).ravel(), reference_forces.ravel())[0, 1] > 0.8
    reference_virials = np.stack([-a.get_volume() * a.get_stress(voigt=False) for a in frames])
    assert np.corrcoef(prediction.virials.mean(0).ravel(), reference_virials.ravel())[0, 1] > 0.5
    # the members differ (different seeds), and a subset holds the same models
    assert np.abs(prediction.forces[0] - prediction.forces[1]).max() > 1e-3
    single = committee.subset([1]).predict(frames)
    np.testing.assert_array_equal(single.forces[0], prediction.forces[1])


def test_spread_grows_away_from_the_training_data(committee, water_frames):
    assert_spread_grows_away_from_training(committee, water_frames.train[0])


def test_batched_equals_one_at_a_time(committee, water_frames):
    """Several sizes in one batch, a molecule without cell, lone structures (compiled: padded),
    batches split by atom count."""
    split = NequipCommittee(committee._members, committee.family, "cpu", batch_atoms=30)
    assert_batched_equals_one_at_a_time(committee, split, water_frames.test, BATCH_ATOL)


def test_compiled_file_predicts_like_its_checkpoint(committee, trained, water_frames):
    family, results = trained
    compiled = results[0].model
    eager = backend(family).load([compiled.parent / CHECKPOINT_NAME, results[1].model], device="cpu")
    ours, theirs = committee.predict(water_frames.test), eager.predict(water_frames.test)
    np.testing.assert_allclose(ours.energies, theirs.energies, rtol=0, atol=BATCH_ATOL)
    np.testing.assert_allclose(ours.forces, theirs.forces, rtol=0, atol=BATCH_ATOL)
    np.testing.assert_allclose(ours.virials, theirs.virials, rtol=0, atol=BATCH_ATOL)


def test_virial_is_the_strain_derivative_of_the_energy(committee, water_frames):
    """W = −dE/dε (eV), central differences with ε = 1e-5 on a strained, rattled frame."""
    assert_virial_is_strain_derivative(committee, water_frames.test[-1], 1e-5)


def test_torch_energy_matches_predict(committee, water_frames):
    assert_torch_energy_matches_predict(committee, list(water_frames.test[:3]), BATCH_ATOL)


def test_exact_cago_gradient_matches_finite_differences(committee, water_frames):
    """Autograd (double backprop through the eager models) vs batched forward differences,
    h = 1e-4 Å, over all 3N + 6 components (measured: correlation 0.9999997)."""
    assert_exact_gradient_matches_finite_differences(committee, water_frames.test[0], 0.02)


def test_cago_with_the_exact_gradient_makes_progress(committee, water_frames):
    assert_cago_makes_progress(committee, water_frames.test[1])


# --- errors -------------------------------------------------------------------------------------------


def test_files_that_are_not_models_of_this_backend(trained, tmp_path):
    family, results = trained
    other = "allegro" if family == "nequip" else "nequip"
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, foreign)
    deepmd = tmp_path / "frozen_model.pth"
    deepmd.write_bytes(b"")
    broken = tmp_path / "broken.nequip.pt2"
    broken.write_bytes(b"not a zip")
    eager = results[1].model
    for path, message in (
        (garbage, "not a NequIP-framework checkpoint"),
        (foreign, "not a NequIP-framework checkpoint"),
        (deepmd, "another backend"),
        (broken, "compiled NequIP model"),
        (tmp_path / "missing.ckpt", "does not exist"),
    ):
        with pytest.raises(InputError, match=message) as error:
            backend(family).load([eager, path], device="cpu")
        assert error.value.file == str(path)
    with pytest.raises(InputError, match=f"this is a {family} model, but the committee's backend is {other}"):
        backend(other).load([eager], device="cpu")


def test_unknown_species_name_the_model(committee):
    methane = molecule("CH4")
    with pytest.raises(InputError, match="knows the species O, H only; the structure has C") as error:
        committee.predict([methane])
    assert error.value.file == str(committee.model_files[0])
    with pytest.raises(InputError, match="has C"):
        committee.torch_energy([methane])


def test_committee_file_builds_the_committee(trained, tmp_path):
    family, results = trained
    committee_file = tmp_path / "committee.yaml"
    committee_file.write_text(yaml.safe_dump({"backend": family, "models": [str(r.model) for r in results], "device": "cpu"}))
    built = load_committee(committee_file)
    assert isinstance(built, NequipCommittee) and built.n_members == 2 and built.device == "cpu"
    assert built.family == family
