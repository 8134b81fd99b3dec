"""The end-to-end operations behind the CLI: learn a pack, score runs with a pack, cross-validate."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from immunity import taxonomy as tx
from immunity.learning.data import collect, group_of, outcome_label, score_items, task_key
from immunity.learning.evaluate import RunLabel, RunScores, evaluate
from immunity.learning.learn import (
    LearnConfig,
    RunData,
    assign_folds,
    baseline_threshold,
    learn_model,
    unlabelled_threshold,
)
from immunity.learning.model import member_to_dict
from immunity.learning.packs import save_pack
from immunity.models import PatternPack


def _version() -> str:
    try:
        return metadata.version("immunity")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "0"


def build_pack(runs: list[RunData], embedder_info: tuple[Any, dict[str, Any], str], cfg: LearnConfig, *,
               name: str, version: str = "0.1.0", domain: str | None = None, sources: list[str] | None = None,
               split: str = "task", jobs: int = 1) -> tuple[PatternPack, list[str]]:
    """Learn a pack from collected runs; returns the pack and the warnings to show."""
    learned = learn_model(runs, cfg, name=name, domain=domain, jobs=jobs)
    embedder, spec, mode = embedder_info
    member = learned.member
    labelled = [r for r in runs if r.outcome is not None]
    interventions: dict[str, list[str]] = {}
    for p in learned.patterns:
        if p.intervention:
            have = interventions.setdefault(p.error_class, [])
            if p.intervention not in have:
                have.append(p.intervention)
    pack = PatternPack(
        name=name, version=version, domain=domain, created_with=f"immunity {_version()}",
        embedder=str(embedder.name), dimension=int(embedder.dimension), threshold=member.threshold,
        training={"runs": len(runs), "labelled_runs": len(labelled),
                  "failed_runs": sum(r.outcome == 1 for r in labelled),
                  "successful_runs": sum(r.outcome == 0 for r in labelled),
                  "unknown_outcome_runs": sum(r.outcome is None for r in runs),
                  "groups": len({r.group for r in labelled}), "split": split,
                  "steps": int(sum(r.n for r in runs)), "target_false_alarm_rate": cfg.target_far,
                  "folds": learned.diagnostics.get("folds"), "sets": sorted({r.source or "-" for r in runs}),
                  "warnings": learned.warnings},
        metrics={"inner_cv": learned.diagnostics},
        provenance={"sources": sorted(set(sources or [])), "method": f"alignment divergence + cross-fitted {member.kind}",
                    "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}},
        patterns=learned.patterns,
        interventions=interventions,
        model={"kind": "trees-v1" if member.trees is not None else "logistic-v1", "embedder": spec, "signature": mode, "members": [member_to_dict(member)]},
    )
    return pack, learned.warnings


@dataclass
class CVResult:
    scores: dict[str, RunScores]
    labels: dict[str, RunLabel]
    folds: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def evaluate(self, **kw: Any) -> dict[str, Any]:
        res = evaluate(self.scores, self.labels, **kw)
        res["folds"] = self.folds
        return res


def scores_from_rows(rows: list[dict[str, Any]]) -> dict[str, RunScores]:
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(str(r["run_id"]), []).append(r)
    out = {}
    for rid, rs in by_run.items():
        rs.sort(key=lambda r: int(r["step"]))
        out[rid] = RunScores(rid, np.asarray([float(r["risk"]) for r in rs]), np.asarray([bool(r["alarm"]) for r in rs]),
                             [r.get("error_class") for r in rs], [str(r.get("action_type", "")) for r in rs],
                             np.asarray([bool(r.get("failed", False)) for r in rs]))
    return out


def labels_for(items: list[Any], split: str, baseline_steps: int | None = None) -> dict[str, RunLabel]:
    return {it.run.run_id: RunLabel(it.run.run_id, outcome_label(it.run), group_of(it.run, split),
                                    it.run.failure_step, baseline_steps) for it in items}


def score_rows(items: list[Any], packs: list[Any], *, domain: str | None = None,
               options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for scored in score_items(items, packs, domain=domain, options=options):
        rows.extend(s.row(scored.run_id) for s in scored.scores)
    return rows


def recalibrate_rows(rows: list[dict[str, Any]], calibration: list[dict[str, Any]], target_far: float) -> float:
    """Unlabelled calibration of scored rows in place: the threshold at which at most
    ``target_far`` of the runs scored in ``calibration`` alarm (:func:`unlabelled_threshold`; no
    outcome is read), applied to the alarm of every row of ``rows``. A step's class is the
    learned-risk class when it alarms with no pattern behind it, as the scorer gives it. One risk
    model per pack (a merged pack has several thresholds)."""
    from immunity.learning.matcher import LEARNED_RISK

    peak: dict[str, float] = {}
    for r in calibration:
        peak[r["run_id"]] = max(peak.get(r["run_id"], 0.0), float(r["risk"]))
    t = unlabelled_threshold(list(peak.values()), target_far)
    for r in rows:
        r["alarm"] = float(r["risk"]) >= t
        if r["alarm"] and r.get("error_class") is None:
            r["error_class"] = LEARNED_RISK
        elif not r["alarm"] and r.get("error_class") == LEARNED_RISK:
            r["error_class"] = None
    return t


def calibrate_pack(pack_ref: Any, items: list[Any], target_far: float, *, domain: str | None = None,
                   options: dict[str, Any] | None = None) -> tuple[PatternPack, dict[str, Any]]:
    """A copy of a pack whose thresholds are set on a new population without its labels: each risk
    model's threshold is the lowest at which at most ``target_far`` of these runs would alarm
    (:func:`unlabelled_threshold`). The runs are scored with the pack through the runtime, which
    never reads their outcome. Returns the pack and what was done (for ``training.calibration``)."""
    from immunity.learning.packs import resolve_pack
    from immunity.plugins import get_plugin_manager

    if not 0 < target_far < 1:
        raise ValueError("the target false-alarm rate must be between 0 and 1")
    pack = resolve_pack(pack_ref, get_plugin_manager().registry("pattern_packs")).model_copy(deep=True)
    members = (pack.model or {}).get("members") or []
    if not members:
        raise ValueError(f"pack {pack.name} has no risk model to calibrate")
    peaks: list[list[float]] = [[] for _ in members]
    runs = 0
    for scored in score_items(items, [pack_ref], domain=domain, options=options):
        if not scored.scores:
            continue
        runs += 1
        for j in range(len(members)):
            peaks[j].append(max(s.member_risks[j] if j < len(s.member_risks) else 0.0 for s in scored.scores))
    if runs == 0:
        raise ValueError("no run with a scored step to calibrate on")
    before = [float(m["threshold"]) for m in members]
    after = [unlabelled_threshold(p, target_far) for p in peaks]
    for m, t in zip(members, after, strict=True):
        m["threshold"] = t
    if pack.threshold is not None:
        pack.threshold = after[0] if len(after) == 1 else min(after)
    info = {"method": "unlabelled", "runs": runs, "target_false_alarm_rate": target_far,
            "thresholds_before": before, "thresholds": after}
    pack.training = {**(pack.training or {}), "calibration": info}
    return pack, info


def _calibrate_fold(rows: list[dict[str, Any]], test_items: list[Any], target_far: float,
                    seed: int) -> tuple[list[float], dict[str, int | None]]:
    """Split a held-out fold's runs in two by task; each half's alarms use the threshold calibrated
    (without labels) on the other half, so no run is scored with a threshold its own scores set.
    The steps-so-far baseline is calibrated the same way (on the other half's run lengths). Returns
    the thresholds and each run's baseline threshold."""
    halves = assign_folds([task_key(it.run) for it in test_items], 2, seed)
    ids = [{it.run.run_id for it, h in zip(test_items, halves, strict=True) if h == j} for j in (0, 1)]
    lengths: dict[str, int] = {}
    for r in rows:
        lengths[r["run_id"]] = lengths.get(r["run_id"], 0) + 1
    out, base = [], {}
    for j in (0, 1):
        part = [r for r in rows if r["run_id"] in ids[j]]
        other = [r for r in rows if r["run_id"] in ids[1 - j]]
        if part and other:
            out.append(recalibrate_rows(part, other, target_far))
            b = baseline_threshold([lengths.get(i, 0) for i in ids[1 - j]], target_far)
            base.update({i: b for i in ids[j]})
    return out, base


def cross_validate(items: list[Any], cfg: LearnConfig, *, split: str = "task", folds: int = 5,
                   embedder_spec: dict[str, Any] | None = None, domain: str | None = None, name: str = "cv",
                   log: Callable[[str], None] | None = None, options: dict[str, Any] | None = None,
                   jobs: int = 1, calibrate: str = "labelled") -> CVResult:
    """Outer cross-validation split by ``split`` (task or repo): for each fold, learn a pack on the
    other folds, write it, and score the fold's runs with it through the runtime.

    ``calibrate="unlabelled"`` replaces the pack's threshold on each held-out fold by one set from
    the fold's own score distribution, without its labels (:func:`recalibrate_rows`, the
    ``pack calibrate`` command's rule): half of the fold's tasks calibrate the other half."""
    if calibrate not in ("labelled", "unlabelled"):
        raise ValueError(f"unknown calibration {calibrate!r}: labelled or unlabelled")
    say = log or (lambda _m: None)
    ids = [it.run.run_id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("run ids are not unique across the input; cross-validation needs unique ids")
    say(f"collecting features of {len(items)} runs")
    runs, emb = collect(items, split=split, embedder_spec=embedder_spec, domain=domain, jobs=jobs)
    groups = [r.group for r in runs]
    k = max(2, min(folds, len(set(groups))))
    fold_of = assign_folds(groups, k, cfg.seed)
    all_rows: list[dict[str, Any]] = []
    labels: dict[str, RunLabel] = {}
    fold_info = []
    with tempfile.TemporaryDirectory(prefix="immunity-cv-") as tmp:
        for j in range(k):
            train = [r for r, f in zip(runs, fold_of, strict=True) if f != j]
            test_items = [it for it, f in zip(items, fold_of, strict=True) if f == j]
            pack, warnings = build_pack(train, emb, cfg, name=f"{name}-fold{j}", domain=domain, split=split,
                                        jobs=jobs)
            path = os.path.join(tmp, f"fold{j}.json")
            save_pack(pack, path)
            member = pack.model["members"][0]
            say(f"fold {j + 1}/{k}: trained on {len(train)} runs ({len(pack.patterns)} patterns, threshold "
                f"{pack.threshold:.3f}), scoring {len(test_items)} held-out runs")
            rows = score_rows(test_items, [path], domain=domain, options=options)
            all_rows.extend(rows)
            labels.update(labels_for(test_items, split, member.get("baseline_steps_threshold")))
            calibrated = None
            if calibrate == "unlabelled":
                calibrated, base = _calibrate_fold(rows, test_items, cfg.target_far, cfg.seed)
                for rid, b in base.items():
                    labels[rid].baseline_steps = b
            fold_info.append({"fold": j, "train_runs": len(train), "test_runs": len(test_items),
                              "patterns": len(pack.patterns), "threshold": round(float(pack.threshold or 0), 6),
                              "baseline_steps_threshold": member.get("baseline_steps_threshold"),
                              "warnings": warnings,
                              **({"unlabelled_thresholds": [round(t, 6) for t in calibrated]} if calibrated else {}),
                              "classes": sorted({p.error_class for p in pack.patterns})})
    return CVResult(scores_from_rows(all_rows), labels, fold_info, all_rows)


def class_hint(cls: str) -> str | None:
    c = tx.get(cls)
    return c.hint if c else None
