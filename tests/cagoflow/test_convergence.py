"""Tests of cagoflow.convergence: the stop criteria on hand-made histories of evaluation summaries."""

from __future__ import annotations

import pytest

from cagoflow.convergence import StopSettings, stop_reason
from cagoflow.evaluation import EvaluationSummary


def summary(
    force_rmse: float = 0.2,
    density: float | None = 1.0,
    coordination: float | None = 4.5,
    stable: tuple[bool, ...] = (True, True, True, True),
) -> EvaluationSummary:
    """An iteration's summary of a 4-member committee (only what the criteria read matters)."""
    return EvaluationSummary(
        force_rmse=force_rmse,
        energy_rmse_per_atom=0.01,
        virial_rmse_per_atom=None,
        member_force_rmse=[force_rmse * 1.2] * len(stable),
        member_energy_rmse_per_atom=[0.01] * len(stable),
        member_virial_rmse_per_atom=None,
        benchmark_structures=20,
        members=len(stable),
        stable_members=sum(stable),
        stable=list(stable),
        density_mean=density,
        density_std=0.0 if density is not None else None,
        diffusion_mean=None,
        diffusion_std=None,
        coordination_mean=coordination,
        coordination_std=0.0 if coordination is not None else None,
        reasons=[f"member {m}: min interatomic distance 0.3 Å < 0.4 Å" for m, ok in enumerate(stable) if not ok],
    )


def densities(*values: float | None, **kwargs) -> list[EvaluationSummary]:
    return [summary(density=value, **kwargs) for value in values]


RMSE = StopSettings(force_rmse_below=0.09)
PROPERTIES = StopSettings(properties={"density": 0.02, "coordination": 0.02})


def test_force_rmse_target():
    history = [summary(force_rmse=0.2), summary(force_rmse=0.081)]
    assert stop_reason(history, RMSE) == "held-out force RMSE 0.081 eV/Å ≤ target 0.09 eV/Å"
    assert stop_reason([summary(force_rmse=0.2), summary(force_rmse=0.0901)], RMSE) is None
    # the target is judged at the current iteration, not at any earlier one
    assert stop_reason([summary(force_rmse=0.05), summary(force_rmse=0.1)], RMSE) is None


def test_min_iterations():
    assert stop_reason([summary(force_rmse=0.05)], RMSE) is None
    assert stop_reason([], RMSE) is None
    once = StopSettings(force_rmse_below=0.09, min_iterations=1)
    assert stop_reason([summary(force_rmse=0.05)], once) == "held-out force RMSE 0.05 eV/Å ≤ target 0.09 eV/Å"
    late = StopSettings(force_rmse_below=0.09, min_iterations=4)
    assert stop_reason([summary(force_rmse=0.05)] * 3, late) is None
    assert stop_reason([summary(force_rmse=0.05)] * 4, late) is not None


def test_properties_within_tolerance_over_the_window():
    history = densities(1.2, 1.0, 1.01, 0.995)
    expected = "all 4 members stable and density, coordination within 2 % over the last 3 iterations"
    assert stop_reason(history, PROPERTIES) == expected
    # the window reaches back to 1.2 (20 % off)
    assert stop_reason(history, PROPERTIES.model_copy(update={"window": 4})) is None
    # fewer iterations than the window: not yet
    assert stop_reason(history[-2:], PROPERTIES) is None


def test_tolerance_is_relative_to_the_current_value():
    history = densities(1.0, 1.03, 1.0)
    assert stop_reason(history, PROPERTIES) is None
    loose = StopSettings(properties={"density": 0.05, "coordination": 0.02})
    assert stop_reason(history, loose) == (
        "all 4 members stable and density within 5 %, coordination within 2 % over the last 3 iterations"
    )
    assert stop_reason(densities(1.0, 1.0, 1.0, coordination=None), loose) is None


def test_an_unstable_member_or_a_missing_value_blocks_the_property_group():
    unstable = densities(1.0, 1.0, 1.0, stable=(True, True, True, False))
    assert stop_reason(unstable, PROPERTIES) is None
    lenient = StopSettings(properties={"density": 0.02}, all_members_stable=False)
    assert stop_reason(unstable, lenient) == "density within 2 % over the last 3 iterations"
    assert stop_reason(densities(None, 1.0, 1.0), lenient) is None


def test_stability_alone():
    settings = StopSettings(all_members_stable=True)
    assert stop_reason(densities(None, None), settings) == "all 4 members stable"
    assert stop_reason(densities(None, None, stable=(True, False)), settings) is None


def test_groups_combine_with_any_or_all():
    converged = [summary(force_rmse=0.08, density=d) for d in (1.0, 1.0, 1.0)]
    unconverged = [summary(force_rmse=0.08, density=d) for d in (1.0, 1.1, 1.0)]
    both = StopSettings(force_rmse_below=0.09, properties={"density": 0.02})
    assert stop_reason(unconverged, both) == "held-out force RMSE 0.08 eV/Å ≤ target 0.09 eV/Å"
    assert stop_reason(converged, both) == (
        "held-out force RMSE 0.08 eV/Å ≤ target 0.09 eV/Å; "
        "all 4 members stable and density within 2 % over the last 3 iterations"
    )
    strict = both.model_copy(update={"combine": "all"})
    assert stop_reason(unconverged, strict) is None
    assert stop_reason(converged, strict) == stop_reason(converged, both)


def test_the_first_stopping_iteration_is_the_same_on_every_pass():
    history = [summary(force_rmse=value) for value in (0.3, 0.2, 0.085, 0.07)]
    first = [i for i in range(len(history)) if stop_reason(history[: i + 1], RMSE)]
    assert first[0] == 2
    message = "held-out force RMSE 0.085 eV/Å ≤ target 0.09 eV/Å"
    assert [stop_reason(history[:3], RMSE) for _ in range(2)] == [message] * 2


def test_settings_defaults_and_validation():
    assert PROPERTIES.all_members_stable and not RMSE.all_members_stable
    assert not StopSettings(properties={"density": 0.02}, all_members_stable=False).all_members_stable
    assert StopSettings.model_validate({"properties": {"diffusion": 0.1}}).all_members_stable
    for data, message in [
        ({}, "at least one criterion"),
        ({"all_members_stable": False}, "at least one criterion"),
        ({"properties": {"density": 0}}, "greater than 0"),
        ({"properties": {"viscosity": 0.1}}, "'density', 'diffusion' or 'coordination'"),
        ({"force_rmse_below": 0.1, "window": 1}, "greater than or equal to 2"),
        ({"force_rmse_below": 0.1, "combine": "some"}, "'any' or 'all'"),
    ]:
        with pytest.raises(ValueError, match=message):
            StopSettings.model_validate(data)
