"""Task records keyed by content: what makes resume exact."""

from __future__ import annotations

from cagoflow.records import TaskRecord, all_records, executions, finished, read_record, task_key, write_record


def test_key_depends_on_content_settings_and_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("one")
    b.write_text("two")
    key = task_key([a, b], {"delta": 0.1})
    assert task_key([a, b], {"delta": 0.1}) == key
    assert task_key([b, a], {"delta": 0.1}) != key
    assert task_key([a, b], {"delta": 0.2}) != key
    moved = tmp_path / "moved"
    moved.write_text("one")
    assert task_key([moved, b], {"delta": 0.1}) == key  # content, not path
    a.write_text("changed")
    assert task_key([a, b], {"delta": 0.1}) != key


def test_finished_needs_same_key_and_outputs(tmp_path):
    task = tmp_path / "iter-000" / "cago" / "water-000"
    task.mkdir(parents=True)
    (task / "structure.extxyz").write_text("x")
    record = TaskRecord("cago", "water-000", 0, "k1", "done", {"structure": "iter-000/cago/water-000/structure.extxyz"})
    write_record(task, record, tmp_path)
    assert read_record(task) == record
    assert finished(task, "k1", tmp_path) == record
    assert finished(task, "k2", tmp_path) is None
    (task / "structure.extxyz").unlink()
    assert finished(task, "k1", tmp_path) is None
    assert [e["task"] for e in executions(tmp_path)] == ["water-000"]
    assert all_records(tmp_path) == [record]


def test_unreadable_record_is_not_done(tmp_path):
    (tmp_path / "record.json").write_text("{ half written")
    assert read_record(tmp_path) is None
