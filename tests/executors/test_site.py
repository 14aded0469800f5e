"""Tests of cagoflow.executors.site: the site schema, its stage map and its loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cagoflow.executors.site import SiteConfig, default_site, load_site
from input_errors import DELETE, assert_input_error, case, edited

SLURM_SITE: dict[str, Any] = {
    "name": "cluster",
    "executors": {
        "cpu": {"kind": "htex_slurm", "max_workers": 4, "provider": {"partition": "cpu", "walltime": "02:00:00"}},
        "gpu": {
            "kind": "htex_slurm",
            "available_accelerators": [0, 1],
            "provider": {"partition": "gpu", "gpus_per_node": 2, "walltime": "48:00:00", "exclusive": False},
        },
        "dft": {"kind": "mpi", "max_workers": 2, "provider": {"partition": "cpu", "nodes_per_block": 2}},
    },
    "stages": {"default": "cpu", "train": "gpu", "md": "gpu", "cago": "gpu", "reference": "dft"},
    "engines": {"cp2k": {"threads": 2, "env": {"OMP_STACKSIZE": "64M", "CP2K_DATA_DIR": 1}}},
}


def write_site(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def site_changed(changes: dict[str, Any]) -> dict[str, Any]:
    return edited(SLURM_SITE, changes)


def test_slurm_site_loads(tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path, SLURM_SITE))
    assert site.executor_for("train") == "gpu" and site.executor_for("merge") == "cpu"
    assert site.executor_for("reference") == "dft"
    gpu = site.executors["gpu"]
    assert gpu.available_accelerators == ["0", "1"] and gpu.launcher == "single_node"
    assert gpu.provider is not None and gpu.provider.walltime_seconds == 48 * 3600 and not gpu.provider.exclusive
    assert site.executors["dft"].launcher == "simple"
    assert site.engines.cp2k.command == "cp2k.psmp" and site.engines.cp2k.threads == 2
    assert site.engines.cp2k.env == {"OMP_STACKSIZE": "64M", "CP2K_DATA_DIR": "1"}


BROKEN_SITES = [
    case(
        "unknown-executor",
        site_changed({"stages.train": "gpus"}),
        "stages.train", "'gpus'", "did you mean 'gpu'", "cpu, gpu, dft",
    ),
    case(
        "bad-walltime",
        site_changed({"executors.gpu.provider.walltime": "2h"}),
        "executors.gpu.provider.walltime", "HH:MM:SS", "'2h'",
    ),
    case(
        "walltime-minutes",
        site_changed({"executors.cpu.provider.walltime": "01:75:00"}),
        "executors.cpu.provider.walltime", "HH:MM:SS",
    ),
    case("unknown-stage", site_changed({"stages.trian": "gpu"}), "stages.trian", "did you mean 'train'"),
    case("stages-without-default", site_changed({"stages.default": DELETE}), "stages", "calibrate", "default"),
    case(
        "slurm-without-provider",
        site_changed({"executors.cpu.provider": DELETE}),
        "executors.cpu.provider", "needs a provider",
    ),
    case(
        "threads-with-provider",
        site_changed({"executors.cpu.kind": "threads"}),
        "executors.cpu.provider", "takes no provider",
    ),
    case("bad-kind", site_changed({"executors.cpu.kind": "htex"}), "executors.cpu.kind", "'htex_slurm'"),
    case(
        "multi-node-single-launcher",
        site_changed({"executors.cpu.provider.nodes_per_block": 2}),
        "executors.cpu.provider.launcher", "srun",
    ),
    case(
        "mpi-with-srun-launcher",
        site_changed({"executors.dft.provider.launcher": "srun"}),
        "executors.dft.provider.launcher", "simple",
    ),
    case(
        "more-accelerators-than-gpus",
        site_changed({"executors.gpu.available_accelerators": 4}),
        "executors.gpu.available_accelerators", "gpus_per_node 2",
    ),
    case(
        "blocks",
        site_changed({"executors.cpu.provider.min_blocks": 3, "executors.cpu.provider.max_blocks": 2}),
        "executors.cpu.provider.min_blocks", "exceeds max_blocks",
    ),
    case("no-executors", {"executors": {}}, "executors", "at least one executor"),
    case("empty-site", "", "executors", "must define its executors"),
    case("bad-yaml", "executors:\n  cpu: {kind: threads\n", None, "malformed YAML", "line"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "field", "words"), BROKEN_SITES)
def test_broken_site(tmp_path: Path, data: Any, field: str | None, words: tuple[str, ...]) -> None:
    assert_input_error(write_site(tmp_path, data), field, *words, loader=load_site)


def test_site_executor_for_unknown_stage() -> None:
    with pytest.raises(ValueError):
        default_site().executor_for("relax")


def test_site_with_only_executors_runs_everything_on_the_first() -> None:
    site = SiteConfig(executors={"a": {"kind": "htex_local"}, "b": {"kind": "threads"}})
    assert set(site.stage_executors.values()) == {"a"}


# ---------------------------------------------------------------------------------------------


def test_every_reference_program_has_a_site_entry_with_its_program_as_default():
    from cagoflow.engines import REFERENCE_PROGRAMS

    site = SiteConfig.model_validate({"executors": {"local": {"kind": "threads"}}, "engines": {"espresso": {"ranks": 4}}})
    assert site.engines.espresso.command == "pw.x" and site.engines.espresso.ranks == 4
    for name, program in REFERENCE_PROGRAMS.items():
        assert getattr(default_site().engines, name).command == program.program
