"""The evaluation stage of a campaign and stopping early: a benchmark set labelled once,
held-out errors and production MD per member every iteration, a stop that holds on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cagoflow.campaign import load_campaign
from cagoflow.executors.site import default_site
from cagoflow.dataset import Dataset
from cagoflow.records import all_records, executions
from cagoflow.workflows.driver import run_campaign
from cagoflow.workflows.status import campaign_figures

EVALUATION = {
    "benchmark": {"generate": {"frames": 4, "md": {"steps": 40, "timestep": 0.5, "dump_interval": 10}}},
    "production": {"replicas": 2, "md": {"steps": 60, "timestep": 0.5, "dump_interval": 10}, "check_interval": 20},
}
#: A held-out force RMSE target the analytic committee meets at once: the stop depends on min_iterations.
STOP = {"force_rmse_below": 10.0, "min_iterations": 2}


@pytest.fixture(scope="module")
def stopped_campaign(tmp_path_factory, write_campaign) -> Path:
    folder = tmp_path_factory.mktemp("evaluated")
    config = load_campaign(write_campaign(folder, iterations=4, evaluation=EVALUATION, stop=STOP))
    run_campaign(config, default_site(), folder / "work")
    return folder / "work"


def test_benchmark_is_labelled_once_and_never_enters_the_dataset(stopped_campaign):
    records = {(r.stage, r.iteration, r.task): r for r in all_records(stopped_campaign)}
    frames = records["evaluate", -1, "benchmark-water"]
    labelled = records["evaluate", -1, "benchmark-water-labelled"]
    assert frames.summary["count"] == 4 and labelled.summary["count"] >= 3
    references = [r for (stage, it, task), r in records.items() if stage == "reference" and "benchmark" in task]
    assert len(references) == 4 and all(r.summary["status"] == "converged" for r in references)
    dataset = Dataset.open(stopped_campaign / "dataset")
    from cagoflow.io import read_structures

    benchmark = {atoms.positions.tobytes() for atoms in read_structures(stopped_campaign / labelled.outputs["benchmark"])}
    assert not benchmark & {atoms.positions.tobytes() for atoms in dataset.structures(range(len(dataset)))}


def test_every_iteration_is_evaluated_until_the_stop(stopped_campaign):
    stopped = json.loads((stopped_campaign / "stopped.json").read_text())
    assert stopped["iteration"] == 1 and "held-out force RMSE" in stopped["reason"]
    assert not (stopped_campaign / "iter-002").exists()  # nothing after the stop was submitted
    summaries = {r.iteration: r.summary for r in all_records(stopped_campaign) if r.task == "summary-water"}
    assert set(summaries) == {0, 1}
    for summary in summaries.values():
        assert summary["members"] == 3 and len(summary["member_force_rmse"]) == 3
        assert min(summary["member_force_rmse"]) <= summary["force_rmse"] * 1.5
        assert summary["stable_members"] == sum(summary["stable"])
        if summary["stable_members"]:
            assert 0.9 < summary["density_mean"] < 1.1  # NVT keeps the starting 1 g/cm³
    productions = [r for r in all_records(stopped_campaign) if r.task.startswith("md-water-member")]
    assert len(productions) == 6 and all(r.summary["stability"]["n_replicas"] == 2 for r in productions)
    figures = campaign_figures(stopped_campaign)
    assert figures["stopped"]["iteration"] == 1


def test_a_resumed_campaign_stops_at_the_same_iteration_and_runs_nothing(stopped_campaign):
    before = executions(stopped_campaign)
    config = load_campaign(stopped_campaign.parent / "campaign.yaml")
    run_campaign(config, default_site(), stopped_campaign)
    assert executions(stopped_campaign) == before
    assert json.loads((stopped_campaign / "stopped.json").read_text())["iteration"] == 1


def test_without_the_stop_the_campaign_goes_on_from_there(stopped_campaign, tmp_path, write_campaign):
    import shutil

    workdir = tmp_path / "work"
    shutil.copytree(stopped_campaign, workdir)
    before = len(executions(workdir))
    config = load_campaign(write_campaign(tmp_path, iterations=3, evaluation=EVALUATION))
    run_campaign(config, default_site(), workdir)
    rerun = {(e["stage"], e["iteration"]) for e in executions(workdir)[before:]}
    assert not (workdir / "stopped.json").exists()
    assert {iteration for _, iteration in rerun} == {2}  # iterations 0 and 1 are reused whole
    assert ("evaluate", 2) in rerun
