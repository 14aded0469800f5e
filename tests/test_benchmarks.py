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


def _science_module(name: str):
    """A script of benchmarks/science as a module (the thread settings it sets for its own runs
    are taken back, so that later tests see the environment they had)."""
    import importlib
    import os
    import sys

    environment = dict(os.environ)
    sys.path.insert(0, str(ROOT / "benchmarks" / "science"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "science"))
        os.environ.clear()
        os.environ.update(environment)


def _paired_module():
    return _science_module("paired_active_learning")


def _seed(seed: int, base: float, arms: dict[str, tuple[float, float]]) -> dict:
    """A seed's scores (eV/Å): base in and out of distribution at ``base``, each arm at (ID, OOD)."""
    module = _paired_module()
    ood = "out of distribution (mean of 4)"
    scores = {"base": {module.IN_DISTRIBUTION: base, ood: base}}
    scores |= {arm: {module.IN_DISTRIBUTION: i, ood: o} for arm, (i, o) in arms.items()}
    return {"seed": seed, "scores": scores}


def test_paired_active_learning_sign_test_and_interval():
    module = _paired_module()
    assert abs(module.sign_test(4, 5) - 6 / 32) < 1e-12 and abs(module.sign_test(5, 5) - 1 / 32) < 1e-12
    low, high = module.bootstrap_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= low < 3.0 < high <= 5.0


def test_paired_active_learning_decision_rule():
    """CAGO better out of distribution in 4 of 5 seeds than both rivals, no loss in distribution,
    after a gate the unpushed frames pass (lower in distribution than the control fine-tuned
    without new data, by more than the base's seed spread): it helps; lose one more seed, or
    fail the gate: not."""
    module = _paired_module()

    def seeds(cago_ood: list[float], unpushed_id: float = 0.20) -> list[dict]:
        return [
            _seed(s, 0.25 + 0.001 * s, {
                module.CONTROL: (0.25, 0.31), "unpushed": (unpushed_id, 0.30), "max-uncertainty": (unpushed_id, 0.30), "cago-relative": (unpushed_id, cago_ood[s]),
                "cago-absolute": (unpushed_id, 0.30), "random-500K": (unpushed_id, 0.30),
            })  # fmt: skip
            for s in range(5)
        ]

    helps = module.decision(seeds([0.28, 0.28, 0.28, 0.28, 0.31]))
    assert helps["informative"] and helps["beats_both_out_of_distribution"] and helps["no_loss_in_distribution"]
    assert helps["verdict"] == "CAGO's push helps"
    assert helps["comparisons"]["cago-relative − unpushed"]["out of distribution (mean of 4)"]["wins"] == 4
    assert module.decision(seeds([0.28, 0.28, 0.28, 0.31, 0.31]))["verdict"] == "CAGO's push is not shown to help"
    gate = module.decision(seeds([0.28] * 5, unpushed_id=0.251))
    assert not gate["informative"] and gate["verdict"].startswith("uninformative")


def test_paired_active_learning_gate_report_without_convergence_seeds():
    """A run without convergence seeds says the check was not made, not that the base failed it."""
    module = _paired_module()
    arms = {arm: (0.2, 0.3) for arm in (module.CONTROL, "unpushed", "max-uncertainty", "cago-relative", "cago-absolute", "random-500K")}
    checks = module.decision([_seed(s, 0.25, arms) for s in range(5)])
    with module.console.capture() as captured:
        module.report_gate(checks)
    text = captured.get()
    assert "not checked" in text and "NOT converged" not in text
