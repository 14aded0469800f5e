"""NequIP and Allegro: train members with ``nequip-train``, load them as one batched committee.

Allegro is a model family of the NequIP framework: both train with the same Hydra config,
data pipeline and trainer, and differ only in the ``model`` block. :class:`NequipBackend`
serves both; ``NequipBackend("allegro")`` (or :class:`AllegroBackend`) writes the Allegro block.

Training (one member, in its own work directory)
------------------------------------------------
:meth:`NequipBackend.write_training_input` writes ``config.yaml`` (built here from a preset,
the user's hyperparameters deep-merged over it) and names the commands::

    nequip-train -cp WORKDIR -cn config.yaml seed=S hydra.run.dir=WORKDIR [++ckpt_path=WORKDIR/last.ckpt]
    nequip-compile WORKDIR/model.ckpt WORKDIR/model.nequip.pt2 --mode aotinductor --device cpu --target batch

Validation runs after every epoch (or once, at the end, for runs shorter than one epoch).
Outputs in the work directory: ``model.ckpt`` (the checkpoint with the best validation loss),
``last.ckpt`` (the state at the latest validation: a later call continues from it, with
``++ckpt_path``), ``logs/version_*/metrics.csv`` (one folder per run; train and validation
RMSEs) and, when compiled, ``model.nequip.pt2`` — an AOTInductor file for batched inference on
the compile device (``--target batch``: many structures per call). The ``.nequip.pt2`` file
cannot be differentiated, so the committee keeps the checkpoint ``model.ckpt`` next to it for
the eager model of the exact CAGO gradient.

Fine-tuning (``settings.init_model``) builds the model with NequIP's ``ModelFromCheckpoint``:
the new checkpoint refers to the one it started from, which must stay where it is.

Model files
-----------
A member is either ``X.nequip.pt2`` (its eager twin ``X.ckpt`` in the same folder) or a
checkpoint ``X.ckpt``. :meth:`NequipBackend.load` uses the compiled file for :meth:`predict`
when it was compiled for the requested device and the eager checkpoint model otherwise.

Units and conventions are those of :mod:`cagoflow.committee`: eV, eV/Å, virials ``−V·stress``
in eV (NequIP's stress has ASE's sign: ``σ = (1/V) ∂E/∂ε``). Loading a model calls NequIP's
``set_global_state()``, which makes float64 torch's default dtype in this process (the
random-number states it reseeds are restored). The first ``.nequip.pt2`` a process loads costs
10–30 s more on a CPU: torch probes the CPU's vector instruction sets by compiling test programs.
"""

from __future__ import annotations

import copy
import csv
import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from ase import Atoms
from ase.io import iread

from cagoflow.backends import TrainingResult, TrainingSettings, batch_atoms_for, deep_merge
from cagoflow.committee import CommitteePrediction
from cagoflow.engines.process import find_program
from cagoflow.errors import InputError
from cagoflow.io import log_tail

ModelFamily = Literal["nequip", "allegro"]
CompileDevice = Literal["cpu", "cuda"]

#: File names inside a member's work directory.
CONFIG_NAME = "config.yaml"
CHECKPOINT_NAME = "model.ckpt"
COMPILED_NAME = "model.nequip.pt2"
LAST_CHECKPOINT_NAME = "last.ckpt"
LOG_FOLDER = "logs"

#: Atoms per model call at most, per device kind. On CPU, batches of a few hundred atoms are
#: fastest per structure (measured at 64 H2O: Allegro 1.9× one-at-a-time at 400–800 atoms per
#: call, 1.2× at 12,000); GPUs take large batches.
DEFAULT_BATCH_ATOMS = {"cpu": 768, "cuda": 10_000}

_COMPILED_SUFFIX = ".nequip.pt2"
_CHECKPOINT_SUFFIX = ".ckpt"

# --- presets --------------------------------------------------------------------------------

