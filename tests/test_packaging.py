"""The three workflow folders import as cagoflow.apps/.executors/.workflows, installed either way."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cagoflow", "cagoflow.apps", "cagoflow.executors", "cagoflow.workflows")
PROBE = (
    "import importlib, json; "
    f"print(json.dumps({{name: importlib.import_module(name).__file__ for name in {PACKAGES!r}}}))"
)


def imported_files(cwd: Path, pythonpath: str | None = None) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin"} | ({"PYTHONPATH": pythonpath} if pythonpath else {})
    output = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return json.loads(output.stdout)


def test_editable_install_maps_the_workflow_folders(tmp_path):
    files = imported_files(tmp_path)  # outside the source tree: only the installed finder can help
    assert Path(files["cagoflow.apps"]) == ROOT / "apps" / "__init__.py"
    assert Path(files["cagoflow.executors"]) == ROOT / "executors" / "__init__.py"
    assert Path(files["cagoflow.workflows"]) == ROOT / "workflows" / "__init__.py"


def test_built_wheel_holds_and_imports_the_workflow_folders(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("cagoflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in PACKAGES:
        assert f"{package.replace('.', '/')}/__init__.py" in names
    assert not any(name.startswith(("apps/", "executors/", "workflows/", "tests/")) for name in names)
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    files = imported_files(tmp_path, pythonpath=str(unpacked))
    for package in PACKAGES:
        assert Path(files[package]).is_relative_to(unpacked), files[package]
