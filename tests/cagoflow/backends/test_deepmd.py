"""Tests of cagoflow.backends.deepmd: training inputs and results, the committee, its gradients.

The committee fixture trains two tiny members (300 steps) once per session on 20 GFN1-xTB water
frames; everything else reuses them. Measured on 2 shared, heavily loaded cores: ~200 s per
member, 10 min for the file; on idle cores DeePMD's 0.037 s/step makes it ~20 s per member.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from cagoflow.cago_gradients import ExactGradient
from cagoflow.backends import Backend, TrainingSettings, train
from cagoflow.backends.deepmd import (
    CHECKPOINT,
    FROZEN_MODEL,
    LCURVE,
    DeepmdBackend,
    DeepmdCommittee,
    read_lcurve,
)
from cagoflow.cago_objective import Geometry, Objective, Problem
from cagoflow.committee import Committee, DifferentiableCommittee
from cagoflow.errors import InputError
from cagoflow.models import load_committee
from cagoflow.structures import water_box
from real_components import require_module, side_by_side

from .committee_checks import (
    assert_batched_equals_one_at_a_time,
    LAW,
    assert_cago_makes_progress,
    assert_exact_gradient_matches_finite_differences,
    assert_spread_grows_away_from_training,
    assert_torch_energy_matches_predict,
    assert_virial_is_strain_derivative,
)

TYPE_MAP = ("O", "H")
#: Training steps of the committee members: enough for forces that follow the reference.
STEPS = 300
#: Same float64 model, same frames: batching changes nothing but summation order (eV, eV/Å).
BATCH_ATOL = 1e-10


def settings(steps: int = STEPS, seed: int = 1, **kwargs) -> TrainingSettings:
    return TrainingSettings(steps=steps, seed=seed, type_map=TYPE_MAP, **kwargs)


@pytest.fixture(scope="session")
def trained(water_frames, tmp_path_factory):
    """Two tiny members (seeds 1, 2), trained once: their TrainingResults."""
    require_module("deepmd")
    root = tmp_path_factory.mktemp("deepmd-committee")
    backend = DeepmdBackend()
    splits = (water_frames.train_file, water_frames.validation_file)
    results = side_by_side([lambda seed=seed: train(backend, *splits, root / f"member-{seed}", settings(seed=seed)) for seed in (1, 2)])
    for result in results:
        assert result.status == "success", result.message
    return results


@pytest.fixture(scope="session")
def committee(trained) -> DeepmdCommittee:
    return DeepmdBackend().load([result.model for result in trained], device="cpu")


# --- training input (no training) ------------------------------------------------------------------


def test_training_input_from_preset_and_settings(water_frames, tmp_path):
    require_module("dpdata")
    backend = DeepmdBackend(command=["dp"])
    assert isinstance(backend, Backend) and backend.name == "deepmd"
    hyper = {"model": {"fitting_net": {"neuron": [16, 16]}}, "learning_rate": {"start_lr": 0.002}}
    commands = backend.write_training_input(
        water_frames.train_file, water_frames.validation_file, tmp_path, settings(seed=7, hyperparameters=hyper)
    )
    assert commands == [
        ["dp", "--pt", "train", "input.json", "--log-path", "train.log"],
        ["dp", "--pt", "freeze", "-c", "model.ckpt.pt", "-o", "frozen_model.pth", "--log-path", "freeze.log"],
    ]
    config = json.loads((tmp_path / "input.json").read_text())
    model = config["model"]
    assert model["type_map"] == ["O", "H"]
    assert model["descriptor"]["type"] == "se_e2_a"
    assert model["descriptor"]["neuron"] == [8, 16, 32]  # tiny preset
    assert model["descriptor"]["rcut"] == 6.0 and model["descriptor"]["rcut_smth"] == 0.5
    assert model["fitting_net"]["neuron"] == [16, 16]  # merged over the preset
    assert config["learning_rate"] == {"type": "exp", "start_lr": 0.002, "stop_lr": 1e-4, "decay_steps": STEPS // 20}
    assert model["descriptor"]["seed"] == model["fitting_net"]["seed"] == config["training"]["seed"] == 7
    assert config["training"]["numb_steps"] == STEPS
    assert config["loss"]["start_pref_v"] > 0 and config["loss"]["limit_pref_v"] > 0  # the frames carry stress
    # one system per composition, relative to the work directory, with virials from the stress
    (system,) = config["training"]["training_data"]["systems"]
    data = tmp_path / system
    assert (data / "type_map.raw").read_text().split() == ["O", "H"]
    virials = np.load(data / "set.000" / "virial.npy").reshape(-1, 3, 3)
    frame = water_frames.train[0]
    expected = -frame.get_volume() * frame.get_stress(voigt=False)
    np.testing.assert_allclose(virials[0], expected, rtol=1e-10)
    assert len(config["training"]["validation_data"]["systems"]) == 1

    paper = DeepmdBackend(command=["dp"])
    paper.write_training_input(
        water_frames.train_file, water_frames.validation_file, tmp_path / "paper", settings(preset="paper")
    )
    descriptor = json.loads((tmp_path / "paper" / "input.json").read_text())["model"]["descriptor"]
    assert descriptor["neuron"] == [25, 50, 100] and descriptor["axis_neuron"] == 16


def test_frames_without_stress_and_other_compositions(water_frames, tmp_path):
    """No stress: no virial loss; several compositions and periodicities: one system each."""
    require_module("dpdata")
    frames = []
    for atoms in water_frames.train[:3] + [water_box(4, seed=2)]:
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 * len(atoms), forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    gas = molecule("H2O", vacuum=5.0)
    gas.calc = SinglePointCalculator(gas, energy=-150.0, forces=np.zeros((3, 3)))
    write(tmp_path / "mixed.extxyz", frames + [gas])
    DeepmdBackend(command=["dp"]).write_training_input(
        tmp_path / "mixed.extxyz", water_frames.validation_file, tmp_path / "run", settings()
    )
    config = json.loads((tmp_path / "run" / "input.json").read_text())
    assert config["loss"]["start_pref_v"] == config["loss"]["limit_pref_v"] == 0
    systems = config["training"]["training_data"]["systems"]
    assert len(systems) == 3  # 24-atom boxes, the 12-atom box, the molecule
    assert sum((tmp_path / "run" / system / "nopbc").exists() for system in systems) == 1


def test_bad_training_data_names_the_file(water_frames, tmp_path):
    require_module("dpdata")
    backend = DeepmdBackend(command=["dp"])
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is not\nan extxyz file\n")
    with pytest.raises(InputError, match="garbage.extxyz"):
        backend.write_training_input(garbage, water_frames.validation_file, tmp_path / "a", settings())
    only_oxygen_carbon = TrainingSettings(steps=10, seed=1, type_map=("O", "C"))
    with pytest.raises(InputError, match="train.extxyz.*species H are not in the type map"):
        backend.write_training_input(
            water_frames.train_file, water_frames.validation_file, tmp_path / "b", only_oxygen_carbon
        )
    unlabelled = tmp_path / "unlabelled.extxyz"
    write(unlabelled, water_box(2))
    with pytest.raises(InputError, match="unlabelled.extxyz.*no reference energy"):
        backend.write_training_input(unlabelled, water_frames.validation_file, tmp_path / "c", settings())


def test_existing_checkpoint_means_restart(water_frames, tmp_path):
    require_module("dpdata")
    (tmp_path / CHECKPOINT).write_bytes(b"")
    commands = DeepmdBackend(command=["dp"]).write_training_input(
        water_frames.train_file, water_frames.validation_file, tmp_path, settings()
    )
    assert commands[0][-2:] == ["--restart", CHECKPOINT]


def test_training_result_from_learning_curve(tmp_path):
    header = (
        "# step       rmse_val    rmse_trn    rmse_e_val  rmse_e_trn    rmse_f_val  rmse_f_trn   lr\n"
        "# If there is no available reference data, rmse_*_{val,trn} will print nan\n"
    )
    first_run = header + "  1  1.0 2.0  0.5 0.6  3.0 4.0  1e-3\n"
    restarted = header + " 40  1.0 2.0  0.1 0.2  0.3 0.4  1e-4\n"  # a restart appends a header
    (tmp_path / LCURVE).write_text(first_run + restarted)
    (tmp_path / "train.log").write_text("DEEPMD INFO    Trained model has been saved to: model.ckpt\n")
    backend = DeepmdBackend(command=["dp"])
    missing = backend.read_training_result(tmp_path)
    assert missing.status == "failed" and "frozen" in missing.message and "Trained model" in missing.message
    (tmp_path / FROZEN_MODEL).write_bytes(b"model")
    result = backend.read_training_result(tmp_path)
    assert result.status == "success" and result.model == tmp_path / FROZEN_MODEL
    assert result.metrics == {
        "train_energy_per_atom": 0.2,
        "train_forces": 0.4,
        "validation_energy_per_atom": 0.1,
        "validation_forces": 0.3,
        "steps": 40.0,
    }
    (tmp_path / LCURVE).write_text(header + " 40  nan nan  nan nan  nan nan  1e-4\n")
    diverged = backend.read_training_result(tmp_path)
    assert diverged.status == "failed" and "non-finite" in diverged.message and "nan" in diverged.message
    (tmp_path / LCURVE).unlink()
    assert backend.read_training_result(tmp_path).status == "failed"


# --- training ---------------------------------------------------------------------------------------


def test_training_succeeds_with_finite_errors(trained, water_frames):
    reference_rms = np.sqrt(np.mean(np.concatenate([a.get_forces() for a in water_frames.train]) ** 2))
    for result in trained:
        assert result.model.name == FROZEN_MODEL and result.model.is_file()
        assert result.metrics["steps"] == STEPS
        for name in ("train_forces", "validation_forces", "train_energy_per_atom", "validation_energy_per_atom"):
            assert np.isfinite(result.metrics[name])
        assert result.metrics["validation_forces"] < reference_rms  # learnt something


@pytest.mark.slow
def test_failed_training_reports_the_log(water_frames, tmp_path):
    """A setting DeePMD refuses, and labels that make the losses NaN: failed, with the log."""
    require_module("deepmd")
    backend = DeepmdBackend()
    impossible = settings(steps=5, hyperparameters={"model": {"descriptor": {"type": "no_such_descriptor"}}})
    result = train(backend, water_frames.train_file, water_frames.validation_file, tmp_path / "setting", impossible)
    assert result.status == "failed" and result.model is None
    assert "exited with code" in result.message and "no_such_descriptor" in result.message

    frames = []
    for atoms in water_frames.train:
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=np.nan, forces=np.full((len(atoms), 3), np.nan))
        frames.append(atoms)
    write(tmp_path / "nan.extxyz", frames)
    result = train(backend, tmp_path / "nan.extxyz", water_frames.validation_file, tmp_path / "nan", settings(steps=4))
    assert result.status == "failed" and result.model is None
    assert result.message.count("\n") >= 3  # the trainer's last lines


@pytest.mark.slow
def test_restart_continues_from_the_checkpoint(water_frames, tmp_path):
    """A run killed after its checkpoint at step 10, rerun for 20 steps: continues at 10."""
    require_module("deepmd")
    backend = DeepmdBackend()
    splits = (water_frames.train_file, water_frames.validation_file)
    first = backend.write_training_input(*splits, tmp_path, settings(steps=10))
    subprocess.run(first[0], cwd=tmp_path, check=True, capture_output=True)  # the "killed" job: no freeze
    assert read_lcurve(tmp_path / LCURVE)[0] == 10
    assert backend.resume_step(tmp_path) == 10 and backend.resume_step(tmp_path / "elsewhere") is None
    commands = backend.write_training_input(*splits, tmp_path, settings(steps=20))
    assert "--restart" in commands[0]
    result = train(backend, *splits, tmp_path, settings(steps=20))
    assert result.status == "success", result.message
    assert result.metrics["steps"] == 20
    # the rerun appended its own header to the learning curve and went on from step 10
    # (DeePMD redoes the checkpoint's step: its step counter is 0-based)
    lines = (tmp_path / LCURVE).read_text().splitlines()
    headers = [index for index, line in enumerate(lines) if line.startswith("# step")]
    assert len(headers) == 2
    resumed = [int(line.split()[0]) for line in lines[headers[1] :] if not line.startswith("#")]
    assert resumed[0] == 10 and resumed[-1] == 20


def test_fine_tuning_starts_from_the_given_model(trained, committee, water_frames, tmp_path):
    require_module("deepmd")
    backend = DeepmdBackend()
    # a vanishing learning rate: the one step leaves the weights as loaded
    frozen_lr = {"learning_rate": {"start_lr": 1e-9, "stop_lr": 1e-9}}
    start = settings(steps=1, seed=5, init_model=trained[0].model, hyperparameters=frozen_lr)
    commands = backend.write_training_input(water_frames.train_file, water_frames.validation_file, tmp_path, start)
    assert commands[0][-2:] == ["--init-frz-model", str(trained[0].model)]
    # the model section is the trained model's (its resolved sel), so a restart rebuilds it
    member_input = json.loads((trained[0].model.parent / "out.json").read_text())["model"]["descriptor"]
    descriptor = json.loads((tmp_path / "input.json").read_text())["model"]["descriptor"]
    assert descriptor["sel"] == member_input["sel"] and isinstance(descriptor["sel"], list)
    completed = subprocess.run(commands[0], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    # the checkpoint is the member it started from (measured: 3e-7 eV/Å), not a new model
    tuned = DeepmdCommittee.from_files([tmp_path / CHECKPOINT], device="cpu").predict(water_frames.test).forces[0]
    members = committee.predict(water_frames.test).forces
    rms = lambda x: float(np.sqrt(np.mean(x**2)))  # noqa: E731
    assert rms(tuned - members[0]) < 1e-3 * rms(members[1] - members[0])


# --- the committee -----------------------------------------------------------------------------------


def test_committee_protocols_and_shapes(committee, water_frames):
    assert isinstance(committee, Committee) and isinstance(committee, DifferentiableCommittee)
    assert committee.n_members == 2
    frames = water_frames.test
    prediction = committee.predict(frames)
    assert prediction.energies.shape == (2, len(frames))
    assert prediction.forces.shape == (2, 24 * len(frames), 3)
    assert prediction.virials.shape == (2, len(frames), 3, 3)
    np.testing.assert_array_equal(prediction.natoms, [24] * len(frames))
    # units: eV per atom and eV/Å close to the GFN1-xTB labels (a unit slip would be off by 27×)
    reference = np.array([a.get_potential_energy() for a in frames])
    assert np.abs(prediction.energies.mean(0) - reference).max() / 24 < 0.5
    reference_forces = np.concatenate([a.get_forces() for a in frames])
    assert np.corrcoef(prediction.forces.mean(0).ravel(), reference_forces.ravel())[0, 1] > 0.5
    # the members differ (different seeds)
    assert np.abs(prediction.forces[0] - prediction.forces[1]).max() > 1e-3
    # subsets share the loaded models
    single = committee.subset([1]).predict(frames)
    np.testing.assert_allclose(single.forces[0], prediction.forces[1], rtol=0, atol=BATCH_ATOL)


def test_spread_grows_away_from_the_training_data(committee, water_frames):
    assert_spread_grows_away_from_training(committee, water_frames.train[0])


def test_batched_equals_one_at_a_time(committee, water_frames):
    """Equal sizes stacked, ragged sizes grouped, a molecule without cell, tiny batches split."""
    split = DeepmdCommittee(committee.members, "cpu", batch_atoms=30)
    assert_batched_equals_one_at_a_time(committee, split, water_frames.test, BATCH_ATOL)


def test_predictions_match_deepmds_own_evaluator(committee, water_frames, trained):
    from deepmd.infer import DeepPot

    frames = water_frames.test
    evaluator = DeepPot(str(trained[0].model))
    types = [evaluator.get_type_map().index(s) for s in frames[0].get_chemical_symbols()]
    energy, forces, virial = evaluator.eval(
        np.stack([a.positions.ravel() for a in frames]), np.stack([np.asarray(a.cell).ravel() for a in frames]), types
    )
    ours = committee.predict(frames)
    np.testing.assert_allclose(ours.energies[0], energy.ravel(), rtol=0, atol=BATCH_ATOL)
    np.testing.assert_allclose(ours.forces[0], forces.reshape(-1, 3), rtol=0, atol=BATCH_ATOL)
    np.testing.assert_allclose(ours.virials[0], virial.reshape(-1, 3, 3), rtol=0, atol=BATCH_ATOL)


def test_checkpoint_predicts_like_the_frozen_model(committee, trained, water_frames):
    checkpoint = trained[0].model.parent / CHECKPOINT
    eager = DeepmdCommittee.from_files([checkpoint, trained[1].model], device="cpu")
    np.testing.assert_allclose(
        eager.predict(water_frames.test).forces, committee.predict(water_frames.test).forces, rtol=0, atol=BATCH_ATOL
    )


def test_virial_is_the_strain_derivative_of_the_energy(committee, water_frames):
    """W = −dE/dε (eV), central differences with ε = 1e-5 on a strained, rattled frame."""
    assert_virial_is_strain_derivative(committee, water_frames.test[-1], 1e-6, absolute=1e-6)


def test_exact_cago_gradient_matches_finite_differences(committee, water_frames):
    """Autograd (double backprop through the model) vs forward differences, h = 1e-4 Å:
    correlation ≥ 0.999 over all 3N + 6 components (measured: ~0.99999)."""
    assert_exact_gradient_matches_finite_differences(committee, water_frames.test[0], 0.05)


def test_exact_gradient_is_finite_without_spread(trained, water_frames):
    """Two copies of one model: σ̂ = 0 everywhere; the variance floor keeps the gradient finite."""
    twins = DeepmdCommittee.from_files([trained[0].model, trained[0].model], device="cpu")
    atoms = water_frames.test[0]
    geometry = Geometry(atoms, optimize_cell=True)
    (evaluation,) = ExactGradient(twins)([Problem(geometry, Objective(LAW, 0.2))], [geometry.initial()])
    assert np.isfinite(evaluation.value) and np.isfinite(evaluation.gradient).all()
    assert evaluation.sigma_cal.max() < 1e-6


def test_cago_with_the_exact_gradient_makes_progress(committee, water_frames):
    assert_cago_makes_progress(committee, water_frames.test[1])


def test_torch_energy_matches_predict(committee, water_frames):
    assert_torch_energy_matches_predict(committee, list(water_frames.test[:3]), BATCH_ATOL)


# --- errors -------------------------------------------------------------------------------------------


def test_files_that_are_not_deepmd_models(tmp_path, trained):
    require_module("deepmd")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a model at all")
    scripted = tmp_path / "other.pth"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    tensorflow = tmp_path / "graph.pb"
    tensorflow.write_bytes(b"")
    for path, message in (
        (garbage, "not a DeePMD-kit PyTorch model"),
        (scripted, "not a DeePMD-kit PyTorch model"),
        (tensorflow, "TensorFlow"),
        (tmp_path / "missing.pth", "does not exist"),
    ):
        with pytest.raises(InputError, match=message) as error:
            DeepmdCommittee.from_files([trained[0].model, path], device="cpu")
        assert error.value.file == str(path)


def test_unknown_species_name_the_model(committee):
    methane = molecule("CH4")
    with pytest.raises(InputError, match=r"knows the species \['O', 'H'\], not C") as error:
        committee.predict([methane])
    assert error.value.file == str(committee.files[0])
    with pytest.raises(InputError, match="not C"):
        committee.torch_energy([methane])


def test_partly_periodic_structures_are_refused(committee):
    slab = water_box(4)
    slab.pbc = (True, True, False)
    with pytest.raises(InputError, match="periodic along some axes"):
        committee.predict([slab])


def test_committee_file_builds_the_committee(trained, tmp_path):
    models = ", ".join(str(result.model) for result in trained)
    (tmp_path / "committee.yaml").write_text(f"backend: deepmd\nmodels: [{models}]\ndevice: cpu\n")
    built = load_committee(tmp_path / "committee.yaml")
    assert isinstance(built, DeepmdCommittee) and built.n_members == 2 and built.device == "cpu"
