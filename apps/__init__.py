"""Parsl apps of the campaign stages (``cagoflow.apps``).

The stage bodies are plain functions, one module per family (:data:`TASK_MODULES`), each
registered with its stage (:func:`cagoflow.apps.tasks.stage_task`); :func:`make_apps` binds each to the executor that the site-config maps its stage to (psiflow's idiom
``f = python_app(_f, executors=[...])``). External programs (trainers) run in bash apps, each
in its own task directory. Every task gets the threads of its worker's share of cores: a
program through its environment (:mod:`cagoflow.apps.commands`), a Python task through
:func:`run_with_threads`.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Any, Callable

from cagoflow.apps.commands import thread_environment
from cagoflow.executors.site import SiteConfig
from cagoflow.stages import PROGRAM_STAGES

#: The modules of task bodies, by family; importing them fills :data:`cagoflow.apps.tasks.TASKS`.
TASK_MODULES = ("dataset_tasks", "training_tasks", "exploration_tasks", "cago_tasks", "reference_tasks", "evaluation_tasks")


def run_with_threads(threads: int, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` on ``threads`` threads: ``torch.set_num_threads`` (it holds
    for the calling thread, so also in a thread pool, whose tasks all get the same share) and the
    thread variables in ``os.environ`` for what this process loads or starts later (tblite, LAMMPS)."""
    import torch

    os.environ.update(thread_environment(threads))
    torch.set_num_threads(threads)
    return function(*args, **kwargs)


def with_threads(function: Callable[..., Any], threads: int, name: str) -> Callable[..., Any]:
    """``function`` run by :func:`run_with_threads`; a partial of module-level functions, so HTEX
    can pickle it, with the signature of ``function`` and the app's ``name`` for Parsl (its
    monitoring lists tasks by it)."""
    return named(functools.partial(run_with_threads, threads, function), function, name)


def named(wrapper: Callable[..., Any], function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``wrapper`` with the signature and docs of ``function``, called ``name``."""
    functools.update_wrapper(wrapper, function)
    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


def make_apps(site: SiteConfig) -> SimpleNamespace:
    """One Parsl app per task body of :data:`TASK_MODULES` (``apps.<name>``, see
    :data:`~cagoflow.apps.tasks.TASKS`) and one bash app ``run_<stage>`` per stage that starts
    programs (:data:`cagoflow.stages.PROGRAM_STAGES`), each bound to the executor ``site`` maps
    its stage to.

    A stage mapped to an executor of kind ``mpi`` runs only its program there (the bash app,
    with a ``parsl_resource_specification``); its Python parts go to
    :meth:`~cagoflow.executors.site.SiteConfig.python_executor_for` that stage. Each Python task
    runs on :meth:`~cagoflow.executors.site.SiteConfig.python_threads` threads.
    """
    import importlib

    from parsl import bash_app, python_app

    from cagoflow.apps.commands import _run_command
    from cagoflow.apps.tasks import TASKS

    for module in TASK_MODULES:
        importlib.import_module(f"cagoflow.apps.{module}")

    apps = {
        name: python_app(with_threads(function, site.python_threads(stage), name), executors=[site.python_executor_for(stage)])
        for name, (stage, function) in TASKS.items()
    }
    apps.update({
        f"run_{stage}": bash_app(named(functools.partial(_run_command), _run_command, f"run_{stage}"), executors=[site.executor_for(stage)])
        for stage in PROGRAM_STAGES
    })  # fmt: skip
    return SimpleNamespace(**apps)
