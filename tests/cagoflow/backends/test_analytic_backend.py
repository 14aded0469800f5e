"""Tests of the analytic backend: Morse members fitted to synthetic labels, trained and loaded.

The labels come from a known Morse model (plus per-species reference energies and a little
noise) on rattled 12-atom water boxes, so a fit must recover forces to well under the force
scale, and members trained on different bootstraps from different seeds must differ.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from cagoflow import backends
from cagoflow.morse_committee import MorseCalculator, MorseCommittee, MorseModel, MorsePair
from cagoflow.backends import Backend, TrainingSettings
from cagoflow.backends import analytic_train
from cagoflow.backends.analytic import (
    AnalyticBackend,
    AnalyticHyperparameters,
    ReferencedMorseCommittee,
    TrainingInput,
    read_json_file,
    read_model_file,
    write_model_file,
)
from cagoflow.errors import InputError
from cagoflow.models import load_committee
from cagoflow.io import atomic_write_json, read_structures, write_structures
from cagoflow.structures import water_box

TRUTH = MorseModel.from_pairs(
    {
        ("H", "H"): MorsePair(D=0.05, alpha=1.8, r0=1.7),
        ("H", "O"): MorsePair(D=0.8, alpha=2.2, r0=1.0),
        ("O", "O"): MorsePair(D=0.2, alpha=1.2, r0=2.9),
    }
)
REFERENCE_EV = {"H": -13.6, "O": -432.0}
FORCE_NOISE = 0.03  # eV/Å
ENERGY_NOISE = 0.002  # eV/atom
STEPS = 400  # enough for the fits below to converge (they stop after 150 to 300 iterations)
TYPE_MAP = ("O", "H")


@dataclass(frozen=True)
class Data:
    train: Path
    validation: Path
    bootstrap: Path  # a bootstrap resample of the training structures
    small: Path  # 4 training structures, for quick runs
    force_scale: float  # RMS of the labelled force components, eV/Å
    truth_validation: list[Atoms]  # validation structures with noiseless Morse labels


def labelled(atoms: Atoms, rng: np.random.Generator) -> tuple[Atoms, Atoms]:
    """The structure with noisy labels (truth + reference energies + noise), and with exact Morse labels."""
    exact = atoms.copy()
    exact.calc = MorseCalculator(TRUTH)
    energy, forces = exact.get_potential_energy(), exact.get_forces()
    reference = sum(REFERENCE_EV[s] for s in atoms.get_chemical_symbols())
    noisy = atoms.copy()
    noisy.calc = SinglePointCalculator(
        noisy,
        energy=energy + reference + ENERGY_NOISE * len(atoms) * rng.standard_normal(),
        forces=forces + FORCE_NOISE * rng.standard_normal(forces.shape),
    )
    return noisy, exact


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(7)
    box = water_box(4)
    noisy, exact = [], []
    for _ in range(20):
        atoms = box.copy()
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        a, b = labelled(atoms, rng)
        noisy.append(a)
        exact.append(b)
    train, validation = noisy[:16], noisy[16:]
    bootstrap = [train[k] for k in np.random.default_rng(1).choice(len(train), len(train))]
    forces = np.concatenate([a.get_forces() for a in train])
    return Data(
        train=write_structures(folder / "train.extxyz", train),
        validation=write_structures(folder / "validation.extxyz", validation),
        bootstrap=write_structures(folder / "bootstrap.extxyz", bootstrap),
        small=write_structures(folder / "small.extxyz", train[:4]),
        force_scale=float(np.sqrt(np.mean(forces**2))),
        truth_validation=exact[16:],
    )


def settings(seed: int = 0, steps: int = STEPS, **kwargs) -> TrainingSettings:
    return TrainingSettings(steps=steps, seed=seed, type_map=TYPE_MAP, **kwargs)


def run_trainer(workdir: Path, train: Path, validation: Path, training: TrainingSettings) -> dict:
    """Write the backend's input and run its trainer in this process; the model file's contents."""
    commands = AnalyticBackend().write_training_input(train, validation, workdir, training)
    assert commands[0][1:] == ["-m", "cagoflow.backends.analytic_train", "input.json"]
    assert analytic_train.main([str(workdir / "input.json")]) == 0
    return json.loads((workdir / "model.json").read_text())


@pytest.fixture(scope="module")
def member_a(data, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("member-a")
    run_trainer(workdir, data.train, data.validation, settings(seed=0))
    return workdir / "model.json"


@pytest.fixture(scope="module")
def member_b(data, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("member-b")
    run_trainer(workdir, data.bootstrap, data.validation, settings(seed=1))
    return workdir / "model.json"


def rmse(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


# --- training ------------------------------------------------------------------------------


def test_backend_follows_the_protocol():
    assert isinstance(AnalyticBackend(), Backend)
    assert AnalyticBackend().name == "analytic"


def test_training_recovers_the_forces(data, member_a):
    content = json.loads(member_a.read_text())
    metrics = content["metrics"]
    assert content["training"]["converged"]
    assert metrics["train_forces"] < 0.1 * data.force_scale
    assert metrics["validation_forces"] < 0.1 * data.force_scale
    assert metrics["train_energy_per_atom"] < 2 * ENERGY_NOISE
    # against the noiseless truth: the fit sees through the label noise
    committee = AnalyticBackend().load([member_a])
    prediction = committee.predict(data.truth_validation)
    truth_forces = np.concatenate([a.get_forces() for a in data.truth_validation])
    assert rmse(prediction.forces[0] - truth_forces) < FORCE_NOISE
    fitted, _ = read_model_file(member_a)
    np.testing.assert_allclose(fitted.r0[0], TRUTH.r0[0], rtol=0.05)
    # only the total reference energy of the (fixed) H2O composition is determined by the data
    composition_energy = fitted.reference_energies[0] @ [2, 1]  # species sorted: H, O
    assert composition_energy == pytest.approx(2 * REFERENCE_EV["H"] + REFERENCE_EV["O"], abs=0.05)


def test_training_writes_a_log(member_a):
    log = (member_a.parent / "train.log").read_text().splitlines()
    assert log[0].startswith("analytic Morse fit: 16 training and 4 validation structures")
    assert log[1].startswith("iteration     0  loss")
    assert sum(line.startswith("iteration") for line in log) >= 3
    assert log[-1].startswith("done after")


def test_members_with_different_seeds_and_bootstraps_differ(data, member_a, member_b):
    a, b = (read_model_file(path)[0] for path in (member_a, member_b))
    assert not np.allclose(a.D, b.D, rtol=1e-6, atol=0)
    prediction = AnalyticBackend().load([member_a, member_b]).predict(read_structures(data.validation))
    spread = np.abs(prediction.forces[0] - prediction.forces[1]).max()
    assert 1e-4 < spread < FORCE_NOISE * 10
    assert json.loads(member_b.read_text())["metrics"]["validation_forces"] < 0.1 * data.force_scale


def test_starting_parameters_depend_on_the_seed_only(data, tmp_path):
    """steps = 0 writes the (perturbed) starting model: same seed → same numbers, another seed → others."""
    first = run_trainer(tmp_path / "first", data.small, data.small, settings(seed=3, steps=0))
    again = run_trainer(tmp_path / "again", data.small, data.small, settings(seed=3, steps=0))
    other = run_trainer(tmp_path / "other", data.small, data.small, settings(seed=4, steps=0))
    assert first["pairs"] == again["pairs"]
    assert first["pairs"] != other["pairs"]
    default = MorseModel.for_symbols(["H", "O"])
    assert first["pairs"]["H-O"]["r0"] == pytest.approx(default.r0[0, 0, 1], rel=0.5)


def test_training_is_deterministic(data, tmp_path):
    first = run_trainer(tmp_path / "first", data.small, data.validation, settings(seed=2, steps=25))
    again = run_trainer(tmp_path / "again", data.small, data.validation, settings(seed=2, steps=25))
    assert first["training"]["iterations"] == 25
    assert not first["training"]["converged"]
    assert first == again


@pytest.mark.slow
def test_train_end_to_end_through_the_subprocess(data, tmp_path):
    workdir = tmp_path / "member"
    result = backends.train(AnalyticBackend(), data.small, data.validation, workdir, settings(steps=20))
    assert result.status == "success", result.message
    assert result.model == workdir / "model.json"
    assert set(result.metrics) == {
        "train_energy_per_atom",
        "train_forces",
        "validation_energy_per_atom",
        "validation_forces",
    }
    assert all(math.isfinite(value) and value > 0 for value in result.metrics.values())
    assert result.wall_time > 0
    assert "analytic_train: 20 iterations" in (workdir / "step-0.log").read_text()
    assert isinstance(AnalyticBackend().load([result.model]), MorseCommittee)


def test_broken_train_file_gives_a_failed_result(data, tmp_path):
    broken = tmp_path / "broken.extxyz"
    broken.write_text("12\nnot an extxyz comment line = = \nO 0 0\n")
    result = backends.train(AnalyticBackend(), broken, data.validation, tmp_path / "member", settings(steps=5))
    assert result.status == "failed"
    assert result.model is None
    assert "exited with code 1" in result.message
    assert "analytic_train: error" in result.message and "broken.extxyz" in result.message


def write_unlabelled_or_empty(kind: str, path: Path) -> str:
    """A bad training file of the given kind; the text the trainer's message must contain."""
    if kind == "empty":
        path.write_text("")
        return "cannot parse the structure file"
    if kind == "unlabelled":
        write_structures(path, [water_box(1)])
        return "no reference energy and forces"
    atoms = water_box(1)
    atoms.symbols[0] = "N"
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((3, 3)))
    write_structures(path, [atoms])
    return "species ['N'] outside the type map ['H', 'O']"


