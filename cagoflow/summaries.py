"""What a stage task's record says (its ``summary``), as models: the task writes one, ``status``,
``report`` and the benchmarks read it back. A field renamed or dropped fails where it is made,
not as a silently missing figure in a table.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

#: Where a CAGO walk went: σ_cal up to δ, down to it, or not moved.
Direction = Literal["up", "down", "unmoved"]


class _Summary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def dump(self) -> dict:
        """The JSON-ready dict a record stores."""
        return self.model_dump(mode="json")


#: Any of the summary models (for readers generic over them).
SummaryModel = TypeVar("SummaryModel", bound=_Summary)


class CagoSummary(_Summary):
    """One CAGO structure (σ and δ eV/Å, distances Å).

    ``optimised`` is False for the baselines (the sampled frame goes to the reference as it is);
    ``action`` says what the campaign did with it: pushed (it had a δ), sampled (labelled as it
    is), dropped (by ``cago.no_room: drop``); ``start`` how its start was chosen.
    """

    optimised: bool = True
    action: Literal["pushed", "sampled", "dropped"]
    start: Literal["drawn", "redrawn", "no_room"] = "drawn"
    subset: list[int]
    delta: float | None = None
    reason: str | None = Field(None, description="why the walk stopped (reached, max_steps, ...) or was not pushed (no_room, no_limit, no_trust)")
    direction: Direction = "unmoved"
    steps: int = 0
    start_sigma_cal: float | None = None
    sigma_cal_rms: float | None = None
    requested_delta: float | None = None
    max_displacement: float | None = None
    trust_radius: float | None = None
    packing_departure: float | None = None
    packing_pair: str | None = None
    closest_pair_ratio: float | None = None
    closest_pair: str | None = None
    flags: list[str] = Field(default_factory=list)
    points_above_delta: int | None = None
    warnings: list[str] = Field(default_factory=list)


class MergeSummary(_Summary):
    """One iteration's merge: the training set it leaves and the hits of its CAGO structures."""

    added: int
    dataset: int
    to_test: int
    hit_ratio_mean: float | None
    hit_ratio_median: float | None
    hits: int
    unreached: int
    true_error_mean: float | None


class SampleSummary(_Summary):
    """The starts CAGO got (displacements Å): how many, how many redrawn or without room."""

    count: int
    redrawn: int = 0
    without_room: int = 0
    thermal_displacement: float | None = None
    trust_radius: float | None = Field(None, description="the CAGO walks' trust radius (None: no trust region; 0: no start pushed)")
    trust_source: Literal["given", "thermal", "walks", "walks: none holds"] | None = Field(
        None, description="where the radius comes from: given, × the thermal displacement, or the labelled walks of the test split"
    )


class PrefilterSummary(_Summary):
    """The CAGO structures (task names) sent on to the reference, and the others with their reason."""

    kept: list[str]
    rejected: dict[str, str]


class PostfilterSummary(_Summary):
    """One system's labelled structures: kept, rejected with their reason, and the hits (true
    error / δ) of the CAGO structures that reached δ and of those that did not (errors eV/Å)."""

    attempted: int
    kept: int
    rejected: dict[str, str]
    hit_ratios: list[float]
    unreached_hit_ratios: list[float]
    true_errors: list[float]
    true_error_by_task: dict[str, float] = Field(default_factory=dict, description="each CAGO structure's true error, eV/Å")


class SplitSummary(_Summary):
    """An iteration's splits: the dataset it split, its test split and how many of those are
    routed CAGO structures; a warning when the test split is too small to judge the calibration."""

    dataset: int
    test: int
    test_from_cago: int
    warning: str | None = None


class MDSummary(_Summary):
    """One MD replica: stable or why not, frames kept, steps run."""

    stable: bool
    reason: str
    frames: int
    steps: int


class CalibrationSummary(_Summary):
    """The committee's calibration σ_cal = a·σ̂^b (forces; σ eV/Å, distances Å), judged on the
    test split: validity limits (None: none found), out-of-sample RMS z, the committee-mean force RMSE."""

    members: int
    failed_members: list[str]
    a: float
    b: float
    validity_limit: float | None
    subset_validity_limits: list[float | None]
    rms_z_out_of_sample: float | None
    test_force_rmse: float
    test_structures: int
    calibration_points: int
    contact_distances: dict[str, float] | None = None
    walks: int = Field(0, description="labelled CAGO structures in the test split")
    walk_judged: bool = Field(False, description="enough of them (8) to judge where along a walk the calibration holds")
    walk_radius: float | None = Field(None, description="the largest displacement from a start up to which they show it holding, Å")
