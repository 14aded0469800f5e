"""DeePMD-kit backend (PyTorch): training inputs, training results, a batched differentiable committee.

Training (a pure template, see :mod:`cagoflow.backends`): the labelled extxyz splits are turned
into DeePMD's npy systems with dpdata, ``input.json`` is written from a preset built here, and
the commands are ``dp --pt train`` and ``dp --pt freeze``. A training killed mid-way (a SLURM
walltime) leaves numbered checkpoints in the work directory; writing the input again there makes
the train command continue from the newest one (``--restart``) instead of starting over.

Files in a work directory::

    data/train/..., data/validation/...   npy systems (one per composition and label set)
    input.json                             the trainer's input (out.json: as DeePMD resolved it)
    model.ckpt-<step>.pt, model.ckpt.pt    checkpoints (the latter links to the newest)
    lcurve.out                             learning curve (RMSEs per atom / per Å, see below)
    train.log, freeze.log                  DeePMD's own logs
    frozen_model.pth                       the deployable (TorchScript) model

Inference: :class:`DeepmdCommittee` calls each member's TorchScript module with MANY frames per
call (frames of equal size and periodicity are stacked; ragged batches are grouped), in float64.
Its :meth:`~DeepmdCommittee.torch_energy` is the same module seen as a differentiable torch
function of positions and cell, which the exact CAGO gradient differentiates twice: the model
builds its neighbour list from the coordinates on every call, and the energy (unlike the force
output, which DeePMD builds with ``create_graph=self.training``) carries a full graph in eval
mode, so no ``.train()`` switch is needed.

Units and signs: energies eV, forces eV/Å, virials eV with ``W = -dE/dε = -V·stress`` (ASE's
stress sign; dpdata writes training virials with the same sign). Learning-curve RMSEs: energy
and virial per atom (eV/atom), forces eV/Å.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from cagoflow.backends import TrainingResult, TrainingSettings, batch_atoms_for, deep_merge
from cagoflow.committee import CommitteePrediction
from cagoflow.engines.process import find_program
from cagoflow.errors import InputError
from cagoflow.io import log_tail

log = logging.getLogger(__name__)

#: File names inside a training work directory.
CHECKPOINT_PREFIX = "model.ckpt"
CHECKPOINT = "model.ckpt.pt"
FROZEN_MODEL = "frozen_model.pth"
LCURVE = "lcurve.out"
TRAIN_LOG = "train.log"
FREEZE_LOG = "freeze.log"
DATA_DIR = "data"

#: Atoms per model call at most (frames × atoms): large CPU batches get slower, GPUs take more.
DEFAULT_BATCH_ATOMS = {"cpu": 1024, "cuda": 32768}

#: ``sel`` (neighbours kept per type within rcut): DeePMD counts the densest environment of the
#: training data and keeps this factor of headroom for compressed (e.g. CAGO) structures.
SEL_AUTO = "auto:1.5"


# --- training input ------------------------------------------------------------------------------


def preset(name: str) -> dict[str, Any]:
    """The model, learning-rate and loss sections of a preset (no data, steps or seeds yet).

    ``tiny``: se_e2_a, embedding 8/16/32, 4 axis neurons, fitting 3×32 — seconds per hundred
    steps, for tests. ``paper``: the settings of Cezar et al. (se_e2_a, embedding 25/50/100,
    16 axis neurons, fitting 3×240; learning rate 1e-3 decaying to 3.51e-8). Both: rcut 6 Å,
    smoothing from 0.5 Å, ``sel`` counted on the training data with 50 % headroom; energy and
    force loss prefactors 0.02 → 1 and 1000 → 1 (virial 0.02 → 1 when the data have stress).
    """
    if name == "tiny":  # a fast learning rate: a few hundred steps must learn something
        embedding, axis, fitting, start_lr, stop_lr = [8, 16, 32], 4, [32, 32, 32], 5e-3, 1e-4
    elif name == "paper":
        embedding, axis, fitting, start_lr, stop_lr = [25, 50, 100], 16, [240, 240, 240], 1e-3, 3.51e-8
    else:
        raise InputError(f"unknown DeePMD preset {name!r}; expected 'tiny' or 'paper'", field="preset")
    return {
        "model": {
            "descriptor": {
                "type": "se_e2_a",
                "sel": SEL_AUTO,
                "rcut": 6.0,
                "rcut_smth": 0.5,
                "neuron": embedding,
                "axis_neuron": axis,
                "resnet_dt": False,
            },
            "fitting_net": {"neuron": fitting, "resnet_dt": True},
        },
        "learning_rate": {"type": "exp", "start_lr": start_lr, "stop_lr": stop_lr},
        "loss": {
            "type": "ener",
            "start_pref_e": 0.02,
            "limit_pref_e": 1.0,
            "start_pref_f": 1000.0,
            "limit_pref_f": 1.0,
            "start_pref_v": 0.0,
            "limit_pref_v": 0.0,
        },
    }


def _set_seeds(node: Any, seed: int) -> None:
    """Set every ``seed`` field of a nested input to ``seed``, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "seed":
                node[key] = seed
            else:
                _set_seeds(value, seed)
    elif isinstance(node, list):
        for value in node:
            _set_seeds(value, seed)