@pytest.mark.parametrize("kind", ["empty", "unlabelled", "unknown-species"])
def test_bad_training_data_exits_with_a_message(kind, data, tmp_path, capsys):
    bad = tmp_path / "bad.extxyz"
    expected = write_unlabelled_or_empty(kind, bad)
    AnalyticBackend().write_training_input(bad, data.validation, tmp_path, settings(steps=5))
    assert analytic_train.main([str(tmp_path / "input.json")]) == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("analytic_train: error: in ") and str(bad) in stderr and expected in stderr
    assert not (tmp_path / "model.json").exists()
    result = AnalyticBackend().read_training_result(tmp_path)
    assert result.status == "failed" and expected in result.message


def test_bad_input_file_exits_with_a_message(tmp_path, capsys):
    atomic_write_json(tmp_path / "input.json", {"train_file": "t.extxyz", "type_map": ["O", "H"]})
    assert analytic_train.main([str(tmp_path / "input.json")]) == 1
    assert "at field 'validation_file': missing required key" in capsys.readouterr().err
    atomic_write_json(tmp_path / "input.json", {"train_file": "t", "validation_file": "v", "type_map": ["O", "X"]})
    assert analytic_train.main([str(tmp_path / "input.json")]) == 1
    assert "at field 'type_map': not chemical symbols: ['X']" in capsys.readouterr().err
    assert analytic_train.main([str(tmp_path / "missing.json")]) == 1
    assert "file does not exist" in capsys.readouterr().err


