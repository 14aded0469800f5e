"""Stopping a campaign when it has converged, decided from the evaluation summaries alone.

Two criterion groups, each optional:

- accuracy: the held-out force RMSE of the committee mean at iteration i is at most
  ``force_rmse_below`` (eV/Å);
- stability and properties: with ``all_members_stable``, every member's production MD at
  iteration i was stable; and each watched property (the mean over stable members of density,
  diffusion or coordination) is defined in each of the last ``window`` iterations i−k+1 … i and
  within its relative tolerance of its current value there: |v_j − v_i| ≤ tol·|v_i|.

The campaign stops at iteration i when ANY configured group holds (``combine: any``, the
default: reaching the error target or converged, stable properties is each enough), or only when
ALL configured groups hold (``combine: all``). No group is tested before ``min_iterations``
iterations have been evaluated. :func:`stop_reason` is a pure function of the summaries, so a
resumed campaign stops at the same iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Sequence

from pydantic import Field, model_validator

from cagoflow.evaluation import EvaluationSummary
from cagoflow.inputs import InputModel

__all__ = ["PROPERTIES", "StopSettings", "stop_reason"]

Property = Literal["density", "diffusion", "coordination"]
#: The properties a campaign may watch, in the order messages name them.
PROPERTIES: tuple[Property, ...] = ("density", "diffusion", "coordination")


class StopSettings(InputModel):
    """When a campaign may stop before its last iteration (at least one criterion)."""

    force_rmse_below: float | None = Field(
        None, gt=0, description="stop when the held-out force RMSE of the committee mean is at most this, eV/Å"
    )
    all_members_stable: bool = Field(
        False,
        description="the stability group needs every member's production MD stable "
        "(default: true when properties are watched)",
    )
    properties: dict[Property, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="watched property → relative tolerance over the window (0.02: 2 %)"
    )
    window: int = Field(3, ge=2, description="iterations (the current one included) the properties must agree over")
    min_iterations: int = Field(2, ge=1, description="never stop before this many iterations have been evaluated")
    combine: Literal["any", "all"] = Field(
        "any", description="stop when any configured group holds (accuracy; stability and properties), or all"
    )

    @model_validator(mode="before")
    @classmethod
    def _stability_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "all_members_stable" not in data:
            return {**data, "all_members_stable": bool(data.get("properties"))}
        return data

    @model_validator(mode="after")
    def _some_criterion(self) -> StopSettings:
        if self.force_rmse_below is None and not self.all_members_stable and not self.properties:
            raise ValueError("name at least one criterion: force_rmse_below, all_members_stable or properties")
        return self


def stop_reason(history: Sequence[EvaluationSummary], settings: StopSettings) -> str | None:
    """Why the campaign may stop after the last summary of ``history`` (iterations 0..i in
    order), as one line naming the criteria that hold; None when it goes on."""
    if len(history) < settings.min_iterations:
        return None
    groups = []
    if settings.force_rmse_below is not None:
        groups.append(_accuracy(history[-1], settings.force_rmse_below))
    if settings.all_members_stable or settings.properties:
        groups.append(_stability_and_properties(history, settings))
    held = [reason for reason in groups if reason is not None]
    if not held or (settings.combine == "all" and len(held) < len(groups)):
        return None
    return "; ".join(held)


def _accuracy(summary: EvaluationSummary, target: float) -> str | None:
    if not summary.force_rmse <= target:
        return None
    return f"held-out force RMSE {summary.force_rmse:.3g} eV/Å ≤ target {target:g} eV/Å"


def _stability_and_properties(history: Sequence[EvaluationSummary], settings: StopSettings) -> str | None:
    current = history[-1]
    parts = []
    if settings.all_members_stable:
        if current.stable_members != current.members:
            return None
        parts.append(f"all {current.members} members stable")
    watched = {name: settings.properties[name] for name in PROPERTIES if name in settings.properties}
    if watched:
        if len(history) < settings.window:
            return None
        window = history[-settings.window :]
        for name, tolerance in watched.items():
            values = [getattr(summary, f"{name}_mean") for summary in window]
            if any(value is None for value in values):
                return None
            if any(abs(value - values[-1]) > tolerance * abs(values[-1]) for value in values):
                return None
        parts.append(f"{_tolerances(watched)} over the last {settings.window} iterations")
    return " and ".join(parts)


def _tolerances(watched: dict[str, float]) -> str:
    """"density, coordination within 2 %", or "density within 2 %, coordination within 5 %"."""
    if len(set(watched.values())) == 1:
        return f"{', '.join(watched)} within {_percent(next(iter(watched.values())))}"
    return ", ".join(f"{name} within {_percent(tolerance)}" for name, tolerance in watched.items())


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g} %"