def _every(steps: int, cap: int) -> int:
    """An interval of about ``steps/10`` (at most ``cap``), preferably dividing ``steps`` so the
    last step is printed."""
    target = min(cap, max(1, steps // 10))
    for interval in range(target, (target + 1) // 2 - 1, -1):
        if interval > 0 and steps % interval == 0:
            return interval
    return target


@dataclass(frozen=True)
class DeepmdData:
    """A split converted to DeePMD npy systems.

    Attributes:
        systems: the system folders (one per composition and label set).
        n_frames: frames in all.
        has_virials: whether any frame carries a virial (from the stress).
    """

    systems: tuple[Path, ...]
    n_frames: int
    has_virials: bool


def _labelled_frames(path: Path) -> list[Atoms]:
    """All frames of an extxyz file, checked for energy and forces (InputError naming the file)."""
    from ase.io import read

    if not path.is_file():
        raise InputError("training data file does not exist", file=path)
    try:
        frames = read(path, index=":", format="extxyz")
    except Exception as exc:  # ASE raises many kinds for a malformed file
        raise InputError(f"cannot read the structures as extxyz ({type(exc).__name__}: {exc})", file=path) from None
    if not frames:
        raise InputError("the file holds no structures", file=path)
    for index, atoms in enumerate(frames):
        results = {} if atoms.calc is None else atoms.calc.results
        missing = [name for name in ("energy", "forces") if name not in results]
        if missing:
            raise InputError(f"frame {index} has no reference {' and '.join(missing)} (eV, eV/Å)", file=path)
        if atoms.pbc.any() and not atoms.pbc.all():
            raise InputError(
                f"frame {index} is periodic along some axes only (pbc={atoms.pbc.tolist()}); "
                "DeePMD-kit needs fully periodic or non-periodic structures",
                file=path,
            )
    return frames


def convert_to_deepmd(path: Path, folder: Path, type_map: Sequence[str]) -> DeepmdData:
    """Write the labelled frames of extxyz ``path`` as DeePMD npy systems under ``folder``.

    dpdata keeps one system per composition; frames with a stress (virial = −V·stress) and
    frames without one go to separate systems, since a system's frames must carry the same
    labels (DeePMD weighs the virial loss only where ``virial.npy`` exists).
    """
    import dpdata

    frames = _labelled_frames(path)
    unknown = sorted({symbol for atoms in frames for symbol in atoms.get_chemical_symbols()} - set(type_map))
    if unknown:
        raise InputError(f"species {', '.join(unknown)} are not in the type map {list(type_map)}", file=path)
    systems: list[Path] = []
    has_virials = False
    for label, with_stress in (("virial", True), ("no-virial", False)):
        part = [atoms for atoms in frames if ("stress" in atoms.calc.results) == with_stress]
        if not part:
            continue
        labelled = [dpdata.LabeledSystem(atoms, fmt="ase/structure") for atoms in part]
        multi = dpdata.MultiSystems(*labelled, type_map=list(type_map))
        multi.to_deepmd_npy(str(folder / label))
        systems += sorted(folder / label / name for name in multi.systems)
        has_virials = has_virials or with_stress
    return DeepmdData(tuple(systems), len(frames), has_virials)


def training_input(
    settings: TrainingSettings,
    train: Sequence[str],
    validation: Sequence[str],
    has_virials: bool,
    model: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``input.json`` of one member: preset, then the user's hyperparameters deep-merged over
    it, then what the settings fix (type map, steps, seeds, data).

    ``model``: the model section of the model training starts from (its architecture and
    ``sel`` must match its weights), in place of the preset's and the user's.
    """
    config = preset(settings.preset)
    config["loss"].update(
        {"start_pref_v": 0.02, "limit_pref_v": 1.0} if has_virials else {"start_pref_v": 0.0, "limit_pref_v": 0.0}
    )
    steps = settings.steps
    config["learning_rate"]["decay_steps"] = max(1, min(5000, steps // 20))
    config["training"] = {
        "training_data": {"batch_size": "auto"},
        "validation_data": {"batch_size": "auto", "numb_btch": 1},
        "disp_file": LCURVE,
        "disp_freq": _every(steps, 1000),
        "save_freq": min(1000, max(1, steps // 10)),
        "save_ckpt": CHECKPOINT_PREFIX,
    }
    config = deep_merge(config, settings.hyperparameters)
    if model is not None:
        if "model" in settings.hyperparameters:
            log.warning("model hyperparameters are ignored: training starts from a model with its own architecture")
        config["model"] = copy.deepcopy(dict(model))
    config["model"]["type_map"] = list(settings.type_map)
    for section in ("descriptor", "fitting_net"):
        config["model"].setdefault(section, {})["seed"] = settings.seed
    config["training"]["seed"] = settings.seed
    _set_seeds(config, settings.seed)
    config["training"]["numb_steps"] = steps
    config["training"]["training_data"]["systems"] = list(train)
    config["training"]["validation_data"]["systems"] = list(validation)
    return config


# --- learning curve --------------------------------------------------------------------------------

#: lcurve.out column → metric name (energy and virial per atom, eV/atom; forces eV/Å).
LCURVE_METRICS = {
    "rmse_e_trn": "train_energy_per_atom",
    "rmse_f_trn": "train_forces",
    "rmse_v_trn": "train_virial_per_atom",
    "rmse_e_val": "validation_energy_per_atom",
    "rmse_f_val": "validation_forces",
    "rmse_v_val": "validation_virial_per_atom",
}


def read_lcurve(path: Path) -> tuple[int, dict[str, float]]:
    """The last step of ``lcurve.out`` and its values by column name (the last header counts:
    a restarted run appends a new header)."""
    columns: list[str] | None = None
    last: list[str] | None = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# step"):
            columns = stripped.lstrip("#").split()
        elif stripped and not stripped.startswith("#"):
            last = stripped.split()
    if columns is None or last is None or len(last) != len(columns):
        raise ValueError(f"no learning-curve data in {path}")
    values = dict(zip(columns, (float(value) for value in last)))
    return int(values.pop("step")), values


# --- the backend -----------------------------------------------------------------------------------


class DeepmdBackend:
    """DeePMD-kit with its PyTorch backend (``dp --pt``); implements :class:`cagoflow.backends.Backend`.

    Args:
        command: how to start DeePMD-kit's CLI (a site-config may wrap it, e.g. in srun);
            None: ``dp`` (:func:`~cagoflow.engines.process.find_program`).
        batch_atoms: atoms per model call at most when predicting (None: by device).
    """

    name = "deepmd"

    def __init__(self, command: Sequence[str] | None = None, batch_atoms: int | None = None):
        self.command = tuple(command) if command is not None else (find_program("dp"),)
        self.batch_atoms = batch_atoms

    def write_training_input(
        self, train_file: Path, validation_file: Path, workdir: Path, settings: TrainingSettings
    ) -> list[list[str]]:
        """Convert the splits, write ``input.json``; return the train and freeze commands.

        The train command continues from ``model.ckpt.pt`` when an earlier (killed) run left it
        in ``workdir``. Otherwise it starts from ``settings.init_model`` when given: with the same
        species, from its weights (``--init-frz-model`` for a frozen .pth, ``--init-model`` for a
        .pt checkpoint) with its model section copied into ``input.json`` (so a restart of this
        run rebuilds the same model); with other species, by DeePMD's fine-tuning
        (``--finetune`` of a .pt checkpoint, ``--use-pretrain-script``).
        """
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if settings.steps < 1:
            raise InputError(f"expected at least one training step, got {settings.steps}", field="steps")
        data = workdir / DATA_DIR
        shutil.rmtree(data, ignore_errors=True)
        train = convert_to_deepmd(Path(train_file), data / "train", settings.type_map)
        validation = convert_to_deepmd(Path(validation_file), data / "validation", settings.type_map)
        start: list[str] = []
        model = None
        if (workdir / CHECKPOINT).exists():
            start = ["--restart", CHECKPOINT]
        elif settings.init_model is not None:
            start, model = _start_from(Path(settings.init_model), settings.type_map)
        config = training_input(
            settings,
            [str(path.relative_to(workdir)) for path in train.systems],
            [str(path.relative_to(workdir)) for path in validation.systems],
            train.has_virials,
            model,
        )
        (workdir / "input.json").write_text(json.dumps(config, indent=2) + "\n")
        dp = list(self.command)
        train_command = [*dp, "--pt", "train", "input.json", "--log-path", TRAIN_LOG, *start]
        freeze_command = [*dp, "--pt", "freeze", "-c", CHECKPOINT, "-o", FROZEN_MODEL, "--log-path", FREEZE_LOG]
        return [train_command, freeze_command]

    def resume_step(self, workdir: Path) -> int | None:
        """The step of the newest checkpoint an interrupted run left (``model.ckpt.pt`` links to
        ``model.ckpt-<step>.pt``; a copy in its place: the learning curve's last step)."""
        checkpoint = Path(workdir) / CHECKPOINT
        if not checkpoint.exists():
            return None
        match = re.fullmatch(rf"{re.escape(CHECKPOINT_PREFIX)}-(\d+)\.pt", checkpoint.resolve().name)
        if match:
            return int(match.group(1))
        try:
            return read_lcurve(Path(workdir) / LCURVE)[0]
        except (OSError, ValueError):
            return 0

    def model_files(self, model: Path) -> list[Path]:
        """A frozen model is one file."""
        return [Path(model)]

    def read_training_result(self, workdir: Path) -> TrainingResult:
        """The frozen model and the last RMSEs of ``lcurve.out``; NaN losses or no model: failed."""
        workdir = Path(workdir)
        model = workdir / FROZEN_MODEL
        logs = "\n".join(
            f"--- {name} ---\n{text}" for name in (LCURVE, TRAIN_LOG, FREEZE_LOG) if (text := log_tail(workdir / name, 12))
        )
        try:
            step, values = read_lcurve(workdir / LCURVE)
        except (OSError, ValueError) as exc:
            return TrainingResult("failed", None, message=f"no learning curve: {exc}\n{logs}")
        metrics = {name: values[column] for column, name in LCURVE_METRICS.items() if column in values}
        metrics["steps"] = float(step)
        watched = [values[name] for name in ("rmse_e_trn", "rmse_f_trn", "rmse_e_val", "rmse_f_val") if name in values]
        if not watched or not all(math.isfinite(value) for value in watched):
            message = f"training diverged: non-finite losses at step {step}\n{logs}"
            return TrainingResult("failed", None, metrics, message)
        if not model.is_file():
            return TrainingResult("failed", None, metrics, f"no frozen model {model}\n{logs}")
        return TrainingResult("success", model, metrics)

    def load(self, models: Sequence[Path], device: str | None = None) -> "DeepmdCommittee":
        return DeepmdCommittee.from_files(models, device=device, batch_atoms=self.batch_atoms)


def _start_from(init_model: Path, type_map: Sequence[str]) -> tuple[list[str], dict[str, Any] | None]:
    """``dp train`` arguments that start from an earlier model, and its model section when the
    species are the same (None for fine-tuning to other species)."""
    member = load_member(init_model, "cpu")
    if tuple(member.type_map) == tuple(type_map):
        flag = "--init-frz-model" if member.frozen else "--init-model"
        return [flag, str(init_model.resolve())], member.model_params()
    if member.frozen:
        raise InputError(
            f"the model knows species {member.type_map}, the training asks for {list(type_map)}: changing "
            "the species needs DeePMD's fine-tuning, which starts from the training checkpoint (.pt) "
            "next to the frozen model",
            file=init_model,
            field="init_model",
        )
    return ["--finetune", str(init_model.resolve()), "--use-pretrain-script"], None


# --- members and the committee ---------------------------------------------------------------------


@dataclass(frozen=True)
class DeepmdMember:
    """One loaded model: the torch module (eval mode, float64), its species and its file."""

    file: Path
    module: Any
    type_map: tuple[str, ...]
    frozen: bool

    def atom_types(self, numbers: np.ndarray) -> np.ndarray:
        """DeePMD type index of each atom (from atomic numbers); unknown species raise InputError
        naming the model file."""
        table = np.full(len(chemical_symbols), -1, dtype=np.int64)
        for index, symbol in enumerate(self.type_map):
            if symbol in atomic_numbers:
                table[atomic_numbers[symbol]] = index
        types = table[np.asarray(numbers)]
        if (types < 0).any():
            unknown = sorted({chemical_symbols[z] for z in np.asarray(numbers)[types < 0]})
            raise InputError(
                f"the model knows the species {list(self.type_map)}, not {', '.join(unknown)}", file=self.file
            )
        return types

    def model_params(self) -> dict[str, Any]:
        """The model section DeePMD built this model from (resolved: ``sel`` is a list)."""
        return json.loads(self.module.get_model_def_script())


def _import_deepmd() -> None:
    """Import DeePMD-kit's PyTorch part (registers its custom ops, which frozen models need)."""
    try:
        import deepmd.pt  # noqa: F401
    except ImportError as exc:
        raise InputError(f"DeePMD-kit (PyTorch) is not installed: {exc}; install cagoflow[deepmd]") from None


def load_member(path: Path, device: str) -> DeepmdMember:
    """Load a frozen model (.pth, TorchScript) or a training checkpoint (.pt) onto ``device``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("model file does not exist", file=path)
    if path.suffix == ".pb":
        raise InputError(
            "this is a TensorFlow DeePMD model; convert it with 'dp convert-backend model.pb model.pth'", file=path
        )
    if path.suffix not in (".pth", ".pt"):
        raise InputError("expected a DeePMD-kit PyTorch model: a frozen model (.pth) or a checkpoint (.pt)", file=path)
    _import_deepmd()
    import torch

    try:
        with warnings.catch_warnings():  # DeePMD's frozen format is TorchScript, deprecated by torch
            warnings.simplefilter("ignore", DeprecationWarning)
            if path.suffix == ".pth":
                module = torch.jit.load(str(path), map_location=device)
            else:
                module = _checkpoint_module(path, device)
        type_map = tuple(module.get_type_map())
        if "energy" not in module.model_output_type():
            raise InputError(f"not an energy model (outputs {module.model_output_type()})", file=path)
    except InputError:
        raise
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"not a DeePMD-kit PyTorch model ({type(exc).__name__}: {message})", file=path) from None
    module.eval()
    return DeepmdMember(path.resolve(), module, type_map, frozen=path.suffix == ".pth")


def _checkpoint_module(path: Path, device: str):
    """The eager model of a training checkpoint (as DeePMD's own DeepEval builds it)."""
    import torch
    from deepmd.pt.model.model import get_model
    from deepmd.pt.train.wrapper import ModelWrapper

    state = torch.load(str(path), map_location=device, weights_only=True)
    if "model" in state:
        state = state["model"]
    params = state["_extra_state"]["model_params"]
    if "model_dict" in params:
        raise InputError("multi-task checkpoints are not supported; freeze one head first", file=path)
    wrapper = ModelWrapper(get_model(params).to(device))
    wrapper.load_state_dict(state, strict=False)
    return wrapper.model["Default"]


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _periodic(atoms: Atoms, where: str) -> bool:
    if atoms.pbc.all():
        return True
    if not atoms.pbc.any():
        return False
    raise InputError(
        f"{where} is periodic along some axes only (pbc={atoms.pbc.tolist()}); "
        "DeePMD-kit needs fully periodic or non-periodic structures"
    )


class DeepmdCommittee:
    """A committee of DeePMD-kit models; batched and differentiable.

    Implements :class:`cagoflow.committee.Committee` and
    :class:`cagoflow.committee.DifferentiableCommittee`.

    Args:
        members: the loaded models (:func:`load_member`).
        device: where they live ("cpu", "cuda", "cuda:1").
        batch_atoms: atoms per model call at most (frames × atoms); bigger batches are split.
    """

    def __init__(self, members: Sequence[DeepmdMember], device: str, batch_atoms: int | None = None):
        if not members:
            raise InputError("a DeePMD committee needs at least one model")
        self.members = tuple(members)
        self.device = device
        self.batch_atoms = batch_atoms_for(device, DEFAULT_BATCH_ATOMS, batch_atoms)

    @classmethod
    def from_files(
        cls, models: Sequence[Path | str], device: str | None = None, batch_atoms: int | None = None
    ) -> "DeepmdCommittee":
        """Load the member models (frozen .pth or checkpoints .pt); device None: CUDA if available."""
        if device in (None, "auto"):
            device = default_device()
        return cls([load_member(Path(path), device) for path in models], device, batch_atoms)

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(member.file for member in self.members)

    def subset(self, members: Sequence[int]) -> "DeepmdCommittee":
        """The given members (no reloading: the modules are shared)."""
        return DeepmdCommittee([self.members[index] for index in members], self.device, self.batch_atoms)

    def predict(self, structures: Sequence[Atoms]) -> CommitteePrediction:
        """Energies, forces, virials of every member for every structure.

        Structures with the same number of atoms and periodicity are evaluated together, in
        chunks of at most ``batch_atoms`` atoms; virials are NaN for non-periodic structures.
        """
        import torch

        structures = list(structures)
        natoms = np.array([len(atoms) for atoms in structures], dtype=int)
        offsets = np.concatenate([[0], np.cumsum(natoms)]).astype(int)
        M, S = self.n_members, len(structures)
        energies = np.empty((M, S))
        forces = np.empty((M, int(offsets[-1]), 3))
        virials = np.full((M, S, 3, 3), np.nan)
        groups: dict[tuple[int, bool], list[int]] = {}
        for index, atoms in enumerate(structures):
            groups.setdefault((len(atoms), _periodic(atoms, f"structure {index}")), []).append(index)
        with torch.enable_grad():  # forces come from autograd inside the model
            for (size, periodic), indices in groups.items():
                per_call = max(1, self.batch_atoms // max(size, 1))
                # chunks of (nearly) equal size: few distinct shapes for TorchScript to specialise on
                for chunk in np.array_split(np.array(indices), -(-len(indices) // per_call)):
                    chunk = chunk.tolist()
                    atom_rows = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in chunk])
                    coord = torch.as_tensor(
                        np.stack([structures[k].positions for k in chunk]), dtype=torch.float64, device=self.device
                    )
                    box = None
                    if periodic:
                        cells = np.stack([np.asarray(structures[k].cell) for k in chunk]).reshape(len(chunk), 9)
                        box = torch.as_tensor(cells, dtype=torch.float64, device=self.device)
                    for m, member in enumerate(self.members):
                        types = np.stack([member.atom_types(structures[k].numbers) for k in chunk])
                        atype = torch.as_tensor(types, device=self.device)
                        out = member.module(coord, atype, box=box)
                        energies[m, chunk] = out["energy"].detach().reshape(len(chunk)).cpu().numpy()
                        forces[m, atom_rows] = out["force"].detach().reshape(-1, 3).cpu().numpy()
                        if periodic:
                            # DeePMD's virial is Σ_i F_i ⊗ r_i, i.e. W[k, j] = −dE/dε[j, k]: transpose.
                            virial = out["virial"].detach().reshape(len(chunk), 3, 3).transpose(1, 2)
                            virials[m, chunk] = virial.cpu().numpy()
        return CommitteePrediction(energies=energies, forces=forces, natoms=natoms, virials=virials)

    def torch_energy(self, structures: Sequence[Atoms]):
        """``fn(positions (M, A, 3), cells (M, S, 3, 3)) -> energies (M, S)``, eV, differentiable (torch).

        Member m is evaluated at ``positions[m]``, ``cells[m]`` (Å), the S structures'
        atoms concatenated in order. Structures of equal size and periodicity go through each
        member together, in chunks of at most ``batch_atoms`` atoms (as :meth:`predict`). The
        model builds its neighbour list from the coordinates on every call, so any geometry is
        valid, not only ``structures``. Results come back on the device and dtype of ``positions``.
        """
        import torch

        structures = list(structures)
        offsets = np.concatenate([[0], np.cumsum([len(atoms) for atoms in structures])]).astype(int)
        groups: dict[tuple[int, bool], list[int]] = {}
        for index, atoms in enumerate(structures):
            groups.setdefault((len(atoms), _periodic(atoms, f"structure {index}")), []).append(index)
        chunks = []
        for (size, periodic), indices in groups.items():
            per_call = max(1, self.batch_atoms // max(size, 1))
            for chunk in np.array_split(np.array(indices), -(-len(indices) // per_call)):
                types = [
                    torch.as_tensor(np.stack([member.atom_types(structures[k].numbers) for k in chunk]), device=self.device)
                    for member in self.members
                ]
                chunks.append((chunk.tolist(), size, periodic, types))

        def energy(positions, cells):
            if positions.shape[0] != self.n_members:
                raise ValueError(f"expected positions for {self.n_members} members, got {positions.shape[0]}")
            values: list[list] = [[None] * len(structures) for _ in self.members]
            for chunk, size, periodic, types in chunks:
                for m, member in enumerate(self.members):
                    coord = torch.stack([positions[m, offsets[k] : offsets[k + 1]] for k in chunk])
                    coord = coord.to(device=self.device, dtype=torch.float64)
                    box = cells[m, chunk].reshape(len(chunk), 9).to(device=self.device, dtype=torch.float64) if periodic else None
                    out = member.module(coord, types[m], box=box)["energy"].reshape(len(chunk))
                    for j, k in enumerate(chunk):
                        values[m][k] = out[j]
            stacked = torch.stack([torch.stack(row) for row in values])
            return stacked.to(device=positions.device, dtype=positions.dtype)

        return energy