#: Model blocks per family and preset. ``tiny``: seconds per hundred steps on a CPU, for tests
#: and demos. ``paper``: Allegro as in Cezar et al. 2025 (l_max 2, 2 layers, 16 tensor
#: features, 3×128 two-body MLP, 3×128 latent MLPs, 6 Å, 8 Bessel functions); NequIP at a
#: standard size of comparable cost (l_max 2, 4 layers, 64 features, 6 Å).
_MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "nequip": {
        "tiny": {
            "_target_": "nequip.model.NequIPGNNModel",
            "model_dtype": "float64",
            "l_max": 1,
            "parity": True,
            "num_layers": 2,
            "num_features": 8,
            "radial_mlp_depth": 1,
            "radial_mlp_width": 16,
            "num_bessels": 8,
        },
        "paper": {
            "_target_": "nequip.model.NequIPGNNModel",
            "model_dtype": "float32",
            "l_max": 2,
            "parity": True,
            "num_layers": 4,
            "num_features": 64,
            "radial_mlp_depth": 2,
            "radial_mlp_width": 64,
            "num_bessels": 8,
        },
    },
    "allegro": {
        "tiny": {
            "_target_": "allegro.model.AllegroModel",
            "model_dtype": "float64",
            "l_max": 1,
            "parity": True,
            "num_layers": 1,
            "num_scalar_features": 16,
            "num_tensor_features": 4,
            "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
            "scalar_embed_mlp_hidden_layers_depth": 1,
            "scalar_embed_mlp_hidden_layers_width": 16,
            "allegro_mlp_hidden_layers_depth": 1,
            "allegro_mlp_hidden_layers_width": 16,
            "readout_mlp_hidden_layers_depth": 1,
            "readout_mlp_hidden_layers_width": 8,
        },
        "paper": {
            "_target_": "allegro.model.AllegroModel",
            "model_dtype": "float32",
            "l_max": 2,
            "parity": True,
            "num_layers": 2,
            "num_scalar_features": 128,
            "num_tensor_features": 16,
            "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
            "scalar_embed_mlp_hidden_layers_depth": 3,
            "scalar_embed_mlp_hidden_layers_width": 128,
            "allegro_mlp_hidden_layers_depth": 3,
            "allegro_mlp_hidden_layers_width": 128,
            "readout_mlp_hidden_layers_depth": 1,
            "readout_mlp_hidden_layers_width": 32,
        },
    },
}

#: Settings shared by both families, per preset: cutoff (Å), batch sizes, learning rate,
#: loss weights (per-atom energy, forces, stress as in the paper: 5, 1, 100), EMA.
_TRAINING: dict[str, dict[str, Any]] = {
    "tiny": {
        "cutoff": 4.5,
        "batch_size": 4,
        "val_batch_size": 8,
        "lr": {"nequip": 0.01, "allegro": 0.01},
        "ema": False,  # an EMA of a few hundred steps would mostly hold the initial weights
    },
    "paper": {
        "cutoff": 6.0,
        "batch_size": 4,
        "val_batch_size": 16,
        "lr": {"nequip": 0.005, "allegro": 0.001},  # Allegro's authors advise ~1e-3
        "ema": True,
    },
}
_LOSS_WEIGHTS = {"total_energy": 5.0, "forces": 1.0, "stress": 100.0}


def _scan_data(train_file: Path, validation_file: Path, type_map: Sequence[str]) -> tuple[int, bool]:
    """Number of training frames, and whether every frame of both files carries a stress.

    Unreadable files, frames without energy or forces and species outside the type map are
    :class:`InputError` s naming the file.
    """
    counts, stress = [], True
    for path in (Path(train_file), Path(validation_file)):
        count = 0
        try:
            for atoms in iread(str(path)):
                results = dict(atoms.info)
                if atoms.calc is not None:
                    results.update(atoms.calc.results)
                if "energy" not in results or ("forces" not in results and "forces" not in atoms.arrays):
                    raise InputError(f"frame {count} has no reference energy and forces", file=path)
                unknown = sorted(set(atoms.get_chemical_symbols()) - set(type_map))
                if unknown:
                    species = ", ".join(unknown)
                    raise InputError(f"frame {count}: species {species} are not in the type map {list(type_map)}", file=path)
                stress = stress and "stress" in results
                count += 1
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - ASE raises many kinds for a bad file
            raise InputError(f"cannot read the training data ({type(exc).__name__}: {exc})", file=path) from None
        if count == 0:
            raise InputError("no frames in the training data", file=path)
        counts.append(count)
    return counts[0], stress


