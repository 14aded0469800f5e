"""Parsl apps of the campaign stages (``cagoflow.apps``).

The stage bodies are plain functions in :mod:`cagoflow.apps.stages`; :func:`make_apps` binds
each to the executor that the site-config maps its stage to (psiflow's idiom
``f = python_app(_f, executors=[...])``). External programs (trainers) run in bash apps, each
in its own task directory. Every task gets the threads of its worker's share of cores: a
program through its environment (:mod:`cagoflow.apps.commands`), a Python task through
:func:`run_with_threads`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable

from cagoflow.apps.commands import thread_environment
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
    benchmark: Any
    benchmark_labels: Any
    evaluate_errors: Any
    evaluate_md: Any
    evaluate_summary: Any
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


def run_with_threads(threads: int, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` on ``threads`` threads: ``torch.set_num_threads`` (it holds
    for the calling thread, so also in a thread pool, whose tasks all get the same share) and the
    thread variables in ``os.environ`` for what this process loads or starts later (tblite, LAMMPS)."""
    import torch

    os.environ.update(thread_environment(threads))
    torch.set_num_threads(threads)
    return function(*args, **kwargs)


def with_threads(function: Callable[..., Any], threads: int) -> Callable[..., Any]:
    """``function`` run by :func:`run_with_threads`; a partial of module-level functions, so HTEX
    can pickle it, with the name and signature of ``function`` for Parsl."""
    return functools.update_wrapper(functools.partial(run_with_threads, threads, function), function)


def make_apps(site: SiteConfig) -> CampaignApps:
    """Apps bound to the executors that ``site`` maps their stages to.

    A stage mapped to an executor of kind ``mpi`` runs only its program there (the bash app,
    with a ``parsl_resource_specification``); its Python parts go to
    :meth:`~cagoflow.config.SiteConfig.python_executor_for` that stage. Each Python task runs
    on :meth:`~cagoflow.config.SiteConfig.python_threads` threads.
    """
    from parsl import bash_app, python_app

    from cagoflow.apps import stages

    def python(function, stage: str):
        threaded = with_threads(function, site.python_threads(stage))
        return python_app(threaded, executors=[site.python_executor_for(stage)])

    def bash(stage: str):
        return bash_app(stages._run_command, executors=[site.executor_for(stage)])

    return CampaignApps(
        initial=python(stages._initial, "sample"),
        split=python(stages._split, "merge"),
        prepare_training=python(stages._prepare_training, "train"),
        run_training=bash("train"),
        collect_training=python(stages._collect_training, "train"),
        calibrate=python(stages._calibrate, "calibrate"),
        benchmark=python(stages._benchmark, "evaluate"),
        benchmark_labels=python(stages._benchmark_labels, "evaluate"),
        evaluate_errors=python(stages._evaluate_errors, "evaluate"),
        evaluate_md=python(stages._evaluate_md, "evaluate"),
        evaluate_summary=python(stages._evaluate_summary, "evaluate"),
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
