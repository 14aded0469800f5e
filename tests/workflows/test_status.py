"""``cagoflow status`` (two tables that fit 100 columns, ``--json``) and ``cagoflow report`` on a
synthetic work directory: records written by hand with the keys the stages write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cagoflow.cli import app
from cagoflow.records import TaskRecord, write_record
from cagoflow.workflows.report import report_plots, write_report
from cagoflow.workflows.status import campaign_figures, science_table

SYSTEMS = ("water", "water-dense")  # a system name with a hyphen, like the task names


def record(workdir: Path, iteration: int, stage: str, task: str, status: str = "done", **summary) -> None:
    folder = workdir / ("iter-init" if iteration < 0 else f"iter-{iteration:03d}") / stage / task
    folder.mkdir(parents=True)
    write_record(folder, TaskRecord(stage, task, iteration, "key", status, summary=summary), workdir)  # type: ignore[arg-type]


def evaluation(force: float, members: list[float], stable: list[bool], density: float | None) -> dict:
    """The evaluate stage's summary-<system> record (eV/Å, eV/atom, g/cm³, Å²/ps)."""
    some = density is not None
    return {
        "force_rmse": force, "energy_rmse_per_atom": 0.002, "virial_rmse_per_atom": None,
        "member_force_rmse": members, "member_energy_rmse_per_atom": [0.003] * len(members),
        "member_virial_rmse_per_atom": None, "benchmark_structures": 20, "members": len(members),
        "stable_members": sum(stable), "stable": stable, "density_mean": density, "density_std": 0.004 if some else None,
        "diffusion_mean": 0.231 if some else None, "diffusion_std": 0.012 if some else None,
        "coordination_mean": 4.12 if some else None, "coordination_std": 0.05 if some else None,
        "reasons": [] if all(stable) else ["member 2: atoms closer than 0.5 Å"],
    }  # fmt: skip


