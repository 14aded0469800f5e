"""Task names, made in one place: the driver, the task bodies and ``status`` agree on them."""

from __future__ import annotations

import pytest

from cagoflow.stages import md_task, member_task, structure_task, task_system


@pytest.mark.parametrize(
    "task, system",
    [
        (structure_task("water", 3), "water"),
        (structure_task("water", 3, "init"), "water"),
        (structure_task("liquid-water", 12, "benchmark"), "liquid-water"),
        (md_task("copper-fcc", 1), "copper-fcc"),
    ],
)
def test_a_task_names_its_system(task, system):
    assert task_system(task) == system


def test_names_as_the_work_directory_shows_them():
    assert [structure_task("water", 3), structure_task("water", 3, "init"), md_task("water", 1), member_task(2)] == [
        "water-003", "water-init-003", "water-01", "member-02",
    ]  # fmt: skip