def test_write_training_input_refuses_unknown_hyperparameters(data, tmp_path):
    with pytest.raises(InputError, match="unknown key 'cut_off' \\(did you mean 'cutoff'\\?\\)") as error:
        AnalyticBackend().write_training_input(
            data.train, data.validation, tmp_path, settings(hyperparameters={"cut_off": 4.0})
        )
    assert error.value.field == "hyperparameters.cut_off"
    with pytest.raises(InputError, match="switch_width"):
        AnalyticBackend().write_training_input(
            data.train, data.validation, tmp_path, settings(hyperparameters={"cutoff": 2.0, "switch_width": 3.0})
        )
    assert not (tmp_path / "input.json").exists()


@pytest.mark.parametrize(
    "given, field, message",
    [
        ({"cutoff": True}, "cutoff", "expected a valid number"),
        ({"cutoff": "5"}, "cutoff", "expected a valid number"),
        ({"tolerance": 0.0}, "tolerance", "greater than 0"),
        ({"perturbation": -0.1}, "perturbation", "greater than or equal to 0"),
        ({"force_weight": float("inf")}, "force_weight", "finite"),
        ({"log_every": 2.5}, "log_every", "valid integer"),
        ({"log_every": 0}, "log_every", "greater than or equal to 1"),
        ({"cutoff": 0.5}, "switch_width", "switch_width (1.0) exceeds cutoff (0.5)"),
        ({"energy_weight": 0, "force_weight": 0.0}, "force_weight", "both zero"),
    ],
)
def test_bad_hyperparameters_name_the_field(data, tmp_path, given, field, message):
    with pytest.raises(InputError) as error:
        AnalyticBackend().write_training_input(data.train, data.validation, tmp_path, settings(hyperparameters=given))
    assert error.value.field == f"hyperparameters.{field}" and message in error.value.detail


