"""Settings of one MD run (ensemble, temperature, pressure, length), shared by every MD engine.

A campaign's MD schedule is a list of these (see :mod:`cagoflow.campaign`); the production MD
of the evaluation stage uses one. Units: K, bar, fs.
"""

from __future__ import annotations

from typing import Literal

from typing import Any

from pydantic import Field, field_validator, model_validator

from cagoflow.inputs import FieldError, InputModel, ScheduleEntry

__all__ = ["MDStage", "StabilityChecks"]


class StabilityChecks(InputModel):
    """When an MD trajectory counts as blown up (the paper's benchmark criteria), checked every
    ``check_interval`` steps by every MD engine; campaign MD and production MD both use these."""

    check_interval: int = Field(100, ge=1, description="steps between stability checks")
    min_distance: float | None = Field(
        0.4, gt=0, description="unstable when two atoms come closer than this, Å (null: never)"
    )
    density_range: tuple[float, float] | None = Field(
        (0.25, 2.0), description="unstable when density/initial density leaves [low, high] (null: never)"
    )

    @field_validator("density_range")
    @classmethod
    def _ratio_bracket(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] < 1 < value[1]:
            raise ValueError(f"expected [low, high] with 0 < low < 1 < high, found {list(value)}")
        return value

    def check_arguments(self) -> dict[str, Any]:
        """``check_interval``, ``min_distance`` and ``density_range`` as the MD engines take them."""
        return {name: getattr(self, name) for name in StabilityChecks.model_fields}


#: The stability checks' defaults (the engines' keyword defaults).
DEFAULT_CHECKS = StabilityChecks()


class MDStage(ScheduleEntry):
    """MD settings from ``from_iteration`` on (Nosé–Hoover chains for NVT and NPT)."""

    ensemble: Literal["nve", "nvt", "npt"] = Field("nvt", description="statistical ensemble")
    temperature: float = Field(300.0, gt=0, description="thermostat (NVE: initial velocity) temperature, K")
    pressure: float | None = Field(None, description="barostat pressure, bar (NPT only, required there)")
    steps: int = Field(1000, ge=1, description="MD steps per replica")
    timestep: float = Field(0.5, gt=0, le=10, description="time step, fs")
    dump_interval: int = Field(10, ge=1, description="steps between saved frames (the frames sampling draws from)")
    thermostat_chain: int = Field(3, ge=1, description="Nosé–Hoover thermostat chain length")
    thermostat_damping: float = Field(100.0, gt=0, description="thermostat damping time, fs (the paper: 500)")
    barostat_chain: int = Field(3, ge=1, description="barostat chain length (NPT)")
    barostat_damping: float = Field(1000.0, gt=0, description="barostat damping time, fs (the paper: 1000)")

    @model_validator(mode="after")
    def _consistent(self) -> MDStage:
        if self.ensemble == "npt" and self.pressure is None:
            raise FieldError("ensemble 'npt' needs a pressure (bar)", "pressure")
        if self.ensemble != "npt" and self.pressure is not None:
            raise FieldError(
                f"a pressure applies to ensemble 'npt' only, found ensemble '{self.ensemble}'", "pressure"
            )
        if self.dump_interval > self.steps:
            raise FieldError(
                f"dump_interval ({self.dump_interval}) exceeds the number of steps ({self.steps}): "
                "no frame would be saved",
                "dump_interval",
            )
        for name in ("thermostat_damping", "barostat_damping"):
            damping = getattr(self, name)
            if damping < self.timestep:
                raise FieldError(f"{name} ({damping} fs) is shorter than the time step ({self.timestep} fs)", name)
        return self

    @property
    def frames(self) -> int:
        """Frames saved per replica."""
        return self.steps // self.dump_interval


