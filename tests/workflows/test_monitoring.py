"""Parsl's monitoring, switched on by the site-config: the campaign's tasks land in the database
in the work directory, one row per Parsl task, each with its app's name."""

from __future__ import annotations

import sqlite3

from cagoflow.campaign import load_campaign
from cagoflow.executors.parsl_config import MONITORING_DB
from cagoflow.executors.site import default_site
from cagoflow.records import executions
from cagoflow.workflows.driver import run_campaign


def test_a_campaign_with_monitoring_fills_the_database_with_its_tasks(tmp_path, write_campaign):
    config = load_campaign(write_campaign(tmp_path, **{"iterations": 1, "systems.water.initial_samples": 3}))
    site = default_site().model_copy(update={"monitoring": True})
    workdir = tmp_path / "work"
    run_campaign(config, site, workdir)

    with sqlite3.connect(workdir / MONITORING_DB) as database:
        workflows = database.execute("SELECT workflow_name, tasks_completed_count FROM workflow").fetchall()
        apps = dict(database.execute("SELECT task_func_name, COUNT(*) FROM task GROUP BY task_func_name").fetchall())
    ran = executions(workdir)
    assert workflows == [("work", sum(apps.values()))]
    assert apps["merge"] == 2 and apps["cago"] == 1 and apps["split"] == 1  # iteration -1 and 0 merge; 2 starts in 1 CAGO task
    assert apps["reference"] == sum(e["stage"] == "reference" for e in ran) == 4 + 2  # 1 + 3 rattled starts, 2 CAGO
    assert apps["run_train"] == apps["collect_training"] == 3  # the trainer's bash app, by its stage
