"""Parsl apps of the campaign stages (``cagoflow.apps``).

The stage bodies are plain functions in :mod:`cagoflow.apps.stages`; :func:`make_apps` binds
each to the executor that the site-config maps its stage to (psiflow's idiom
``f = python_app(_f, executors=[...])``). External programs (trainers) run in bash apps, each
in its own task directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cagoflow.config import SiteConfig


@dataclass(frozen=True)
class CampaignApps:
    """One Parsl app per stage task."""

    initial: Any
    split: Any
    prepare_training: Any
    run_training: Any
    collect_training: Any
    calibrate: Any
    md: Any
    sample: Any
    cago: Any
    prefilter: Any
    reference: Any
    prepare_reference: Any
    run_reference: Any
    collect_reference: Any
    postfilter: Any
    merge: Any


def make_apps(site: SiteConfig) -> CampaignApps:
    """Apps bound to the executors that ``site`` maps their stages to.

    A stage mapped to an executor of kind ``mpi`` runs only its program there (the bash app,
    with a ``parsl_resource_specification``); its Python parts go to
    :meth:`~cagoflow.config.SiteConfig.python_executor_for` that stage.
    """
    from parsl import bash_app, python_app

    from cagoflow.apps import stages

    def python(function, stage: str):
        return python_app(function, executors=[site.python_executor_for(stage)])

    def bash(stage: str):
        return bash_app(stages._run_command, executors=[site.executor_for(stage)])

    return CampaignApps(
        initial=python(stages._initial, "sample"),
        split=python(stages._split, "merge"),
        prepare_training=python(stages._prepare_training, "train"),
        run_training=bash("train"),
        collect_training=python(stages._collect_training, "train"),
        calibrate=python(stages._calibrate, "calibrate"),
        md=python(stages._md, "md"),
        sample=python(stages._sample, "sample"),
        cago=python(stages._cago, "cago"),
        prefilter=python(stages._prefilter, "prefilter"),
        reference=python(stages._reference, "reference"),
        prepare_reference=python(stages._prepare_reference, "reference"),
        run_reference=bash("reference"),
        collect_reference=python(stages._collect_reference, "reference"),
        postfilter=python(stages._postfilter, "postfilter"),
        merge=python(stages._merge, "merge"),
    )
