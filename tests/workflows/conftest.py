"""Fixtures of the workflow tests: a small local water campaign written on demand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import yaml

from cagoflow.io import write_structures
from cagoflow.structures import water_box

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
