"""Tests of cagoflow.models (committee files) and of the one backend registry they and campaigns use."""

from __future__ import annotations

from pathlib import Path

import pytest

from cagoflow.morse_committee import MorseCommittee
from cagoflow.backends import BACKENDS, Backend, get_backend
from cagoflow.backends.analytic import ReferencedMorseCommittee, ReferencedMorseModel, write_model_file
from cagoflow.campaign import CommitteeConfig
from cagoflow.errors import InputError
from cagoflow.inputs import InputModel, validate_input
from cagoflow.models import (
    COMMITTEE_BACKENDS,
    MorseCommitteeSpec,
    TrainedCommitteeSpec,
    load_committee,
    load_committee_spec,
)


def committee_file(folder: Path, text: str) -> Path:
    path = folder / "committee.yaml"
    path.write_text(text)
    return path


def files(folder: Path, *names: str) -> list[Path]:
    """Empty files (a committee file's validation only checks that they exist)."""
    paths = [folder / name for name in names]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return paths


@pytest.fixture
def analytic_members(tmp_path) -> list[Path]:
    """Two model.json files of the analytic backend, in tmp_path/members."""
    paths = []
    for seed in (0, 1):
        model = ReferencedMorseModel.for_symbols(["O", "H"], spread=0.05, seed=seed)
        paths.append(write_model_file(tmp_path / "members" / f"m{seed}.json", model, {}, {}))
    return paths


# --- the registry ---------------------------------------------------------------------------


def test_every_registered_backend_loads_under_its_name():
    assert list(BACKENDS) == ["analytic", "deepmd", "nequip", "allegro"]
    for name in BACKENDS:
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name


class _Campaign(InputModel):
    committee: CommitteeConfig


@pytest.mark.parametrize("name, hint", [("deepmdd", "did you mean 'deepmd'"), ("mace", ""), ("morse", "")])
def test_campaign_backend_is_checked_against_the_registry(name, hint):
    for known in BACKENDS:
        assert CommitteeConfig(backend=known).backend == known
    with pytest.raises(InputError) as error:
        validate_input(_Campaign, {"committee": {"backend": name}}, file=Path("campaign.yaml"), text="", context={})
    assert error.value.field == "committee.backend"
    assert f"unknown backend '{name}'" in error.value.detail and hint in error.value.detail
    assert "expected one of: analytic, deepmd, nequip, allegro" in error.value.detail


# --- committee files ------------------------------------------------------------------------


def test_morse_committee_file(tmp_path):
    path = committee_file(tmp_path, "backend: morse\nmembers: 3\nspecies: [O, H]\nspread: 0.02\nseed: 1\n")
    spec = load_committee_spec(path)
    assert isinstance(spec, MorseCommitteeSpec) and spec.members == 3
    committee = load_committee(path)
    assert isinstance(committee, MorseCommittee) and committee.n_members == 3


def test_trained_committee_file_resolves_paths_and_builds(tmp_path, analytic_members):
    path = committee_file(tmp_path, "backend: analytic\nmodels: [members/m0.json, members/m1.json]\n")
    spec = load_committee_spec(path)
    assert isinstance(spec, TrainedCommitteeSpec)
    assert spec.models == tuple(analytic_members) and spec.device == "auto"
    committee = spec.build()
    assert isinstance(committee, ReferencedMorseCommittee) and committee.n_members == 2
    morse_key = "backend: analytic\nmembers: 3\nmodels: [members/m0.json, members/m1.json]\n"
    with pytest.raises(InputError, match="unknown key 'members'") as error:
        load_committee_spec(committee_file(tmp_path, morse_key))
    assert error.value.field == "members" and error.value.file == str(path)


@pytest.mark.parametrize(
    "backend, names",
    [
        ("analytic", ("a.json", "b.json")),
        ("deepmd", ("a.pth", "b.pt")),
        ("nequip", ("a.nequip.pt2", "b.ckpt")),
        ("allegro", ("a.nequip.pt2", "b.ckpt")),
    ],
)
def test_committee_file_of_every_backend_has_one_schema(tmp_path, backend, names):
    models = files(tmp_path / "models", *names)
    a, b = (f"models/{name}" for name in names)
    text = f"backend: {backend}\nmodels: [{a}, {b}]\n"
    spec = load_committee_spec(committee_file(tmp_path, text))
    assert (spec.backend, spec.models, spec.device) == (backend, tuple(models), "auto")
    assert load_committee_spec(committee_file(tmp_path, text + "device: cpu\n")).device == "cpu"
    for text, field, message in (
        (f"models: [{a}, models/c]", "models", "does not exist"),
        (f"models: [{a}]", "models", "at least 2"),
        (f"models: [{a}, {b}]\ndevice: tpu", "device", "'auto', 'cpu' or 'cuda'"),
    ):
        with pytest.raises(InputError, match=message) as error:
            load_committee_spec(committee_file(tmp_path, f"backend: {backend}\n{text}\n"))
        assert error.value.field == field and error.value.file == str(tmp_path / "committee.yaml")


def test_the_backend_checks_its_model_files_when_it_loads_them(tmp_path):
    """A committee file names the backend; its ``load`` refuses files of another backend."""
    files(tmp_path, "a.ckpt", "b.ckpt")
    spec = load_committee_spec(committee_file(tmp_path, "backend: deepmd\nmodels: [a.ckpt, b.ckpt]\ndevice: cpu\n"))
    with pytest.raises(InputError, match="expected a DeePMD-kit PyTorch model") as error:
        spec.build()
    assert error.value.file == str(tmp_path / "a.ckpt")


@pytest.mark.parametrize(
    "name, hint", [("mace", ""), ("deepdm", "did you mean 'deepmd'"), ("mors", "did you mean 'morse'")]
)
def test_unknown_backend_lists_the_committee_backends(tmp_path, name, hint):
    path = committee_file(tmp_path, f"# a committee\nbackend: {name}\nmodels: [a, b]\n")
    with pytest.raises(InputError) as error:
        load_committee_spec(path)
    assert (error.value.file, error.value.field) == (str(path), "backend")
    assert error.value.detail.startswith("line 2: ") and hint in error.value.detail
    assert f"expected one of: {', '.join(COMMITTEE_BACKENDS)}" in error.value.detail
    assert COMMITTEE_BACKENDS == (*BACKENDS, "morse")


@pytest.mark.parametrize(
    "text, now",
    [
        ("backend: analytic-trained\nmodels: [a.json, b.json]\n", "write 'backend: analytic'"),
        ("backend: analytic\nmembers: 3\nspecies: [O, H]\nspread: 0.02\n", "write 'backend: morse'"),
        ("backend: analytic\nspecies: [O]\n", "write 'backend: morse'"),
    ],
)
def test_committee_files_of_earlier_versions_say_the_name_to_use(tmp_path, text, now):
    path = committee_file(tmp_path, text)
    with pytest.raises(InputError, match=now) as error:
        load_committee_spec(path)
    assert (error.value.file, error.value.field) == (str(path), "backend")
