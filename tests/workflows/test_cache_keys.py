"""Every task's key covers what it reads: a changed upstream output reruns exactly its dependants.

Each test copies the finished test campaign, changes one output as a rerun of its task would
(new MD frames, a retrained member, a changed reference label), runs the campaign again and
compares the tasks that ran with those that read the changed file, directly or through outputs
that changed in turn.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cagoflow.campaign import load_campaign
from cagoflow.executors.site import default_site
from cagoflow.io import read_structures, write_structures
from cagoflow.records import executions
from cagoflow.workflows.driver import run_campaign

ITERATION_1 = {"calibrate", "md", "sample", "cago", "prefilter", "reference", "postfilter", "merge"}


@pytest.fixture(scope="module")
def finished_campaign(tmp_path_factory, write_campaign) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    run_campaign(load_campaign(write_campaign(folder)), default_site(), folder / "work")
    return folder / "work"


def rerun_after(change, finished_campaign: Path, tmp_path: Path) -> set[tuple[str, int, str]]:
    """The (stage, iteration, task) that ran again after ``change(workdir)`` on a copy."""
    workdir = tmp_path / "work"
    shutil.copytree(finished_campaign, workdir)
    shutil.copy(finished_campaign.parent / "campaign.yaml", tmp_path / "campaign.yaml")
    shutil.copy(finished_campaign.parent / "water.extxyz", tmp_path / "water.extxyz")
    change(workdir)
    before = len(executions(workdir))
    run_campaign(load_campaign(tmp_path / "campaign.yaml"), default_site(), workdir)
    return {(e["stage"], e["iteration"], e["task"]) for e in executions(workdir)[before:]}


def stages(rerun: set[tuple[str, int, str]]) -> set[tuple[str, int]]:
    return {(stage, iteration) for stage, iteration, _ in rerun}


def test_new_md_frames_rerun_the_sampling_and_what_follows_it_only(finished_campaign, tmp_path):
    def new_frames(workdir: Path) -> None:
        path = workdir / "iter-001" / "md" / "water-00" / "frames.extxyz"
        frames = read_structures(path)
        for k, atoms in enumerate(frames):
            atoms.rattle(0.02, seed=k)
        write_structures(path, frames)

    rerun = stages(rerun_after(new_frames, finished_campaign, tmp_path))
    assert ("sample", 1) in rerun and ("cago", 1) in rerun and ("merge", 1) in rerun
    assert rerun <= {(stage, 1) for stage in ITERATION_1 - {"calibrate", "md"}}


def test_a_retrained_member_reruns_every_task_that_reads_the_committee(finished_campaign, tmp_path):
    def retrain(workdir: Path) -> None:
        path = workdir / "iter-001" / "train" / "member-00" / "model.json"
        model = json.loads(path.read_text())
        model["pairs"]["H-O"]["D"] *= 1.05
        path.write_text(json.dumps(model))

    rerun = rerun_after(retrain, finished_campaign, tmp_path)
    assert {"calibrate", "md", "sample", "cago", "prefilter", "postfilter", "merge"} <= {s for s, i in stages(rerun) if i == 1}
    assert stages(rerun) <= {(stage, 1) for stage in ITERATION_1}
    assert not any(stage == "train" for stage, _, _ in rerun)


def test_changed_reference_labels_rerun_the_filter_the_merge_and_what_trains_or_calibrates_on_them(finished_campaign, tmp_path):
    """Iteration 0's CAGO structures relabelled (a reference run again): iteration 0's post-filter
    and merge, iteration 1's split, calibration (one of them is routed to the test split) and the
    members whose training or validation file holds one of them rerun; the other members do not."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from cagoflow.hashing import structure_hash

    relabelled: set[str] = set()

    def relabel(workdir: Path) -> None:
        for path in sorted((workdir / "iter-000" / "reference").glob("*/labelled.extxyz")):
            (atoms,) = read_structures(path)
            results = {**atoms.calc.results, "energy": atoms.calc.results["energy"] + 0.1}
            atoms.calc = SinglePointCalculator(atoms, **results)
            write_structures(path, [atoms])
            relabelled.add(structure_hash(atoms))

    rerun = rerun_after(relabel, finished_campaign, tmp_path)
    split = tmp_path / "work" / "iter-001" / "split" / "dataset"
    holding = {
        f"member-{m:02d}"
        for m in range(3)
        if relabelled & {structure_hash(atoms) for part in ("train", "validation")
                         for atoms in read_structures(split / f"member-{m:02d}-{part}.extxyz")}  # fmt: skip
    }
    # which members hold them follows the bootstrap draws over geometry hashes (on one machine 1
    # of 3, on another none): exactly those retrain, whichever they are
    assert {task for stage, iteration, task in rerun if stage == "train"} == holding
    assert {stage for stage, iteration in stages(rerun) if iteration == 0} == {"postfilter", "merge"}
    assert {"split", "calibrate", "merge"} <= {stage for stage, iteration in stages(rerun) if iteration == 1}
    assert not any(iteration < 0 for _, iteration in stages(rerun))
