"""Tests of the ``cagoflow`` command line (cagoflow.cli).

User errors must end as one paragraph on stderr with exit code 2 that names the file and the
field, never as a traceback. Those cases run the installed ``cagoflow`` command in real
subprocesses. Each subprocess spends about a second importing, so they are all started in the
background (two at a time) as soon as the module's first test sets up, and the tests of the
error cases only collect their results.

The runs that do real work (calibrate, cago, the demo) go through ``typer.testing.CliRunner``
in this process, and come FIRST in this file so that the background subprocesses run while
they compute.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from ase import Atoms
from typer.testing import CliRunner

from cagoflow.calibration import CommitteeCalibration
from cagoflow.cli import app
from cagoflow.stages import STAGES
from cagoflow.committee import force_sigma_hat
from cagoflow.demo import label
from cagoflow.io import read_structures, write_structures
from cagoflow.models import MorseCommitteeSpec, load_committee
from cagoflow.structures import water_box

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = ROOT / "examples" / "water"
EXAMPLE = EXAMPLE_DIR / "campaign.yaml"
LOCAL_SITE = ROOT / "site-configs" / "local-threads.yaml"

COMMANDS = ("run", "status", "report", "calibrate", "cago", "validate")
#: The driver's commands given something that is not a campaign, and what they must say.
DRIVER = {"run": "does not exist", "status": "not a campaign work directory", "report": "not a campaign work directory"}
COMMITTEE = {"backend": "morse", "members": 3, "species": ["O", "H"], "spread": 0.05, "seed": 1}
SUBSET = (0, 1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cagoflow_command() -> str:
    """The installed console script: next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("cagoflow")
    if beside.exists():
        return str(beside)
    found = shutil.which("cagoflow")
    assert found is not None, "the cagoflow console script is not installed"
    return found


CAGOFLOW = _cagoflow_command()