def training_config(
    family: ModelFamily, train_file: Path, validation_file: Path, workdir: Path, settings: TrainingSettings
) -> dict[str, Any]:
    """The ``nequip-train`` Hydra config of one member (a plain dict, before YAML)."""
    if settings.preset not in _TRAINING:
        raise InputError(f"unknown preset {settings.preset!r}; expected one of: {', '.join(_TRAINING)}", field="preset")
    if not settings.type_map:
        raise InputError("the type map (species the model knows) is empty", field="type_map")
    preset = _TRAINING[settings.preset]
    workdir = workdir.resolve()
    n_train, stress = _scan_data(train_file, validation_file, settings.type_map)
    fields = ["total_energy", "forces"] + (["stress"] if stress else [])

    transforms = [
        {
            "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
            "model_type_names": "${model_type_names}",
            "chemical_species_to_atom_type_map": "${list_to_identity_dict:${model_type_names}}",
        },
        {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": "${cutoff_radius}"},
    ]

    def dataset(path: Path) -> dict[str, Any]:
        return {
            "_target_": "nequip.data.dataset.ASEDataset",
            "file_path": str(path.resolve()),
            "transforms": copy.deepcopy(transforms),  # no YAML anchors
        }

    metric_coeffs = {"per_atom_energy_rmse": 1.0, "forces_rmse": 1.0, "total_energy_rmse": None}
    if stress:
        metric_coeffs["stress_rmse"] = 1.0
    loss = {
        "_target_": "nequip.train.EnergyForceStressLoss" if stress else "nequip.train.EnergyForceLoss",
        "per_atom_energy": True,
        "coeffs": {name: _LOSS_WEIGHTS[name] for name in fields},
    }
    metrics = {
        "_target_": "nequip.train.EnergyForceStressMetrics" if stress else "nequip.train.EnergyForceMetrics",
        "coeffs": metric_coeffs,
    }
    model = {
        **_MODELS[family][settings.preset],
        "seed": "${seed}",
        "type_names": "${model_type_names}",
        "r_max": "${cutoff_radius}",
        "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
        "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
        "per_type_energy_scales": "${training_data_stats:forces_rms}",
        "per_type_energy_scales_trainable": False,
        "per_type_energy_shifts_trainable": False,
    }
    if settings.init_model is not None:
        start = _fine_tuning_checkpoint(settings.init_model)
        model = {"_target_": "nequip.model.ModelFromCheckpoint", "checkpoint_path": str(start)}

    module: dict[str, Any] = {
        "_target_": "nequip.train.EMALightningModule" if preset["ema"] else "nequip.train.NequIPLightningModule",
        "loss": loss,
        "val_metrics": metrics,
        "train_metrics": "${training_module.val_metrics}",
        "optimizer": {"_target_": "torch.optim.Adam", "lr": preset["lr"][family]},
        "model": model,
    }
    config = {
        "run": ["train"],
        "seed": settings.seed,
        "cutoff_radius": preset["cutoff"],
        "model_type_names": list(settings.type_map),
        "data": {
            "_target_": "nequip.data.datamodule.NequIPDataModule",
            "seed": "${seed}",
            "train_dataset": dataset(train_file),
            "val_dataset": dataset(validation_file),
            "train_dataloader": {
                "_target_": "torch.utils.data.DataLoader",
                "batch_size": preset["batch_size"],
                "shuffle": True,
            },
            "val_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": preset["val_batch_size"]},
            "stats_manager": {
                "_target_": "nequip.data.CommonDataStatisticsManager",
                "type_names": "${model_type_names}",
            },
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "max_steps": settings.steps,
            "max_epochs": -1,
            "check_val_every_n_epoch": 1,  # EMA asserts otherwise
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(workdir), "name": LOG_FOLDER},
            "callbacks": [
                {  # the best model by validation loss
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "monitor": "val0_epoch/weighted_sum",
                    "dirpath": str(workdir),
                    "filename": Path(CHECKPOINT_NAME).stem,
                    "save_top_k": 1,
                    "save_last": False,
                    "enable_version_counter": False,
                },
                {  # the latest state after every validation, for restarts (unmonitored: always saved)
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "dirpath": str(workdir),
                    "filename": Path(LAST_CHECKPOINT_NAME).stem,
                    "save_top_k": 1,
                    "save_last": False,
                    "enable_version_counter": False,
                },
                {
                    # stops a diverged run at once (NaN); patience never runs out otherwise
                    "_target_": "lightning.pytorch.callbacks.EarlyStopping",
                    "monitor": "val0_epoch/weighted_sum",
                    "patience": 1_000_000_000,
                    "check_finite": True,
                    "check_on_train_epoch_end": False,
                    "strict": False,
                },
            ],
        },
        "training_module": module,
        "global_options": {"allow_tf32": False},
    }
    config = deep_merge(config, settings.hyperparameters)
    # validation (and with it the best checkpoint) comes at the end of each epoch; a run shorter
    # than one epoch validates once, at its last step
    batch_size = int(config["data"]["train_dataloader"].get("batch_size", 1))
    steps_per_epoch = math.ceil(n_train / batch_size)
    if settings.steps < steps_per_epoch and "val_check_interval" not in config["trainer"]:
        config["trainer"]["val_check_interval"] = settings.steps
    return config