def test_input_file_holds_the_given_hyperparameters_only(data, tmp_path):
    """Defaults stay in the schema; the trainer still knows which were given (fine-tuning checks them)."""
    given = {"cutoff": 4, "log_every": 5}
    AnalyticBackend().write_training_input(data.train, data.validation, tmp_path, settings(hyperparameters=given))
    content = json.loads((tmp_path / "input.json").read_text())
    assert content["hyperparameters"] == {"cutoff": 4.0, "log_every": 5}
    assert (content["model_file"], content["log_file"], content["init_model"]) == ("model.json", "train.log", None)
    assert content["train_file"] == str(data.train.resolve())
    inputs = read_json_file(TrainingInput, tmp_path / "input.json")
    assert inputs.hyperparameters.model_fields_set == {"cutoff", "log_every"}
    assert inputs.hyperparameters == AnalyticHyperparameters(cutoff=4.0, log_every=5)
    assert inputs.model_file == tmp_path.resolve() / "model.json"


# --- fine-tuning ---------------------------------------------------------------------------


def test_fine_tuning_with_zero_steps_keeps_the_model(data, member_a, tmp_path):
    tuned = run_trainer(tmp_path, data.bootstrap, data.validation, settings(seed=9, steps=0, init_model=member_a))
    start = json.loads(member_a.read_text())
    assert tuned["pairs"] == start["pairs"]
    assert tuned["reference_energies"] == start["reference_energies"]
    assert tuned["training"]["init_model"] == str(member_a)


def test_fine_tuning_starts_from_the_previous_model(data, member_a, tmp_path):
    start = json.loads(member_a.read_text())
    tuned = run_trainer(tmp_path, data.bootstrap, data.validation, settings(seed=0, init_model=member_a))
    assert tuned["training"]["converged"]
    assert tuned["training"]["iterations"] < start["training"]["iterations"] / 3
    assert tuned["metrics"]["train_forces"] < 0.1 * data.force_scale
    first_log_line = (tmp_path / "train.log").read_text().splitlines()[1]
    assert f"train rmse {start['metrics']['train_forces']:.4e}" not in first_log_line  # other data: bootstrap
    assert f"validation rmse {start['metrics']['validation_energy_per_atom']:.4e} eV/atom" in first_log_line


def test_fine_tuning_keeps_the_cutoff(data, member_a, tmp_path, capsys):
    training = settings(init_model=member_a, hyperparameters={"cutoff": 4.0})
    AnalyticBackend().write_training_input(data.train, data.validation, tmp_path, training)
    assert analytic_train.main([str(tmp_path / "input.json")]) == 1
    assert "fine-tuning keeps the initial model's cutoff" in capsys.readouterr().err


# --- reading results and loading -----------------------------------------------------------


def test_loaded_committee_equals_the_fitted_members(data, member_a, member_b):
    committee = AnalyticBackend().load([member_a, member_b], device="cpu")
    assert isinstance(committee, ReferencedMorseCommittee) and committee.n_members == 2
    structures = read_structures(data.validation)
    prediction = committee.predict(structures)
    labels_e = np.array([a.get_potential_energy() for a in structures])
    labels_f = np.concatenate([a.get_forces() for a in structures])
    metrics = json.loads(member_a.read_text())["metrics"]
    energy_error = (prediction.energies[0] - labels_e) / prediction.natoms
    assert rmse(energy_error) == pytest.approx(metrics["validation_energy_per_atom"], rel=1e-9)
    assert rmse(prediction.forces[0] - labels_f) == pytest.approx(metrics["validation_forces"], rel=1e-9)
    alone = AnalyticBackend().load([member_b]).predict(structures)
    subset = committee.subset([1]).predict(structures)
    np.testing.assert_array_equal(subset.energies, alone.energies)
    np.testing.assert_allclose(subset.forces, prediction.forces[1:], rtol=0, atol=1e-12)
    assert np.all(np.isfinite(prediction.virials))
    # the differentiable energy includes the reference energies too
    energy = committee.torch_energy(structures)
    positions = torch.as_tensor(np.concatenate([atoms.positions for atoms in structures])).expand(2, -1, -1)
    cells = torch.as_tensor(np.stack([np.asarray(atoms.cell) for atoms in structures])).expand(2, -1, -1, -1)
    np.testing.assert_allclose(energy(positions, cells).numpy(), prediction.energies, rtol=1e-12)


