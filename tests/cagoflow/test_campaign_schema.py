"""Tests of cagoflow.campaign (the campaign schema and its loader) and cagoflow.inputs (schedules, YAML)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.io import read, write
from pydantic import ValidationError

from cagoflow.campaign import CampaignConfig, CommitteeConfig, MDConfig, TrainingStage, load_campaign
from cagoflow.executors.site import ExecutorConfig, default_site, load_site
from cagoflow.stages import STAGES
from cagoflow.inputs import schedule_at
from cagoflow.errors import InputError
from cagoflow.structures import water_box
from input_errors import DELETE, assert_input_error, case, edited

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "water" / "campaign.yaml"
LOCAL_SITE = ROOT / "site-configs" / "local-threads.yaml"

BASE_CAMPAIGN: dict[str, Any] = {
    "name": "test",
    "iterations": 2,
    "systems": {"water": {"structures": "water.extxyz"}},
    "committee": {"backend": "analytic", "size": 4},
    "md": {"schedule": [{"from_iteration": 0, "ensemble": "nvt", "steps": 100}]},
    "sampling": {"per_iteration": 2, "cago_from": {"source": "training", "subset": 3}},
}


def density_g_cm3(atoms: Atoms) -> float:
    return float(atoms.get_masses().sum() * 1.66053906660 / atoms.get_volume())


@pytest.fixture(scope="module")
def small_water() -> Atoms:
    return water_box(4, seed=1)


def write_campaign(tmp_path: Path, data: dict[str, Any] | str, structures: Atoms | None = None) -> Path:
    """A campaign file (and, given ``structures``, water.extxyz next to it) in tmp_path."""
    if structures is not None:
        write(tmp_path / "water.extxyz", structures, format="extxyz")
    path = tmp_path / "campaign.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def changed(changes: dict[str, Any]) -> dict[str, Any]:
    return edited(BASE_CAMPAIGN, changes)


def assert_campaign_error(path: Path, field: str | None, *words: str) -> InputError:
    return assert_input_error(path, field, *words, loader=load_campaign)


# ---------------------------------------------------------------------------------------------
# The shipped files
# ---------------------------------------------------------------------------------------------


def test_example_campaign_loads() -> None:
    """The README's main job: a DeePMD committee, relative δ, evaluation every iteration."""
    config = load_campaign(EXAMPLE)
    water = config.systems["water"]
    assert water.structures == (EXAMPLE.parent / "water-16.extxyz").resolve()
    assert water.structures.is_absolute() and not water.labelled
    assert config.committee.backend == "deepmd" and config.committee.fine_tune
    assert config.cago_source(0).source == "md" and config.cago_subset(0) == config.committee.size
    assert config.cago.delta.relative == pytest.approx(1.5)
    assert config.cago.contact_guard.fraction == pytest.approx(0.85)
    assert config.reference.engine == "tblite" and config.reference.method_name == "GFN1-xTB"
    assert config.evaluation is not None and config.evaluation.benchmark.generate.frames == 10
    assert config.dataset.min_test == 8 and config.dataset.cago_to_test == pytest.approx(0.5) and config.cago.trust_region.from_walks
    assert config.cago.trust_region.radius is None and config.cago.packing_guard.margin == pytest.approx(0.03)
    assert config.cago.no_room == "redraw" and config.sampling.uncertainty == "max_atom"
    assert config.committee.min_trained <= config.committee.size


def test_analytic_example_campaign_loads() -> None:
    """The fastest smoke run: schedules of training, MD (NVT, then NPT) and CAGO sources."""
    config = load_campaign(EXAMPLE.parent.parent / "water-analytic" / "campaign.yaml")
    assert config.systems["water"].structures == (EXAMPLE.parent / "water-16.extxyz").resolve()
    assert config.md_stage(0).ensemble == "nvt" and config.md_stage(1).ensemble == "nvt"
    assert config.md_stage(2).ensemble == "npt" and config.md_stage(7).pressure == 1.0
    assert [config.training_steps(i) for i in range(4)] == [40, 40, 60, 60]
    assert config.cago_source(0).source == "training" and config.cago_subset(0) == 3
    assert config.cago_source(2).source == "md" and config.cago_subset(2) == config.committee.size
    assert config.n_samples(1) == config.sampling.per_iteration
    assert config.cago.delta == pytest.approx(0.1)