def _fine_tuning_checkpoint(path: Path) -> Path:
    """The checkpoint to fine-tune from: ``X.ckpt`` itself, or the eager twin of ``X.nequip.pt2``."""
    checkpoint = _checkpoint_of(Path(path))
    if checkpoint is None or not checkpoint.exists():
        raise InputError(
            f"fine-tuning needs the model's checkpoint (.ckpt); none found for {path}", file=path, field="init_model"
        )
    return checkpoint.resolve()


def _checkpoint_of(path: Path) -> Path | None:
    """``X.ckpt`` for ``X.ckpt`` or ``X.nequip.pt2`` (None for other names)."""
    name = path.name
    if name.endswith(_COMPILED_SUFFIX):
        return path.with_name(name[: -len(_COMPILED_SUFFIX)] + _CHECKPOINT_SUFFIX)
    if name.endswith(_CHECKPOINT_SUFFIX):
        return path
    return None


# --- the backend ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NequipBackend:
    """The NequIP framework as a :class:`cagoflow.backends.Backend`, for NequIP or Allegro models.

    Attributes:
        name: the model family, "nequip" or "allegro" (also the backend's name).
        compile_device: device the AOTInductor file is compiled for ("cpu", "cuda"); None skips
            compilation (the committee then runs the eager checkpoint model, slower on CPU).
        train_command, compile_command: the programs (a site may put a wrapper here).
    """

    name: ModelFamily = "nequip"
    compile_device: CompileDevice | None = "cpu"
    train_command: tuple[str, ...] = ("nequip-train",)
    compile_command: tuple[str, ...] = ("nequip-compile",)

    def __post_init__(self) -> None:
        if self.name not in _MODELS:
            raise InputError(f"unknown NequIP model family {self.name!r}; expected one of: {', '.join(_MODELS)}")

    def write_training_input(
        self, train_file: Path, validation_file: Path, workdir: Path, settings: TrainingSettings
    ) -> list[list[str]]:
        """Write ``config.yaml`` into ``workdir``; return the train (and compile) commands.

        Training continues from ``workdir/last.ckpt`` when an earlier run left one.
        """
        import yaml

        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        config = training_config(self.name, Path(train_file), Path(validation_file), workdir, settings)
        (workdir / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
        seed = int(config.get("seed", settings.seed))
        train = [find_program(self.train_command[0]), *self.train_command[1:], "-cp", str(workdir), "-cn", CONFIG_NAME]
        train += [f"seed={seed}", f"hydra.run.dir={workdir}"]
        last = workdir / LAST_CHECKPOINT_NAME
        if last.exists():
            train.append(f"++ckpt_path={last}")
        commands = [train]
        (workdir / COMPILED_NAME).unlink(missing_ok=True)  # a stale file must not pass for this run's
        if self.compile_device is not None:
            commands.append(
                [
                    find_program(self.compile_command[0]), *self.compile_command[1:],
                    str(workdir / CHECKPOINT_NAME),
                    str(workdir / COMPILED_NAME),
                    "--mode",
                    "aotinductor",
                    "--device",
                    self.compile_device,
                    "--target",
                    "batch",
                ]
            )
        return commands

    def resume_step(self, workdir: Path) -> int | None:
        """The optimiser step of ``last.ckpt``, the state an interrupted run left."""
        last = Path(workdir) / LAST_CHECKPOINT_NAME
        if not last.exists():
            return None
        steps = _steps_done(last)
        return 0 if steps is None else int(steps)

    def model_files(self, model: Path) -> list[Path]:
        """The model file and, for a compiled one, its eager twin ``X.ckpt`` (forces' gradients)."""
        model = Path(model)
        checkpoint = _checkpoint_of(model)
        return [model] + ([checkpoint] if checkpoint not in (None, model) and checkpoint.exists() else [])

    def read_training_result(self, workdir: Path) -> TrainingResult:
        """The member's model file and final RMSEs; "failed" on a missing model or NaN metrics."""
        return read_training_result(Path(workdir), compiled=self.compile_device is not None)

    def load(self, models: Sequence[Path], device: str | None = None) -> "NequipCommittee":
        """A committee of the given member files (``.nequip.pt2`` or ``.ckpt``).

        device: "cpu" or "cuda"; None: CUDA when available.
        """
        return NequipCommittee.from_files(models, family=self.name, device=device)


@dataclass(frozen=True)
class AllegroBackend(NequipBackend):
    """:class:`NequipBackend` for Allegro models."""

    name: ModelFamily = "allegro"


# --- training results -----------------------------------------------------------------------


def _log_tail(workdir: Path, lines: int = 20) -> str:
    """The last lines of the newest log file in ``workdir``."""
    logs = sorted(workdir.glob("*.log"), key=lambda p: p.stat().st_mtime)
    return log_tail(logs[-1], lines) if logs else ""


def _final_metrics(workdir: Path) -> dict[str, float]:
    """Last logged train and validation RMSEs (eV/atom, eV/Å; stress eV/Å³) and training loss,
    from the CSV logs of all runs (a restart's log continues the earlier ones)."""
    runs = sorted(
        (workdir / LOG_FOLDER).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1])
    )
    names = {
        "train_metric_epoch/per_atom_energy_rmse": "train_energy_per_atom",
        "train_metric_epoch/forces_rmse": "train_forces",
        "train_metric_epoch/stress_rmse": "train_stress",
        "val0_epoch/per_atom_energy_rmse": "validation_energy_per_atom",
        "val0_epoch/forces_rmse": "validation_forces",
        "val0_epoch/stress_rmse": "validation_stress",
        "train_loss_step/weighted_sum": "train_loss",
    }
    metrics: dict[str, float] = {}
    for path in runs:  # later runs (restarts) overwrite earlier values
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                for column, name in names.items():
                    value = row.get(column, "")
                    if value not in ("", None):
                        metrics[name] = float(value)
    return metrics