def iteration(workdir: Path, i: int, dataset: int, *, evaluate: bool, failed_member: bool = False) -> None:
    """Every stage of iteration ``i`` for both systems (12 stages with evaluate)."""
    record(workdir, i, "split", "dataset", dataset=dataset, test=2, test_from_cago=1 if i else 0)
    for m in range(3):
        if failed_member and m == 1:
            record(workdir, i, "train", "member-01", "failed", message="the trainer exited with code 1: out of memory")
        elif i == 1 and m == 2:  # continued from the checkpoint a killed run left
            record(workdir, i, "train", "member-02", message="trained", resumed_from_step=150)
        else:
            record(workdir, i, "train", f"member-{m:02d}", message="trained")
    record(workdir, i, "calibrate", "committee", test_force_rmse=0.25 - 0.05 * i, a=1.2 + 0.1 * i, b=0.9,
           validity_limit=0.5, subset_validity_limits=[0.5], rms_z_out_of_sample=1.1, test_structures=2,
           members=3 - failed_member, failed_members=["member-01"] if failed_member else [], calibration_points=96)  # fmt: skip
    for system in SYSTEMS:
        if evaluate:
            record(workdir, i, "evaluate", f"errors-{system}")
            record(workdir, i, "evaluate", f"summary-{system}",
                   **evaluation(0.120 - 0.02 * i, [0.130, 0.140, 0.150], [True, True, i == 0], 0.997 if i == 0 else None))  # fmt: skip
        for r in range(2):
            record(workdir, i, "md", f"{system}-{r:02d}", stable=r == 0, reason="ok" if r == 0 else "exploded", frames=4, steps=40)
        record(workdir, i, "sample", system, count=2, **({"trust_radius": 0.3, "trust_source": "walks"} if i else {}))
        record(workdir, i, "cago", f"{system}-000", reason="reached", steps=2, sigma_cal_rms=0.1, delta=0.1, direction="up",
               action="pushed", start="redrawn", warnings=[], flags=["fast"], max_displacement=0.2, closest_pair_ratio=0.9, subset=[0, 1])  # fmt: skip
        record(workdir, i, "cago", f"{system}-001", reason="max_steps", steps=50, sigma_cal_rms=0.07, delta=0.1,
               direction="down", action="pushed", warnings=[], subset=[0, 1])  # fmt: skip
        record(workdir, i, "cago", f"{system}-002", reason="no_room", steps=0, sigma_cal_rms=0.3, delta=None,
               direction="unmoved", action="sampled", warnings=[], subset=[0, 2])  # fmt: skip
        record(workdir, i, "prefilter", system, kept=[f"{system}-000", f"{system}-001"], rejected={})
        for k in range(2):
            record(workdir, i, "reference", f"{system}-{k:03d}", message="SCF converged")
        record(workdir, i, "postfilter", system, attempted=2, kept=2, rejected={}, hit_ratios=[1.0], unreached_hit_ratios=[0.7],
               true_errors=[0.1, 0.07], true_error_by_task={f"{system}-000": 0.1, f"{system}-001": 0.07})  # fmt: skip
    record(workdir, i, "merge", "dataset", added=4, dataset=dataset + 4, to_test=1, hit_ratio_mean=1.05 + i,
           hit_ratio_median=1.0 + i, hits=2, unreached=0, true_error_mean=0.105)  # fmt: skip


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    """Initial labelling, iteration 0 (a failed member) and 1 (a reference still running), stopped early."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "campaign.json").write_text(json.dumps({"name": "t", "iterations": 3, "systems": {s: {} for s in SYSTEMS}}))
    for system in SYSTEMS:
        record(workdir, -1, "initial", system, count=5)
        record(workdir, -1, "postfilter", system, attempted=5, kept=5, rejected={}, hit_ratios=[], unreached_hit_ratios=[],
               true_errors=[])  # fmt: skip
    record(workdir, -1, "merge", "dataset", added=10, dataset=10, to_test=0, hit_ratio_mean=None, hit_ratio_median=None,
           hits=0, unreached=0, true_error_mean=None)  # fmt: skip
    iteration(workdir, 0, 10, evaluate=True, failed_member=True)
    iteration(workdir, 1, 14, evaluate=True)
    (workdir / "iter-001" / "reference" / "water-002").mkdir()  # no record yet: running
    (workdir / "stopped.json").write_text(json.dumps({"iteration": 1, "reason": "held-out force RMSE below 90 meV/Å"}))
    return workdir


def status_output(workdir: Path, *options: str) -> str:
    result = CliRunner().invoke(app, ["status", str(workdir), *options], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def test_status_prints_two_tables_within_100_columns_with_the_science_and_its_units(campaign):
    shown = status_output(campaign)
    assert max(len(line) for line in shown.splitlines()) <= 100, shown
    assert "2 +1 failed" in shown and "+1 running" in shown
    for head in ("init", "split", "train", "calib", "eval", "md", "sample", "cago", "pre", "ref", "post", "merge"):
        assert f" {head} " in shown, head
    assert "meV/Å" in shown and "g/cm³" in shown and "Å²/ps" in shown
    assert "120 (140±8)" in shown and "100 (140±8)" in shown  # committee mean (members mean ± std), meV/Å
    assert "0.997±0.004" in shown and "0.231±0.012" in shown and "4.12±0.05" in shown
    assert "2/3" in shown and "3/3" in shown and "1/2 (1)" in shown and "0 water-dense" in shown and "8/2 +4" in shown
    assert "0.2/0.3 w" in shown  # iteration 1: the largest displacement of a walk / the radius the labelled walks set
    assert "F RMSE\ntest split\nmeV/Å" not in science_table(campaign_figures(campaign))[0]  # the held-out RMSE replaces it
    assert "iteration 0 train member-01: the trainer exited with code 1: out of memory" in shown
    assert "stopped early at iteration 1: held-out force RMSE below 90 meV/Å" in shown
    assert "resumed trainings" in shown and "iteration 1 member-02 from step 150" in shown
    assert "".join(f"the potential: cagoflow export {campaign} -o potential".split()) in "".join(shown.split())  # it is over


def test_status_json_holds_the_figures_of_the_tables(campaign):
    figures = json.loads(status_output(campaign, "--json"))
    assert figures == json.loads(json.dumps(campaign_figures(campaign)))
    init, first, second = figures["iterations"]
    assert init["iteration"] == -1 and init["dataset_after_merge"] == 10 and init["systems"] == {}
    # the members train on the dataset less its test split (10 - 2), the merge adds 4 to the dataset
    assert (first["training_set"], first["test_set"], first["added"], first["dataset_after_merge"]) == (8, 2, 4, 14)
    water = first["systems"]["water"]
    assert water["evaluation"]["force_rmse"] == 0.120 and water["evaluation"]["member_force_rmse"] == [0.130, 0.140, 0.150]
    assert water["evaluation"]["stable_members"] == 3 and water["evaluation"]["density_mean"] == 0.997
    assert water["cago"] == {"optimised": 2, "reached": 1, "flagged": 1, "flags": {"fast": 1},
                             "directions": {"up": 1, "down": 1, "unmoved": 1}, "unpushed": {"no_room: sampled": 1},
                             "redrawn": 1, "max_displacement": 0.2, "trust_radius": None, "trust_source": None}  # fmt: skip
    assert second["systems"]["water"]["cago"]["trust_radius"] == 0.3 and second["systems"]["water"]["cago"]["trust_source"] == "walks"
    assert water["md"] == {"stable": 1, "replicas": 2}
    assert water["cago_structures"] == [
        {"task": "water-000", "delta": 0.1, "sigma_cal": 0.1, "true_error": 0.1, "direction": "up", "reason": "reached", "flags": ["fast"]},
        {"task": "water-001", "delta": 0.1, "sigma_cal": 0.07, "true_error": 0.07, "direction": "down", "reason": "max_steps", "flags": []},
    ]  # the unpushed water-002 has no δ
    assert second["systems"]["water-dense"]["evaluation"]["density_mean"] is None
    assert first["hit_ratio_mean"] == 1.05 and first["calibration"]["test_force_rmse"] == 0.25
    assert first["failed"] == [{"stage": "train", "task": "member-01", "message": "the trainer exited with code 1: out of memory"}]
    assert second["stages"]["reference"] == {"done": 4, "failed": 0, "running": 1}
    assert first["resumed_training"] == {} and second["resumed_training"] == {"member-02": 150}
    assert figures["stopped"] == {"iteration": 1, "reason": "held-out force RMSE below 90 meV/Å"}
    assert figures["units"]["force_rmse"] == "eV/Å"


def test_an_old_campaign_without_evaluation_shows_the_test_split_rmse_and_md_replicas(campaign):
    for folder in campaign.glob("iter-*/evaluate"):
        for task in folder.iterdir():
            (task / "record.json").unlink()
            task.rmdir()
        folder.rmdir()
    heads, rows, notes = science_table(campaign_figures(campaign))
    assert "F RMSE\ntest split\nmeV/Å" in heads and "MD\nstable" in heads
    assert not any(h.startswith(("density", "stable\nmembers", "F RMSE\nmeV/Å")) for h in heads)
    assert ["0 water", "8/2 +4", "250", "1/2", "1/2 (1)\n1/1/1", "1.05"] in rows
    assert any("drifts" in note for note in notes)
    shown = status_output(campaign)
    assert max(len(line) for line in shown.splitlines()) <= 100, shown


def test_report_plots_figures_against_the_training_set_size(campaign, tmp_path):
    plots = {plot.name: plot for plot in report_plots(campaign_figures(campaign))}
    force = plots["learning-curve"].series
    assert [s.label for s in force][:2] == ["water, committee mean", "water-dense, committee mean"]
    assert force[0].x == [8, 12] and force[0].y == pytest.approx([120, 100])
    members = next(s for s in force if s.label == "water, members (mean ± std)")
    assert members.y == pytest.approx([140, 140]) and members.error == pytest.approx([8.165, 8.165], abs=1e-3)
    assert plots["stable-members"].series[0].y == pytest.approx([1, 2 / 3])
    density = plots["density"].series[0]
    assert (density.x, density.y, density.error) == ([8], [0.997], [0.004])  # no stable member: no point
    assert plots["cago-hit"].series[0].x == [0, 1] and plots["md-stability"].series[0].y == [0.5, 0.5]
    walks = {s.label: s.y for s in plots["cago-walks"].series}
    assert walks == {"up": pytest.approx([1 / 3] * 2), "down": pytest.approx([1 / 3] * 2), "unmoved": pytest.approx([1 / 3] * 2)}
    written = write_report(campaign, tmp_path / "report")
    images = [p for p in written if p.suffix == ".png"]
    assert sorted(p.name for p in images) == sorted([f"{name}.png" for name in plots] + ["cago-structures.png"])
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in images)
    # the page: the tables, the failed and resumed tasks, every plot embedded, nothing fetched
    page = written[-1]
    assert page.name == "index.html" and written[:-1] == images
    text = page.read_text()
    assert text.count("src='data:image/png;base64,") == len(images) and "://" not in text
    assert "120 (140±8)" in text and "0.997±0.004" in text and "<th>F RMSE<br>meV/Å</th>" in text
    assert "iteration 0 train member-01: the trainer exited with code 1: out of memory" in text
    assert "iteration 1 member-02 from step 150" in text and "stopped early at iteration 1" in text


def test_a_mean_and_its_spread_carry_the_same_decimals():
    from cagoflow.workflows.status import mean_std

    assert [mean_std(1.05, 0.0591, "{:.3g}"), mean_std(12.3, 1.4, "{:.3g}"), mean_std(0.12, 0.008, "{:.0f}", 1000)] == [
        "1.05±0.06", "12.3±1.4", "120±8",
    ]  # fmt: skip
