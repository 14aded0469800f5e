"""The dataset's tasks: the starting structures, the splits of an iteration, the merge that grows the dataset.

Plain task bodies (files in, files out), registered with their stage; :func:`cagoflow.apps.make_apps`
makes each a Parsl app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cagoflow.apps.tasks import Outcome, StageFailed, TaskSpec, output, read, run_task, seed_for, stage_task, write
from cagoflow.campaign import CampaignConfig
from cagoflow.records import TaskRecord
from cagoflow.summaries import MergeSummary, PostfilterSummary, SplitSummary


DATASET = "dataset"


@stage_task("initial")
def _initial(workdir: str, config: CampaignConfig, system: str) -> TaskRecord:
    """The starting structures of a system plus rattled copies, to be labelled before iteration 0."""
    spec = TaskSpec(Path(workdir), "initial", -1, system)
    settings = config.systems[system]

    def body(directory: Path) -> Outcome:
        structures = read(settings.structures)
        rng = np.random.default_rng(seed_for(config, "initial", system))
        copies = []
        for k in range(settings.initial_samples):
            atoms = structures[k % len(structures)].copy()
            atoms.rattle(stdev=settings.initial_rattle, seed=int(rng.integers(2**31)))
            copies.append(atoms)
        starts = [atoms.copy() for atoms in structures] + copies
        for atoms in starts:
            atoms.calc = None if not settings.labelled else atoms.calc
            atoms.info.update(system=system)
        return Outcome(outputs={"structures": write(directory / "structures.extxyz", starts)}, summary={"count": len(starts)})

    return run_task(spec, [settings.structures], settings.model_dump(mode="json", exclude={"structures"}), body)


def initial_count(config: CampaignConfig, system: str) -> int:
    """How many structures :func:`_initial` writes for ``system``."""
    settings = config.systems[system]
    return len(read(settings.structures)) + settings.initial_samples


@stage_task("split")
def _split(workdir: str, iteration: int, config: CampaignConfig, merged: TaskRecord) -> TaskRecord:
    """Test set and per-member bootstrap splits of the dataset as the previous merge left it.

    The snapshot names labelled structures (:func:`cagoflow.hashing.labelled_hash`); the draws
    use their geometry (:func:`cagoflow.hashing.structure_hash`, as the routed CAGO structures
    do), so a structure relabelled by a reference run again keeps its place in the splits and
    only the members that train or validate on it are retrained.
    """
    from cagoflow.dataset import Dataset, make_splits_for_hashes
    from cagoflow.hashing import structure_hash

    root = Path(workdir)
    spec = TaskSpec(root, "split", iteration, "dataset")
    snapshot = output(merged, "snapshot", root)
    routed = [output(merged, "routed", root)] if "routed" in merged.outputs else []
    settings = {"members": config.committee.size, "seed": config.seed, **config.dataset.model_dump(mode="json")}

    def body(directory: Path) -> Outcome:
        hashes = json.loads(snapshot.read_text())
        fixed = {h for path in routed for h in json.loads(path.read_text())}
        dataset = Dataset.open(root / DATASET)
        position = {entry.hash: k for k, entry in enumerate(dataset.entries)}
        structures = dataset.structures([position[h] for h in hashes])
        splits = make_splits_for_hashes(
            [structure_hash(atoms) for atoms in structures],
            config.committee.size,
            config.seed,
            test_fraction=config.dataset.test_fraction,
            train_fraction=config.dataset.train_fraction,
            validation_fraction=config.dataset.validation_fraction,
            min_test=config.dataset.min_test,
            fixed_test=fixed,
        )
        outputs = {"test": write(directory / "test.extxyz", [structures[i] for i in splits.test])}
        for m, member in enumerate(splits.members):
            outputs[f"train-{m}"] = write(directory / f"member-{m:02d}-train.extxyz", [structures[i] for i in member.train])
            outputs[f"validation-{m}"] = write(
                directory / f"member-{m:02d}-validation.extxyz", [structures[i] for i in member.validation or member.train[:1]]
            )
        splits.save(directory / "splits.json")
        test = len(splits.test)
        warning = None
        if test < config.dataset.min_test:
            warning = (f"{test} test structures (dataset.min_test = {config.dataset.min_test}): too few to judge "
                       "the calibration out of sample until the dataset grows")  # fmt: skip
        summary = SplitSummary(dataset=len(hashes), test=test, test_from_cago=len(fixed & set(splits.test_hashes)), warning=warning)
        return Outcome(outputs=outputs, summary=summary.dump())

    return run_task(spec, [snapshot, *routed], settings, body)


@stage_task("merge")
def _merge(
    workdir: str, iteration: int, config: CampaignConfig, previous: TaskRecord | None, postfilters: Sequence[TaskRecord]
) -> TaskRecord:
    """Append the post-filtered structures of every system to the dataset, with provenance.

    The store under ``dataset/`` is an append-only pool; the campaign's training set after this
    iteration is the previous merge's snapshot plus what this merge added (``dataset.json``, the
    hashes in order), so structures from runs with other settings never leak in.
    When not a single reference of the iteration gave a usable structure, the campaign stops.
    """
    from cagoflow.dataset import Dataset, Provenance, spread_pick
    from cagoflow.hashing import labelled_hash, structure_hash
    from cagoflow.io import atomic_write_json

    root = Path(workdir)
    spec = TaskSpec(root, "merge", iteration, "dataset")
    kept_files = [output(r, "kept", root) for r in postfilters if "kept" in r.outputs]
    filtered = [PostfilterSummary.model_validate(r.summary) for r in postfilters]
    before = [] if previous is None else [output(previous, "snapshot", root)]
    routed_before = [] if previous is None or "routed" not in previous.outputs else [output(previous, "routed", root)]
    attempted = sum(s.attempted for s in filtered)
    if attempted and not kept_files:
        reasons = "; ".join(f"{task}: {reason}" for s in filtered for task, reason in list(s.rejected.items())[:3])
        raise StageFailed(
            f"iteration {iteration}: none of the {attempted} reference calculations gave a usable structure "
            f"({reasons}); the campaign stops instead of looping"
        )
    engine = f"{config.reference.engine}/{config.reference.method_name or ''}".rstrip("/")

    def body(directory: Path) -> Outcome:
        kept = [atoms for path in kept_files for atoms in read(path)]
        pushed = [k for k, atoms in enumerate(kept) if "hit_ratio" in atoms.info]
        to_test = {pushed[k] for k in spread_pick([int(kept[p].info.get("cago_steps", 0)) for p in pushed], config.dataset.cago_to_test)}
        provenance = []
        for index, atoms in enumerate(kept):
            extra = {k: atoms.info[k] for k in ("system", "true_error", "delta", "hit_ratio") if k in atoms.info}
            extra.update({"split": "test"} if index in to_test else {})
            provenance.append(Provenance(iteration=max(iteration, 0), stage="initial" if iteration < 0 else "cago",
                                         engine=engine, parent=atoms.info.get("parent"), extra=extra))  # fmt: skip
        Dataset(root / DATASET).append(kept, provenance)
        training_set = json.loads(before[0].read_text()) if before else []
        known = set(training_set)
        added = [h for h in dict.fromkeys(labelled_hash(atoms) for atoms in kept) if h not in known]
        snapshot = atomic_write_json(directory / "dataset.json", training_set + added)
        routed = json.loads(routed_before[0].read_text()) if routed_before else []
        routed += [h for h in dict.fromkeys(structure_hash(kept[k]) for k in sorted(to_test)) if h not in set(routed)]
        ratios = [x for s in filtered for x in s.hit_ratios]
        errors = [x for s in filtered for x in s.true_errors]
        summary = MergeSummary(
            added=len(added),
            dataset=len(training_set) + len(added),
            to_test=len(to_test),
            hit_ratio_mean=float(np.mean(ratios)) if ratios else None,
            hit_ratio_median=float(np.median(ratios)) if ratios else None,
            hits=len(ratios),
            unreached=sum(len(s.unreached_hit_ratios) for s in filtered),
            true_error_mean=float(np.mean(errors)) if errors else None,
        )
        outputs = {"snapshot": snapshot, "routed": atomic_write_json(directory / "test-routed.json", routed)}
        return Outcome(outputs=outputs, summary=summary.dump())

    return run_task(spec, kept_files + before + routed_before, {"engine": engine, "cago_to_test": config.dataset.cago_to_test}, body)