def test_load_refuses_members_with_different_cutoffs(member_a, tmp_path):
    model, _ = read_model_file(member_a)
    write_model_file(tmp_path / "other.json", replace(model, cutoff=4.0), {}, {})
    with pytest.raises(InputError, match="must share cutoff") as error:
        AnalyticBackend().load([member_a, tmp_path / "other.json"])
    assert error.value.file == str(tmp_path / "other.json")


def test_read_training_result_failures(member_a, tmp_path):
    (tmp_path / "train.log").write_text("analytic Morse fit: ...\nerror: the fit diverged\n")
    result = AnalyticBackend().read_training_result(tmp_path)
    assert result.status == "failed" and "wrote no model file" in result.message
    assert "the fit diverged" in result.message
    content = json.loads(member_a.read_text())
    content["metrics"]["train_forces"] = float("nan")
    atomic_write_json(tmp_path / "model.json", content)
    result = AnalyticBackend().read_training_result(tmp_path)
    assert result.status == "failed" and "non-finite" in result.message
    content["pairs"]["H-O"]["D"] = -1.0
    atomic_write_json(tmp_path / "model.json", content)
    result = AnalyticBackend().read_training_result(tmp_path)
    assert result.status == "failed" and "at field 'pairs.H-O.D': expected a value greater than 0" in result.message


def test_read_training_result_success(member_a):
    result = AnalyticBackend().read_training_result(member_a.parent)
    assert result.status == "success" and result.model == member_a
    assert result.metrics == json.loads(member_a.read_text())["metrics"]


def test_committee_file_of_trained_members(member_a, member_b, tmp_path):
    """``backend: analytic`` names trained members in a committee file, as in a campaign."""
    for name, member in (("a.json", member_a), ("b.json", member_b)):
        (tmp_path / name).write_text(member.read_text())
    (tmp_path / "committee.yaml").write_text("backend: analytic\nmodels: [a.json, b.json]\n")
    committee = load_committee(tmp_path / "committee.yaml")
    assert isinstance(committee, ReferencedMorseCommittee) and committee.n_members == 2
    structures = [water_box(2)]
    expected = AnalyticBackend().load([member_a, member_b]).predict(structures)
    np.testing.assert_array_equal(committee.predict(structures).energies, expected.energies)


# --- files written by earlier versions -------------------------------------------------------

DATA = Path(__file__).parents[2] / "data"


def test_stored_model_file_of_version_1_loads_with_the_same_numbers():
    """tests/data/analytic-model-v1.json was written by the trainer before the model file got its schema."""
    model, metrics = read_model_file(DATA / "analytic-model-v1.json")
    assert model.species == (1, 8) and model.cutoff == 4.5 and model.switch_width == 0.8
    h_h, h_o, o_o = (0.09542566982012708, 1.586335807765712, 1.5158193989741486), (
        0.8378380661567307, 1.6189434302630155, 0.9754491149464564), (
        0.10169660765830163, 1.554968103041032, 1.6178892931196749)  # fmt: skip
    for k, name in enumerate(("D", "alpha", "r0")):
        expected = [[[h_h[k], h_o[k]], [h_o[k], o_o[k]]]]
        assert getattr(model, name).tolist() == expected
    assert model.reference_energies.tolist() == [[-12.35949182370261, -6.179745911851305]]
    assert metrics == {
        "train_energy_per_atom": 0.004738796879693857,
        "train_forces": 0.02732082480825435,
        "validation_energy_per_atom": 0.004231229833048204,
        "validation_forces": 0.039832736686323506,
    }


def test_stored_input_file_of_version_1_reads_the_same():
    """tests/data/analytic-input-v1.json was written by AnalyticBackend before the input file got its schema."""
    settings = read_json_file(TrainingInput, DATA / "analytic-input-v1.json")
    assert settings.train_file == DATA.resolve() / "train.extxyz"
    assert settings.validation_file == DATA.resolve() / "validation.extxyz"
    assert settings.init_model == DATA.resolve() / "analytic-model-v1.json"
    assert settings.model_file == DATA.resolve() / "member" / "model.json"
    assert settings.log_file == DATA.resolve() / "member" / "train.log"
    assert (settings.type_map, settings.seed, settings.steps, settings.preset) == (("H", "O"), 7, 40, "paper")
    given = {"energy_weight": 0.5, "log_every": 4, "perturbation": 0.2, "tolerance": 1e-8}
    assert settings.hyperparameters.model_dump(exclude_unset=True) == given
    assert settings.hyperparameters == AnalyticHyperparameters(**given)