def run_cli(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``cagoflow`` command in a fresh process."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [CAGOFLOW, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=180, check=False
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, an 'error:' paragraph on stderr holding every fragment, no traceback."""
    report = f"exit {result.returncode}\nargs: {result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, report
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, report
    assert "error:" in result.stderr, report
    for fragment in fragments:
        assert fragment.lower() in result.stderr.lower(), f"{fragment!r} missing\n{report}"


def invoke(*args: Any):
    """Run the Typer app in this process; an unexpected exception is re-raised with its traceback."""
    result = CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200", "NO_COLOR": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG file"


# ---------------------------------------------------------------------------------------------
# Broken campaign files (each written into its own folder next to a copy of the example)
# ---------------------------------------------------------------------------------------------


def _campaign_dir(folder: Path) -> Path:
    """A copy of the example campaign's folder (its structure file included)."""
    shutil.copytree(EXAMPLE_DIR, folder)
    return folder


def _write_campaign(folder: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    _campaign_dir(folder)
    data = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    change(data)
    path = folder / "broken.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(*keys_and_value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets data[k1][k2]... = value."""
    *keys, value = keys_and_value

    def change(data: dict[str, Any]) -> None:
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def _malformed_yaml(folder: Path) -> Path:
    path = _campaign_dir(folder) / "broken.yaml"
    path.write_text("name: water\nsystems:\n  water: {structures: water-16.extxyz\niterations: 3\n")
    return path


def _unknown_key(folder: Path) -> Path:
    return _write_campaign(folder, _set("cago", "deltaa", 0.1))


def _wrong_type(folder: Path) -> Path:
    return _write_campaign(folder, _set("iterations", "three"))


def _negative_delta(folder: Path) -> Path:
    return _write_campaign(folder, _set("cago", "delta", -0.1))


def _missing_structure_file(folder: Path) -> Path:
    return _write_campaign(folder, _set("systems", "water", "structures", "no-such-file.extxyz"))


def _overlapping_atoms(folder: Path) -> Path:
    path = _write_campaign(folder, _set("systems", "water", "structures", "overlap.extxyz"))
    atoms = water_box(4)
    atoms.positions[1] = atoms.positions[0] + [0.1, 0.0, 0.0]
    write_structures(folder / "overlap.extxyz", [atoms])
    return path


def _empty_file(folder: Path) -> Path:
    path = _campaign_dir(folder) / "broken.yaml"
    path.write_text("")
    return path


def _empty_systems(folder: Path) -> Path:
    return _write_campaign(folder, _set("systems", {}))


def _directory(folder: Path) -> Path:
    path = _campaign_dir(folder) / "broken.yaml"
    path.mkdir()
    return path


def _binary_garbage(folder: Path) -> Path:
    path = _campaign_dir(folder) / "broken.yaml"
    path.write_bytes(bytes(np.random.default_rng(0).integers(128, 256, size=512, dtype=np.uint8)))
    return path


def _markup_in_file_name(folder: Path) -> Path:
    """A path that rich would read as a closing markup tag '[/b]' must be printed as it is."""
    inner = folder / "runs[" / "b]"
    inner.mkdir(parents=True)
    return inner / "missing.yaml"


@dataclass(frozen=True)
class Broken:
    make: Callable[[Path], Path]
    fragments: tuple[str, ...]


BROKEN_CAMPAIGNS = {
    "malformed-yaml": Broken(_malformed_yaml, ("malformed YAML", "line")),
    "unknown-key": Broken(_unknown_key, ("cago.deltaa", "unknown key")),
    "wrong-type": Broken(_wrong_type, ("'iterations'", "three")),
    "negative-delta": Broken(_negative_delta, ("cago.delta", "-0.1")),
    "missing-structure-file": Broken(_missing_structure_file, ("systems.water.structures", "does not exist")),
    "overlapping-atoms": Broken(_overlapping_atoms, ("systems.water.structures", "overlapping atoms")),
    "empty-file": Broken(_empty_file, ("'systems'", "empty")),
    "empty-systems": Broken(_empty_systems, ("'systems'", "empty mapping")),
    "directory": Broken(_directory, ("directory",)),
    "binary-garbage": Broken(_binary_garbage, ("binary",)),
    "markup-in-file-name": Broken(_markup_in_file_name, ("does not exist",)),
}


# ---------------------------------------------------------------------------------------------
# Fixtures: inputs, background subprocesses, one `cagoflow calibrate` run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    folder: Path
    committee: Path
    test_set: Path
    starts: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """Committee file (the Morse test committee, 3 members), a labelled test set of 30 rattled water boxes, 2 starts."""
    folder = tmp_path_factory.mktemp("cli")
    committee = folder / "c.yaml"
    committee.write_text(yaml.safe_dump(COMMITTEE))
    truth = MorseCommitteeSpec(**COMMITTEE).truth()
    box = water_box(4)
    rng = np.random.default_rng(0)
    rattled = []
    for k in range(30):
        atoms = box.copy()
        atoms.rattle(stdev=float(rng.uniform(0.02, 0.15)), seed=k)
        rattled.append(atoms)
    test_set = write_structures(folder / "test.extxyz", label(rattled, truth))
    starts = write_structures(folder / "starts.extxyz", rattled[:2])
    return Inputs(folder, committee, test_set, starts)


class Jobs:
    """`cagoflow` subprocesses running in the background, by name; ``meta`` is what a test needs to know."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cagoflow-cli")
        self.futures: dict[str, tuple[Any, Future[subprocess.CompletedProcess[str]]]] = {}

    def submit(self, name: str, *args: Any, meta: Any = None, cwd: Path | None = None) -> None:
        self.futures[name] = (meta, self.pool.submit(run_cli, *args, cwd=cwd))

    def result(self, name: str) -> tuple[Any, subprocess.CompletedProcess[str]]:
        meta, future = self.futures[name]
        return meta, future.result()

    def folder_for(self, name: str) -> Path:
        return self.folder / name.replace(":", "-")


def _co_dimer() -> Atoms:
    return Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[8, 8, 8], pbc=True)


@pytest.fixture(scope="module")
def jobs(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobs]:
    """Start every error case that needs no calibration file."""
    jobs = Jobs(tmp_path_factory.mktemp("cli-jobs"))
    jobs.submit("help", "--help")
    for command in DRIVER:
        jobs.submit(f"driver:{command}", command, jobs.folder / "campaign")
    jobs.submit("validate:example", "validate", EXAMPLE, "--site", LOCAL_SITE, cwd=ROOT)
    jobs.submit("validate:site-only", "validate", "--site", ROOT / "site-configs" / "slurm-generic.yaml", cwd=ROOT)
    for case, broken in BROKEN_CAMPAIGNS.items():
        path = broken.make(jobs.folder_for(f"campaign:{case}"))
        jobs.submit(f"campaign:{case}", "validate", path, meta=path)

    site = yaml.safe_load(LOCAL_SITE.read_text())
    site["stages"] = {"default": "local", "md": "gpu"}
    site_file = jobs.folder / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    jobs.submit("site:unknown-executor", "validate", EXAMPLE, "--site", site_file, meta=site_file)

    committee, test_set = inputs.committee, inputs.test_set
    out = jobs.folder / "unused-output"
    empty = jobs.folder / "empty.extxyz"
    empty.write_text("")
    jobs.submit("calibrate:empty", "calibrate", "-c", committee, "-s", empty, "-o", out, meta=empty)
    jobs.submit("calibrate:unlabelled", "calibrate", "-c", committee, "-s", inputs.starts, "-o", out, meta=inputs.starts)
    mace = jobs.folder / "mace.yaml"
    mace.write_text(yaml.safe_dump({**COMMITTEE, "backend": "mace"}))
    jobs.submit("calibrate:backend", "calibrate", "-c", mace, "-s", test_set, "-o", out, meta=mace)
    jobs.submit("calibrate:subset", "calibrate", "-c", committee, "-s", test_set, "-o", out, "--subset", "0,7")
    taken = jobs.folder / "taken"
    taken.write_text("a file, not a folder")
    jobs.submit("calibrate:output-is-a-file", "calibrate", "-c", committee, "-s", test_set, "-o", taken, meta=taken)
    carbon = write_structures(jobs.folder / "co-labelled.extxyz", label([_co_dimer()], MorseCommitteeSpec(species=("C", "O")).truth()))
    jobs.submit("calibrate:species", "calibrate", "-c", committee, "-s", carbon, "-o", out, meta=carbon)

    bad_json = jobs.folder / "broken-calibration.json"
    bad_json.write_text('{"format": "cagoflow.committee-calibration", "members": [0, 1')
    jobs.submit(
        "cago:malformed-calibration", "cago", "-c", committee, "--calibration", bad_json, "-s", inputs.starts, "-o", out,
        meta=bad_json,
    )  # fmt: skip
    yield jobs
    jobs.pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Calibrated:
    output: Path
    stdout: str


@pytest.fixture(scope="module")
def calibrated(inputs: Inputs, jobs: Jobs) -> Calibrated:
    """`cagoflow calibrate --subset 0,1` (in-process), then start the cago error cases that need it."""
    output = inputs.folder / "out"
    result = invoke(
        "calibrate", "--committee", inputs.committee, "--structures", inputs.test_set, "--output", output,
        "--subset", ",".join(map(str, SUBSET)),
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    full, subset = output / "calibration.json", output / "calibration-subset.json"
    committee, starts = inputs.committee, inputs.starts
    jobs.submit(
        "cago:other-members", "cago", "-c", committee, "--calibration", full, "-s", starts,
        "-o", jobs.folder / "other-members", "--members", "0,1", "--max-steps", "1", meta=full,
    )  # fmt: skip
    jobs.submit(
        "cago:negative-delta", "cago", "-c", committee, "--calibration", subset, "-s", starts,
        "-o", jobs.folder / "negative-delta", "--members", "0,1", "--delta", "-1",
    )  # fmt: skip
    carbon = write_structures(jobs.folder / "co.extxyz", [_co_dimer()])
    jobs.submit(
        "cago:species", "cago", "-c", committee, "--calibration", full, "-s", carbon,
        "-o", jobs.folder / "species", "--max-steps", "1", meta=carbon,
    )  # fmt: skip
    return Calibrated(output, result.stdout)


# ---------------------------------------------------------------------------------------------
# Successful runs, in this process (first: the background subprocesses run meanwhile)
# ---------------------------------------------------------------------------------------------


def test_calibrate_writes_calibrations_and_plots(calibrated: Calibrated) -> None:
    out = calibrated.output
    full = json.loads((out / "calibration.json").read_text())
    subset = json.loads((out / "calibration-subset.json").read_text())
    assert full["members"] == list(range(COMMITTEE["members"]))
    assert subset["members"] == list(SUBSET)
    assert CommitteeCalibration.load(out / "calibration-subset.json").members == SUBSET
    for name in ("calibration", "calibration-subset"):
        plots = sorted(out.glob(f"{name}-forces*.png"))
        assert len(plots) >= 2, f"force plots of {name}: {plots}"
        for plot in plots:
            assert_png(plot)
    assert "calibration of members 0, 1, 2" in calibrated.stdout
    assert "calibration of members 0, 1 " in calibrated.stdout
    assert not (out / "walks.json").exists()  # no labelled walks among the test structures


def test_calibrate_judges_labelled_walks_among_the_structures(inputs: Inputs, tmp_path: Path) -> None:
    """Test structures that carry a CAGO walk's largest displacement are binned by it: the table,
    walks.json with the trust radius; without walks there is no walks.json."""
    from cagoflow.walk_validity import DISPLACEMENT_KEY, WalkCheck

    structures = read_structures(inputs.test_set)
    for k, atoms in enumerate(structures[:8]):
        atoms.info[DISPLACEMENT_KEY] = 0.01 * (k + 1)
    walked = write_structures(tmp_path / "with-walks.extxyz", structures)
    result = invoke("calibrate", "--committee", inputs.committee, "--structures", walked, "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    check = WalkCheck.from_dict(json.loads((tmp_path / "out" / "walks.json").read_text()))
    assert check.walks == 8 and check.judged and len(check.bins) == 1 and check.bins[0].high == pytest.approx(0.08)
    assert "labelled CAGO walks (8)" in result.output and "trust radius" in result.output


def _start_sigma(inputs: Inputs, calibration: CommitteeCalibration) -> np.ndarray:
    """Calibrated σ_cal RMS over atoms (eV/Å) of each starting structure, on the subset."""
    prediction = load_committee(inputs.committee).predict(read_structures(inputs.starts)).members(SUBSET)
    sigma = []
    for k in range(prediction.n_structures):
        sigma_cal = calibration.forces.law(force_sigma_hat(prediction.structure_forces(k)))
        sigma.append(np.sqrt(np.mean(sigma_cal**2)))
    return np.array(sigma)


def test_cago_on_a_subset(inputs: Inputs, calibrated: Calibrated, tmp_path: Path) -> None:
    calibration_file = calibrated.output / "calibration-subset.json"
    calibration = CommitteeCalibration.load(calibration_file)
    delta = 1.3 * float(_start_sigma(inputs, calibration).max())  # above every start: reachable
    out = tmp_path / "cago"
    result = invoke(
        "cago", "--committee", inputs.committee, "--calibration", calibration_file,
        "--structures", inputs.starts, "--output", out,
        "--members", ",".join(map(str, SUBSET)), "--delta", f"{delta:.6f}", "--max-steps", "30",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    structures = read_structures(out / "cago.extxyz")
    assert len(structures) == 2
    limits = {"contact", "trust_region", "packing"}
    for atoms in structures:
        assert atoms.info.get("cago_reason") in {"reached", "max_steps", "stalled", "not_finite"} | limits, atoms.info
        assert set(atoms.info["cago_flags"].split()) <= {"none", "fast"} | limits, atoms.info
    assert_png(out / "cago-progress.png")
    assert "walk" in result.output and "δ asked" in result.output  # the table: direction, δ asked and used
    limit = calibration.force_validity_limit
    assert limit is not None  # 30 test structures: judged out of sample, the calibration holds somewhere
    if delta > limit:
        assert "warning" in result.output.lower(), result.output
    else:
        assert "validity limit" not in result.output, result.output
    # calibrated without --training: the guard falls back to the starting structures, and says so
    assert "holds no training-set distances" in result.output


def test_cago_refuses_a_calibration_without_validity_limit(inputs: Inputs, calibrated: Calibrated, tmp_path: Path) -> None:
    """No validity limit: no δ can be trusted, so the command stops with one paragraph naming
    the file and the field, before it writes anything."""
    data = json.loads((calibrated.output / "calibration-subset.json").read_text())
    data["forces"]["diagnostics"]["validity_limit"] = None
    data["force_validity_limit_eV_per_A"] = None
    refused = tmp_path / "no-limit.json"
    refused.write_text(json.dumps(data))
    out = tmp_path / "cago"
    result = invoke(
        "cago", "--committee", inputs.committee, "--calibration", refused, "--structures", inputs.starts,
        "--output", out, "--members", ",".join(map(str, SUBSET)), "--delta", "0.1",
    )  # fmt: skip
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no validity limit" in result.output and "no-limit.json" in result.output, result.output
    assert not out.exists()


@pytest.mark.slow
def test_cago_demo(tmp_path: Path, jobs: Jobs) -> None:
    out = tmp_path / "demo"
    result = invoke("cago", "--demo", "--output", out)
    assert result.exit_code == 0, result.output
    assert "reached" in result.stdout
    for name in ("calibration.json", "calibration-subset.json", "cago.extxyz", "cago-progress.png"):
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    assert_png(out / "cago-progress.png")
    structures = read_structures(out / "cago.extxyz")
    assert structures
    for atoms in structures:
        assert "hit_ratio" in atoms.info, atoms.info
        assert 0.8 <= atoms.info["hit_ratio"] <= 1.25, atoms.info


# ---------------------------------------------------------------------------------------------
# help, the commands still to come, validate
# ---------------------------------------------------------------------------------------------


def test_help_lists_every_command(jobs: Jobs) -> None:
    _, result = jobs.result("help")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout, f"{command!r} missing from --help:\n{result.stdout}"


@pytest.mark.parametrize("command", DRIVER)
def test_driver_commands_refuse_what_is_not_a_campaign(command: str, jobs: Jobs) -> None:
    _, result = jobs.result(f"driver:{command}")
    assert_user_error(result, DRIVER[command], "campaign")
    assert not (jobs.folder / "campaign").exists()  # nothing created where nothing was


def test_validate_example_campaign_and_site(jobs: Jobs) -> None:
    _, result = jobs.result("validate:example")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert yaml.safe_load(EXAMPLE.read_text())["name"] in result.stdout
    assert "local-threads" in result.stdout


def test_validate_site_alone_shows_where_each_stage_runs(jobs: Jobs) -> None:
    _, result = jobs.result("validate:site-only")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if "→" in line}
    assert set(lines) == set(STAGES)
    assert "gpu (htex_slurm, partition gpu)" in lines["train"]
    assert "reference (mpi, partition cpu) (its Python parts on 'cpu')" in lines["reference"]


@pytest.mark.parametrize("case", list(BROKEN_CAMPAIGNS))
def test_validate_broken_campaign(case: str, jobs: Jobs) -> None:
    path, result = jobs.result(f"campaign:{case}")
    assert_user_error(result, str(path), *BROKEN_CAMPAIGNS[case].fragments)


def test_validate_broken_site(jobs: Jobs) -> None:
    path, result = jobs.result("site:unknown-executor")
    assert_user_error(result, str(path), "stages.md", "'gpu'", "not defined")


# ---------------------------------------------------------------------------------------------
# calibrate and cago: broken inputs
# ---------------------------------------------------------------------------------------------


def test_calibrate_empty_structure_file(jobs: Jobs) -> None:
    path, result = jobs.result("calibrate:empty")
    assert_user_error(result, str(path), "empty")


def test_calibrate_unlabelled_structures(jobs: Jobs) -> None:
    path, result = jobs.result("calibrate:unlabelled")
    assert_user_error(result, str(path), "no reference energy and forces")


def test_calibrate_unknown_backend(jobs: Jobs) -> None:
    path, result = jobs.result("calibrate:backend")
    assert_user_error(result, str(path), "'backend'", "mace", "analytic")


def test_calibrate_subset_out_of_range(jobs: Jobs) -> None:
    _, result = jobs.result("calibrate:subset")
    assert_user_error(result, "'--subset'", "0 to 2")


def test_calibrate_output_is_a_file(jobs: Jobs) -> None:
    path, result = jobs.result("calibrate:output-is-a-file")
    assert_user_error(result, str(path), "'--output'", "found a file")


def test_calibrate_species_the_committee_does_not_know(jobs: Jobs) -> None:
    path, result = jobs.result("calibrate:species")
    assert_user_error(result, str(path), "holds C", "committee knows only")


def test_cago_malformed_calibration(jobs: Jobs) -> None:
    path, result = jobs.result("cago:malformed-calibration")
    assert_user_error(result, str(path), "JSON")


def test_cago_refuses_a_calibration_of_other_members(calibrated: Calibrated, jobs: Jobs) -> None:
    path, result = jobs.result("cago:other-members")
    assert_user_error(result, str(path), "'members'", "fitted for members [0, 1, 2]", "[0, 1]", "own calibration")
    assert not (jobs.folder / "other-members").exists()


def test_cago_negative_delta(calibrated: Calibrated, jobs: Jobs) -> None:
    _, result = jobs.result("cago:negative-delta")
    assert_user_error(result, "--delta", "positive")


def test_cago_species_the_committee_does_not_know(calibrated: Calibrated, jobs: Jobs) -> None:
    path, result = jobs.result("cago:species")
    assert_user_error(result, str(path), "committee knows only")


def test_a_repeated_warning_reaches_the_console_once_and_is_counted():
    import io
    import logging

    from cagoflow.cli import OnceFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    once = OnceFilter()
    handler.addFilter(once)
    logger = logging.getLogger("cagoflow.test-once")
    logger.addHandler(handler)
    try:
        for _ in range(4):
            logger.warning("model hyperparameters are ignored")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["model hyperparameters are ignored", "something else"]
    assert once.repeats() == ["model hyperparameters are ignored (×4 in all)"]
