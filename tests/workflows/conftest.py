"""Fixtures of the workflow tests: a small local water campaign written on demand, and a real
DeePMD-kit campaign run once per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import yaml

from cagoflow.campaign import load_campaign
from cagoflow.engines.process import find_program
from cagoflow.executors.site import EngineCommand, EnginesConfig, default_site
from cagoflow.io import write_structures
from cagoflow.structures import water_box
from cagoflow.workflows.driver import run_campaign
from real_components import require_command, require_module

CAMPAIGN = {
    "name": "test-water",
    "seed": 3,
    "iterations": 2,
    "systems": {"water": {"structures": "water.extxyz", "initial_samples": 15, "initial_rattle": 0.04}},
    "committee": {"backend": "analytic", "size": 3, "min_trained": 2, "training_steps": 30},
    "md": {"schedule": {"ensemble": "nvt", "temperature": 300, "steps": 40, "timestep": 0.5, "dump_interval": 10}},
    "sampling": {
        "per_iteration": 2,
        "cago_from": [{"from_iteration": 0, "source": "training", "subset": 2}, {"from_iteration": 1, "source": "md"}],
    },
    "cago": {"delta": 0.15, "max_steps": 15},
    "reference": {"engine": "tblite", "method": "GFN1-xTB"},
}


def _write_campaign(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_structures(folder / "water.extxyz", [water_box(4, seed=1)])
    settings = json.loads(json.dumps(CAMPAIGN))
    for dotted, value in changes.items():
        target = settings
        *path, last = dotted.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path



@pytest.fixture(scope="session")
def write_campaign() -> Callable[..., Path]:
    """``write_campaign(folder, **{"dotted.key": value})``: the test campaign, changed as asked."""
    return _write_campaign


TINY_DEEPMD = {
    "backend": "deepmd",
    "size": 3,
    "min_trained": 3,
    "hyperparameters": {"model": {"descriptor": {"rcut": 4.0, "rcut_smth": 0.5}}, "learning_rate": {"start_lr": 0.01, "stop_lr": 0.001}},
    "training_steps": 60,
    "fine_tune": True,
}


@pytest.fixture(scope="session")
def deepmd_campaign(tmp_path_factory, write_campaign) -> Path:
    """Two iterations with 3 tiny DeePMD members, LAMMPS MD through the site's command (a wrapper
    that logs each start to ``lmp-calls.log``), CAGO, GFN1-xTB labels and the evaluation."""
    require_module("deepmd")
    require_module("tblite")
    require_command("dp")
    require_module("lammps")
    folder = tmp_path_factory.mktemp("deepmd-campaign")
    # the site's own LAMMPS: a wrapper that logs every start, then runs the venv's lmp
    wrapper = folder / "site-lmp"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {folder / "lmp-calls.log"}\nexec {find_program("lmp")} "$@"\n')
    wrapper.chmod(0o755)
    site = default_site().model_copy(update={"engines": EnginesConfig(lammps=EngineCommand(command=str(wrapper)))})
    campaign = write_campaign(
        folder,
        iterations=2,
        committee=TINY_DEEPMD,
        md={"engine": "lammps", "schedule": {"ensemble": "nvt", "temperature": 300, "steps": 40, "timestep": 0.5,
                                             "dump_interval": 10}},
        sampling={"per_iteration": 2, "cago_from": {"source": "md", "subset": "all"}},
        cago={"delta": {"relative": 1.5}, "max_steps": 10, "structures_per_task": 2},
        evaluation={
            "benchmark": {"generate": {"frames": 3, "md": {"steps": 30, "timestep": 1.0, "dump_interval": 10}}},
            "production": {"replicas": 1, "md": {"steps": 60, "timestep": 0.5, "dump_interval": 10}, "check_interval": 20},
        },
    )
    run_campaign(load_campaign(campaign), site, folder / "work")
    return folder / "work"