def _steps_done(checkpoint: Path) -> float | None:
    """Optimiser steps recorded in a Lightning checkpoint (None when it cannot be read).

    The CSV logs cannot tell: Lightning's logging step is off by one after a restart.
    """
    try:
        return float(_torch().load(checkpoint, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # noqa: BLE001 - a missing or truncated file: no count
        return None


def read_training_result(workdir: Path, compiled: bool = True) -> TrainingResult:
    """Read a member's outputs (see the module docstring); failures become a failed result.

    Metrics: ``train_energy_per_atom``, ``validation_energy_per_atom`` (eV/atom),
    ``train_forces``, ``validation_forces`` (eV/Å), ``train_stress``, ``validation_stress``
    (eV/Å³, when trained on stress), ``train_loss`` and ``steps`` (optimiser steps done).
    """
    workdir = Path(workdir)
    checkpoint = workdir / CHECKPOINT_NAME
    compiled_file = workdir / COMPILED_NAME
    metrics = _final_metrics(workdir)
    steps = _steps_done(workdir / LAST_CHECKPOINT_NAME)
    if steps is not None:
        metrics["steps"] = steps
    if any(not math.isfinite(value) for value in metrics.values()):
        bad = ", ".join(name for name, value in metrics.items() if not math.isfinite(value))
        message = f"training diverged: non-finite {bad}\n{_log_tail(workdir)}"
        return TrainingResult("failed", None, metrics, message)
    if not checkpoint.exists():
        return TrainingResult("failed", None, metrics, f"no checkpoint {checkpoint} was written\n{_log_tail(workdir)}")
    if compiled and not compiled_file.exists():
        return TrainingResult("failed", None, metrics, f"no compiled model {compiled_file}\n{_log_tail(workdir)}")
    return TrainingResult("success", compiled_file if compiled else checkpoint, metrics)


# --- the committee --------------------------------------------------------------------------


def _torch():
    import torch

    return torch


_global_state_ready = False


def _ensure_global_state() -> None:
    """NequIP's ``set_global_state()`` once, restoring the random states it reseeds."""
    global _global_state_ready
    if _global_state_ready:
        return
    torch = _torch()
    from nequip.utils.global_state import set_global_state

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.set_fusion_strategy, inside nequip
        set_global_state()
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
    _global_state_ready = True


def _family_of_checkpoint(checkpoint: dict[str, Any]) -> str | None:
    """"allegro" or "nequip" from a checkpoint's state-dict names (None: not a NequIP-framework model)."""
    keys = list(checkpoint.get("state_dict", {}).keys())
    if any(".allegro." in key for key in keys):
        return "allegro"
    if any(key.startswith("model.") for key in keys):
        return "nequip"
    return None


@dataclass
class _Member:
    """One member: its files, what it knows, and its models (loaded when first needed)."""

    path: Path
    checkpoint: Path | None
    type_names: tuple[str, ...]
    r_max: float
    per_edge_type_cutoff: Any
    device: str
    compiled: Any = None
    eager: Any = field(default=None, repr=False)

    def eager_model(self):
        if self.eager is None:
            if self.checkpoint is None or not self.checkpoint.exists():
                raise InputError(
                    f"the eager (differentiable) model needs the checkpoint {self.checkpoint}, which is missing",
                    file=self.path,
                )
            from nequip.model.saved_models.load_utils import load_saved_model

            _ensure_global_state()
            model = load_saved_model(str(self.checkpoint))
            self.eager = model.to(self.device)
        return self.eager

    @property
    def graph_key(self) -> tuple:
        return (self.type_names, self.r_max, repr(self.per_edge_type_cutoff))


def _inspect_checkpoint(path: Path, family: str) -> tuple[tuple[str, ...], float, Any]:
    """Type names, cutoff and per-edge-type cutoffs of a checkpoint; InputError if it is not one of ``family``."""
    torch = _torch()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        model_config = checkpoint["hyper_parameters"]["info_dict"]["training_module"]["model"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise InputError(f"not a NequIP-framework checkpoint ({type(exc).__name__}: {exc})", file=path) from None
    found = _family_of_checkpoint(checkpoint)
    if found is None:
        raise InputError("not a NequIP-framework checkpoint (no model weights in it)", file=path)
    if found != family:
        raise InputError(f"this is a {found} model, but the committee's backend is {family}", file=path)
    if "type_names" in model_config and "r_max" in model_config:
        return tuple(model_config["type_names"]), float(model_config["r_max"]), model_config.get("per_edge_type_cutoff")
    # a fine-tuned model: ask the built model
    _ensure_global_state()
    from nequip.model.saved_models.load_utils import load_saved_model

    metadata = load_saved_model(str(path)).metadata
    type_names = tuple(metadata["type_names"].split(" "))
    cutoffs = metadata.get("per_edge_type_cutoff")
    if cutoffs is not None:
        from nequip.nn.embedding.utils import cutoff_str_to_fulldict

        cutoffs = cutoff_str_to_fulldict(cutoffs, list(type_names))
    return type_names, float(metadata["r_max"]), cutoffs


def _open_member(path: Path, family: str, device: str) -> _Member:
    """Check one model file and load its inference model (compiled where it fits ``device``)."""
    path = Path(path)
    if not path.exists():
        raise InputError("model file does not exist", file=path)
    checkpoint = _checkpoint_of(path)
    if checkpoint is None:
        raise InputError(
            f"not a {family} model file: expected a compiled '{_COMPILED_SUFFIX}' file or a checkpoint "
            f"'{_CHECKPOINT_SUFFIX}' (a file of another backend?)",
            file=path,
        )
    if path.name.endswith(_CHECKPOINT_SUFFIX):
        type_names, r_max, cutoffs = _inspect_checkpoint(path, family)
        return _Member(path, path, type_names, r_max, cutoffs, device)

    from nequip.model.inference_models.compiled import load_compiled_model
    from nequip.scripts._compile_utils import BATCH_TARGET

    if checkpoint.exists():
        _inspect_checkpoint(checkpoint, family)  # the family check
    _ensure_global_state()
    try:
        model, metadata = load_compiled_model(str(path), device, BATCH_TARGET["input"], BATCH_TARGET["output"])
    except RuntimeError as exc:
        if "was compiled for" in str(exc) and checkpoint.exists():
            # compiled for another device: the eager model from the checkpoint does the work
            type_names, r_max, cutoffs = _inspect_checkpoint(checkpoint, family)
            return _Member(path, checkpoint, type_names, r_max, cutoffs, device)
        raise InputError(f"cannot load this compiled NequIP model: {exc}", file=path) from None
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"not a compiled NequIP model for batches ({type(exc).__name__}: {exc})", file=path) from None
    return _Member(
        path,
        checkpoint if checkpoint.exists() else None,
        tuple(metadata["type_names"]),
        float(metadata["r_max"]),
        metadata.get("per_edge_type_cutoff"),
        device,
        compiled=model,
    )


class NequipCommittee:
    """NequIP/Allegro members evaluated on batches of structures (implements
    :class:`cagoflow.committee.DifferentiableCommittee`).

    :meth:`predict` builds each structure's graph once (per cutoff and type set), batches all
    structures into one graph and runs every member on it: the AOTInductor file where it fits
    the device, the eager checkpoint model otherwise. :meth:`torch_energy` uses the eager
    models in ``.train()`` mode (double backpropagation), on the graph built at the given atoms.
    """

    def __init__(self, members: Sequence[_Member], family: str, device: str, batch_atoms: int | None = None):
        """``batch_atoms``: atoms per model call at most (None: :data:`DEFAULT_BATCH_ATOMS` of the device)."""
        self._members = list(members)
        self.family = family
        self.device = device
        self.batch_atoms = batch_atoms_for(device, DEFAULT_BATCH_ATOMS, batch_atoms)
        if not self._members:
            raise ValueError("a committee needs at least one member")

    @classmethod
    def from_files(
        cls,
        models: Sequence[Path],
        family: str = "nequip",
        device: str | None = None,
        batch_atoms: int | None = None,
    ) -> "NequipCommittee":
        """Open the member files (see :func:`_open_member`); device None: CUDA when available."""
        torch = _torch()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        members = [_open_member(Path(path), family, device) for path in models]
        return cls(members, family, device, batch_atoms)

    @property
    def n_members(self) -> int:
        return len(self._members)

    @property
    def model_files(self) -> tuple[Path, ...]:
        return tuple(member.path for member in self._members)

    def subset(self, members: Sequence[int]) -> "NequipCommittee":
        return NequipCommittee([self._members[int(k)] for k in members], self.family, self.device, self.batch_atoms)

    # --- graphs ---------------------------------------------------------------------------

    def _graph(self, atoms: Atoms, member: _Member) -> dict:
        """The AtomicDataDict of one structure with its neighbour list (float64, on the device)."""
        torch = _torch()
        from nequip.data import AtomicDataDict
        from nequip.data.ase import from_ase
        from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

        unknown = sorted(set(atoms.get_chemical_symbols()) - set(member.type_names))
        if unknown:
            raise InputError(
                f"the {self.family} model knows the species {', '.join(member.type_names)} only; "
                f"the structure has {', '.join(unknown)}",
                file=member.path,
            )
        _ensure_global_state()
        bare = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        data = from_ase(bare)
        data = ChemicalSpeciesToAtomTypeMapper(list(member.type_names))(data)
        data = NeighborListTransform(
            r_max=member.r_max, per_edge_type_cutoff=member.per_edge_type_cutoff, type_names=list(member.type_names)
        )(data)
        data.pop(AtomicDataDict.PBC_KEY, None)
        data.pop(AtomicDataDict.ATOMIC_NUMBERS_KEY, None)
        if AtomicDataDict.CELL_KEY not in data:  # inputs of the compiled model: a cell is always given
            data[AtomicDataDict.CELL_KEY] = torch.zeros((1, 3, 3), dtype=torch.float64)
            data[AtomicDataDict.EDGE_CELL_SHIFT_KEY] = torch.zeros(
                (AtomicDataDict.num_edges(data), 3), dtype=torch.float64
            )
        return AtomicDataDict.to_(data, torch.device(self.device))

    # --- prediction -----------------------------------------------------------------------

    def predict(self, structures: Sequence[Atoms]) -> CommitteePrediction:
        """Energies (M, S) eV, forces (M, A, 3) eV/Å and virials (M, S, 3, 3) eV of all members.

        Structures go to the models in batches of at most :attr:`batch_atoms` atoms (a larger
        structure alone); virials are NaN for structures that are not periodic along all axes.
        """
        structures = list(structures)
        if not structures:
            raise ValueError("no structures to predict")
        chunks: list[list[Atoms]] = [[]]
        atoms_in_chunk = 0
        for atoms in structures:
            if chunks[-1] and atoms_in_chunk + len(atoms) > self.batch_atoms:
                chunks.append([])
                atoms_in_chunk = 0
            chunks[-1].append(atoms)
            atoms_in_chunk += len(atoms)
        parts = [self._predict_batch(chunk) for chunk in chunks]
        return parts[0] if len(parts) == 1 else CommitteePrediction.concatenate(parts)

    def _predict_batch(self, structures: list[Atoms]) -> CommitteePrediction:
        """:meth:`predict` for one batch: one model call per member."""
        torch = _torch()
        from nequip.data import AtomicDataDict

        natoms = np.array([len(atoms) for atoms in structures], dtype=int)
        M, S = self.n_members, len(structures)
        energies = np.zeros((M, S))
        forces = np.zeros((M, int(natoms.sum()), 3))
        virials = np.zeros((M, S, 3, 3))
        volumes = np.array([atoms.get_volume() if atoms.pbc.all() else np.nan for atoms in structures])
        graphs: dict[tuple, list[dict]] = {}
        batches: dict[tuple, dict] = {}
        for m, member in enumerate(self._members):
            key = member.graph_key
            if key not in graphs:
                graphs[key] = [self._graph(atoms, member) for atoms in structures]
            # the compiled batch model takes two frames at least: a lone structure goes in twice
            padded = member.compiled is not None and S == 1
            if (key, padded) not in batches:
                batches[(key, padded)] = AtomicDataDict.batched_from_list(graphs[key] * (2 if padded else 1))
            batch = dict(batches[(key, padded)])
            if member.compiled is not None:
                with torch.no_grad():
                    out = member.compiled(batch)
                stress = out[AtomicDataDict.STRESS_KEY].detach().double().cpu().numpy()[:S]
                virial = -stress * volumes[:, None, None]
            else:
                model = member.eager_model()
                model.eval()
                with torch.enable_grad():  # forces and virials by autograd, even under no_grad
                    out = model(batch)
                virial = out[AtomicDataDict.VIRIAL_KEY].detach().double().cpu().numpy()[:S]
            energies[m] = out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().double().cpu().numpy().reshape(-1)[:S]
            forces[m] = out[AtomicDataDict.FORCE_KEY].detach().double().cpu().numpy()[: forces.shape[1]]
            virials[m] = virial
        periodic = np.array([atoms.pbc.all() for atoms in structures])
        virials[:, ~periodic] = np.nan
        return CommitteePrediction(energies=energies, forces=forces, natoms=natoms, virials=virials)

    # --- exact gradients ------------------------------------------------------------------

    def torch_energy(self, structures: Sequence[Atoms]):
        """``fn(positions (M, A, 3), cells (M, S, 3, 3)) -> energies (M, S)`` (torch, float64, eV).

        Eager models in ``.train()`` mode, one batched graph of all structures per member (the
        neighbour lists built at ``structures``, valid at and near them); differentiable twice,
        for the exact CAGO gradient.
        """
        torch = _torch()
        from nequip.data import AtomicDataDict

        structures = list(structures)
        batches = {}
        energy_modules = []
        for member in self._members:
            if member.graph_key not in batches:
                graphs = [self._graph(atoms, member) for atoms in structures]
                batches[member.graph_key] = AtomicDataDict.batched_from_list(graphs)
            energy_modules.append(_energy_module(member.eager_model()))
        members = list(self._members)
        device = torch.device(self.device)

        def energy(positions, cells):
            results = []
            for m, (member, module) in enumerate(zip(members, energy_modules)):
                data = dict(batches[member.graph_key])
                data[AtomicDataDict.POSITIONS_KEY] = positions[m].to(device)
                data[AtomicDataDict.CELL_KEY] = cells[m].reshape(-1, 3, 3).to(device)
                module.train()
                out = module(data)
                results.append(out[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1).to(positions.device, torch.float64))
            return torch.stack(results)

        return energy


def _energy_module(model):
    """The energy-only part of a NequIP model: inside ``ForceStressOutput``, below ``GraphModel``."""
    from nequip.nn import ForceStressOutput

    for module in model.modules():
        if isinstance(module, ForceStressOutput):
            return module.func
    raise InputError("this NequIP model has no ForceStressOutput (forces by autograd): it cannot give CAGO gradients")
