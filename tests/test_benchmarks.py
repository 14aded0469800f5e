"""The benchmark scripts' own contracts (their figures are printed, not asserted: see benchmarks/)."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_fails_loudly_when_its_set_up_fails(tmp_path):
    """Without ./.venv and without --bundle nothing can run: a non-zero exit and a FAILED line,
    never "the table is ..." for a table that was not written."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "gpu_check.sh", tmp_path / "benchmarks" / "gpu_check.sh")
    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", str(tmp_path / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 3, run.stdout + run.stderr
    shown = run.stdout + run.stderr
    assert "gpu_check.sh: FAILED: the set-up failed" in shown and "no table was written" in shown
    assert "the table is" not in shown and not (out / "gpu_check.md").exists()