def test_example_structure_file_matches_water_box() -> None:
    atoms = read(EXAMPLE.parent / "water-16.extxyz")
    expected = water_box(16, density_g_cm3=1.0, seed=0)
    assert atoms.get_chemical_formula() == expected.get_chemical_formula() == "H32O16"
    assert len(atoms) == len(expected) == 48
    assert density_g_cm3(atoms) == pytest.approx(1.0, rel=0.01)
    assert atoms.cell.lengths() == pytest.approx([7.82] * 3, abs=0.01)
    assert np.allclose(atoms.positions, expected.positions, atol=1e-5)


def test_local_site_is_the_default() -> None:
    site = load_site(LOCAL_SITE)
    assert site == default_site()
    assert site.executors["local"].kind == "threads" and site.executors["local"].max_workers == 2
    assert site.stage_executors == {stage: "local" for stage in STAGES}
    assert site.engines.cp2k.command == "cp2k.psmp" and site.engines.nequip.command == "nequip-train"


# ---------------------------------------------------------------------------------------------
# Schedules and models in Python
# ---------------------------------------------------------------------------------------------


def test_schedule_at_picks_the_entry_in_force() -> None:
    entries = [TrainingStage(from_iteration=0, steps=1), TrainingStage(from_iteration=3, steps=2)]
    assert [schedule_at(entries, i).steps for i in range(5)] == [1, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        schedule_at(entries, -1)


def test_plain_value_or_mapping_means_every_iteration() -> None:
    committee = CommitteeConfig(size=3, training_steps=500)
    assert committee.steps_at(0) == committee.steps_at(9) == 500
    md = MDConfig(schedule={"ensemble": "npt", "pressure": 1.0})
    assert len(md.schedule) == 1 and md.schedule[0].from_iteration == 0


def test_preset_sets_training_steps() -> None:
    paper = CommitteeConfig(preset="paper")
    assert [paper.steps_at(i) for i in (0, 1, 2, 3, 4, 10)] == [50_000, 50_000, 150_000, 150_000, 400_000, 400_000]
    assert CommitteeConfig().steps_at(0) == 200


def test_training_schedule_carries_hyperparameters() -> None:
    """A schedule entry's hyperparameters go over the committee's, from its iteration on."""
    committee = CommitteeConfig(
        hyperparameters={"model": {"descriptor": {"rcut": 4.5}}, "learning_rate": {"start_lr": 0.01, "stop_lr": 0.001}},
        training_steps=[{"steps": 600}, {"from_iteration": 1, "steps": 300, "hyperparameters": {"learning_rate": {"start_lr": 0.003}}}],
    )
    assert committee.hyperparameters_at(0)["learning_rate"] == {"start_lr": 0.01, "stop_lr": 0.001}
    later = committee.hyperparameters_at(5)
    assert later["learning_rate"] == {"start_lr": 0.003, "stop_lr": 0.001}
    assert later["model"] == {"descriptor": {"rcut": 4.5}}


def test_models_are_frozen_and_forbid_unknown_keys() -> None:
    site = default_site()
    with pytest.raises(ValidationError):
        site.retries = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ExecutorConfig(kind="threads", max_threads=2)  # type: ignore[call-arg]


def test_campaign_round_trips_through_json() -> None:
    config = load_campaign(EXAMPLE)
    assert CampaignConfig.model_validate(config.model_dump(mode="json")) == config


def test_minimal_campaign_takes_defaults(tmp_path: Path, small_water: Atoms) -> None:
    minimal = {"iterations": 1, "systems": {"w": {"structures": "water.extxyz"}}}
    config = load_campaign(write_campaign(tmp_path, minimal, small_water))
    assert isinstance(config, CampaignConfig)
    assert config.cago.delta > 0 and config.md_stage(0).ensemble == "nvt"
    assert config.dataset.test_fraction == pytest.approx(0.1)


def test_structure_paths_resolve_relative_to_campaign_file(tmp_path: Path, small_water: Atoms) -> None:
    (tmp_path / "inputs").mkdir()
    write(tmp_path / "inputs" / "w.extxyz", small_water)
    campaign = tmp_path / "runs" / "campaign.yaml"
    campaign.parent.mkdir()
    campaign.write_text(yaml.safe_dump(changed({"systems.water.structures": "../inputs/w.extxyz"})))
    config = load_campaign(campaign)
    assert config.systems["water"].structures == (tmp_path / "inputs" / "w.extxyz").resolve()


def test_yaml_1_1_traps_are_avoided(tmp_path: Path, small_water: Atoms) -> None:
    text = yaml.safe_dump(BASE_CAMPAIGN, sort_keys=False).replace(
        "committee:\n", "committee:\n  hyperparameters: {learning_rate: 1e-3, nodes: 010}\n"
    )
    config = load_campaign(write_campaign(tmp_path, text, small_water))
    assert config.committee.hyperparameters == {"learning_rate": 1e-3, "nodes": 10}
    site = tmp_path / "site.yaml"
    site.write_text("executors:\n  cpu:\n    kind: htex_slurm\n    provider: {walltime: 48:00:00}\n")
    assert load_site(site).executors["cpu"].provider.walltime == "48:00:00"


def test_system_given_as_a_path_only(tmp_path: Path, small_water: Atoms) -> None:
    data = changed({"systems.water": "water.extxyz"})
    config = load_campaign(write_campaign(tmp_path, data, small_water))
    assert config.systems["water"].structures == (tmp_path / "water.extxyz").resolve()


# ---------------------------------------------------------------------------------------------
# Broken campaign files
# ---------------------------------------------------------------------------------------------


def _overlapping() -> Atoms:
    atoms = water_box(4, seed=1)
    atoms.positions[3] = atoms.positions[0] + [0.1, 0.0, 0.0]
    return atoms


BROKEN_CAMPAIGNS = [
    case("bad-yaml", "iterations: 2\nsystems: {water: [unclosed\n", None, "malformed YAML", "line"),
    case("tab-yaml", "iterations: 2\n\tsystems: {}\n", None, "malformed YAML", "line 2"),
    case("duplicate-key", "iterations: 2\niterations: 3\nsystems: {}\n", None, "twice", "line 2"),
    case("top-level-list", "- iterations: 2\n", None, "found a list"),
    case("empty-file", "", "systems", "must name its systems", "empty"),
    case("empty-mapping", "{}\n", "systems", "must name its systems"),
    case("empty-systems", changed({"systems": {}}), "systems", "must name its systems", "line"),
    case(
        "unknown-key",
        changed({"cago.detla": 0.1}),
        "cago.detla", "unknown key 'detla'", "did you mean 'delta'", "tolerance",
    ),
    case("unknown-top-key", changed({"iteration": 3}), "iteration", "did you mean 'iterations'"),
    case("missing-iterations", changed({"iterations": DELETE}), "iterations", "missing required key"),
    case("wrong-type", changed({"iterations": "three"}), "iterations", "expected a valid integer", "'three'", "line 2"),
    case("wrong-type-nested", changed({"md.replicas": [1, 2]}), "md.replicas", "found [1, 2]"),
    case("negative-delta", changed({"cago.delta": -0.1}), "cago.delta", "positive", "-0.1", "eV/Å"),
    case("zero-delta", changed({"cago.delta": 0}), "cago.delta", "positive"),
    case("zero-relative-delta", changed({"cago.delta": {"relative": 0}}), "cago.delta", "factor above 1", "'relative': 0"),
    case("downhill-relative-delta", changed({"cago.delta": {"relative": 0.8}}), "cago.delta", "factor above 1", "pushes uncertainty up"),
    case("fixed-guard-distance", changed({"cago.min_distance": 0.8}), "cago.min_distance", "contact_guard", "training set"),
    case("guard-fraction", changed({"cago.contact_guard": {"fraction": 1.5}}), "cago.contact_guard.fraction", "less than or equal to 1"),
    case("drop-unknown-flag", changed({"filters.pre.drop_flagged": ["slow"]}), "filters.pre.drop_flagged.0", "'fast'", "'contact'"),
    case("stop-without-evaluation", changed({"stop": {"force_rmse_below": 0.1}}), "stop", "evaluation"),
    case("stop-without-criterion", changed({"evaluation": {}, "stop": {}}), "stop", "criterion"),
    case(
        "benchmark-md-with-cp2k",
        changed({"evaluation": {"benchmark": {"generate": {}}}, "reference": {"engine": "cp2k"}}),
        "evaluation.benchmark.generate.calculator", "ASE calculator",
    ),
    case("test-minimum", changed({"dataset.min_test": 0}), "dataset.min_test", "greater than or equal to 1"),
    case("tolerance-above-one", changed({"cago.tolerance": 1.5}), "cago.tolerance", "less than 1"),
    case("fraction-out-of-range", changed({"dataset.test_fraction": 1.2}), "dataset.test_fraction", "less than 1"),
    case(
        "fractions-sum",
        changed({"dataset.train_fraction": 0.8, "dataset.validation_fraction": 0.3}),
        "dataset", "must not exceed 1", "1.1",
    ),
    case("bad-ensemble", changed({"md.schedule.0.ensemble": "nvp"}), "md.schedule.0.ensemble", "'npt'", "'nvp'"),
    case("npt-no-pressure", changed({"md.schedule.0.ensemble": "npt"}), "md.schedule.0.pressure", "needs a pressure"),
    case(
        "schedule-out-of-order",
        changed({"md.schedule": [{"from_iteration": 0}, {"from_iteration": 3}, {"from_iteration": 2}]}),
        "md.schedule.2.from_iteration", "increasing",
    ),
    case(
        "schedule-not-from-zero",
        changed({"committee.training_steps": [{"from_iteration": 1, "steps": 5}]}),
        "committee.training_steps.0.from_iteration", "from_iteration 0",
    ),
    case(
        "subset-above-size",
        changed({"sampling.cago_from.subset": 5}),
        "sampling.cago_from.0.subset", "exceeds the committee size (4)",
    ),
    case("subset-word", changed({"sampling.cago_from.subset": "x"}), "sampling.cago_from.0.subset", "'all'", "'x'"),
    case("min-trained-above-size", changed({"committee.min_trained": 5}), "committee.min_trained", "exceeds"),
    case("committee-of-one", changed({"committee.size": 1}), "committee.size", "greater than or equal to 2"),
    case(
        "too-few-md-frames",
        changed({"sampling.per_iteration": 50, "sampling.cago_from": "md"}),
        "sampling.per_iteration", "saves only 10",
    ),
    case(
        "bias-without-weight",
        changed({"cago.bias": {"kind": "pressure", "target_pressure": 1.0}}),
        "cago.bias.weight", "weight > 0",
    ),
    case("ase-no-calculator", changed({"reference.engine": "ase"}), "reference.calculator", "module:Class"),
    case("xtb-method-case", changed({"reference.method": "GFN2-XTB"}), "reference.method", "did you mean 'GFN2-xTB'"),
    case("md-density-range-order", changed({"md.density_range": [1.2, 2.0]}), "md.density_range", "0 < low < 1 < high"),
    case("md-old-stop-name", changed({"md.stop_min_distance": 0.5}), "md.stop_min_distance", "min_distance"),
    case(
        "bad-system-name",
        changed({"systems": {"my water": {"structures": "water.extxyz"}}}),
        "systems.my water", "letters, digits", "'my water'",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("data", "field", "words"), BROKEN_CAMPAIGNS)
def test_broken_campaign(
    tmp_path: Path, small_water: Atoms, data: Any, field: str | None, words: tuple[str, ...]
) -> None:
    assert_campaign_error(write_campaign(tmp_path, data, small_water), field, *words)


def test_several_errors_are_counted(tmp_path: Path, small_water: Atoms) -> None:
    data = changed({"seed": -1, "cago.delta": -1, "cago.tolerance": 2})
    error = assert_campaign_error(write_campaign(tmp_path, data, small_water), "seed")
    assert "2 more error(s)" in str(error) and "cago.delta" in str(error)


def test_missing_structure_file(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, BASE_CAMPAIGN)
    assert_campaign_error(path, "systems.water.structures", "water.extxyz", "does not exist")


def test_structure_file_with_overlapping_atoms(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, BASE_CAMPAIGN, _overlapping())
    assert_campaign_error(path, "systems.water.structures", "overlapping atoms", "water.extxyz", "line")


def test_unreadable_structure_file(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, BASE_CAMPAIGN)
    (tmp_path / "water.extxyz").write_bytes(b"\x00\xff\xfe garbage \x01" * 20)
    assert_campaign_error(path, "systems.water.structures", "water.extxyz", "cannot parse")


def test_structure_path_is_a_directory(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, BASE_CAMPAIGN)
    (tmp_path / "water.extxyz").mkdir()
    assert_campaign_error(path, "systems.water.structures", "directory")


def test_labelled_structures_need_labels(tmp_path: Path, small_water: Atoms) -> None:
    data = changed({"systems.water.labelled": True})
    assert_campaign_error(write_campaign(tmp_path, data, small_water), "systems.water.structures", "reference energy")


def test_molecule_with_cell_optimisation(tmp_path: Path) -> None:
    molecule = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    path = write_campaign(tmp_path, BASE_CAMPAIGN, molecule)
    assert_campaign_error(path, "cago.optimize_cell", "not periodic")
    path.write_text(yaml.safe_dump(changed({"cago.optimize_cell": False})))
    assert load_campaign(path).systems["water"].structures.name == "water.extxyz"


def test_campaign_file_missing(tmp_path: Path) -> None:
    assert_campaign_error(tmp_path / "nowhere.yaml", None, "does not exist")


def test_campaign_path_is_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "campaign.yaml"
    folder.mkdir()
    assert_campaign_error(folder, None, "found a directory")


def test_campaign_file_is_binary(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert_campaign_error(path, None, "binary")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_campaign_file_without_permission(tmp_path: Path, small_water: Atoms) -> None:
    path = write_campaign(tmp_path, BASE_CAMPAIGN, small_water)
    path.chmod(0)
    try:
        assert_campaign_error(path, None, "permission denied")
    finally:
        path.chmod(0o644)


def test_campaign_md_and_production_md_share_one_definition_of_stability(tmp_path: Path, small_water: Atoms) -> None:
    """The same three settings, names and checks in ``md`` and ``evaluation.production``, as the
    MD engines take them."""
    data = changed({"md.min_distance": 0.5, "md.density_range": [0.5, 1.5], "md.check_interval": 20,
                    "evaluation": {"production": {"min_distance": 0.3, "density_range": [0.8, 1.2]}}})  # fmt: skip
    config = load_campaign(write_campaign(tmp_path, data, small_water))
    assert config.md.check_arguments() == {"check_interval": 20, "min_distance": 0.5, "density_range": (0.5, 1.5)}
    assert config.evaluation.production.check_arguments() == {"check_interval": 100, "min_distance": 0.3, "density_range": (0.8, 1.2)}
