"""Synthetic populations of runs for the learning tests (written by the tests, no real data).

Failed runs tend to hit a failing test command repeatedly with the same error; successful runs
tend to pass their tests after an edit. The tendencies are not absolute (some successful runs
retry a failing test, some failed runs look clean), and lengths overlap, so nothing is separable by
length alone.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from immunity.importers import ImportedRun
from immunity.models import Run, Step


def _tool(name: str, args: dict[str, Any], result: str | None = "ok", error: str | None = None,
          rc: int | None = None) -> Step:
    return Step(tool=name, arguments=args, result=result, error=error, return_code=rc)


def make_run(rng: random.Random, task: int, trial: int, fail: bool) -> ImportedRun:
    run = Run(run_id=f"run-{task}-{trial}", task=f"Fix the failing check number {task} in module m{task % 4}.py",
              task_id=f"task-{task}", outcome="failure" if fail else "success", framework="synthetic")
    steps: list[Step] = [_tool("search_code", {"query": f"check {task}"}, result=f"m{task % 4}.py:{task}: def check")]
    for i in range(rng.randint(0, 2)):
        steps.append(_tool("read_file", {"path": f"m{task % 4}.py", "part": i}, result=f"line {i} of the module"))
    steps.append(_tool("edit_file", {"path": f"m{task % 4}.py", "change": f"fix {trial}"}, result="edited"))
    looping = fail if rng.random() < 0.85 else not fail
    if looping:
        for _ in range(rng.randint(2, 4)):
            steps.append(_tool("run_tests", {"target": f"test_{task}"}, result=None,
                               error=f"AssertionError: expected {task} got {task + 1}", rc=1))
        if rng.random() < 0.5:
            steps.append(_tool("edit_file", {"path": f"m{task % 4}.py", "change": "again"}, result="edited"))
            steps.append(_tool("run_tests", {"target": f"test_{task}"}, result=None,
                               error=f"AssertionError: expected {task} got {task + 2}", rc=1))
    else:
        for i in range(rng.randint(1, 4)):
            steps.append(_tool("read_file", {"path": f"t{task}.py", "part": i}, result=f"test line {i}"))
        steps.append(_tool("run_tests", {"target": f"test_{task}"}, result="3 passed", rc=0))
    steps.append(Step(text="The check is fixed." if not fail else "I think it is done.", data={"final": True}))
    for i, s in enumerate(steps):
        s.index, s.run_id = i, run.run_id
    return ImportedRun(run=run, steps=steps, source="synthetic")


def population(n_tasks: int = 16, trials: int = 4, seed: int = 7) -> list[ImportedRun]:
    rng = random.Random(seed)
    out = []
    for t in range(n_tasks):
        for k in range(trials):
            out.append(make_run(rng, t, k, fail=(k % 2 == 0) if t % 3 else (k != 3)))
    return out


@pytest.fixture(scope="session")
def runs() -> list[ImportedRun]:
    return population()


@pytest.fixture(scope="session")
def learned(runs: list[ImportedRun], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A pack learned from the first 12 tasks; the last 4 tasks are held out."""
    from immunity.learning.data import collect
    from immunity.learning.learn import LearnConfig
    from immunity.learning.packs import save_pack
    from immunity.learning.pipeline import build_pack

    train = [r for r in runs if int(r.run.task_id.split("-")[1]) < 12]
    test = [r for r in runs if int(r.run.task_id.split("-")[1]) >= 12]
    data, emb = collect(train)
    pack, warnings = build_pack(data, emb, LearnConfig(folds=4, min_successes=5), name="synthetic")
    path = tmp_path_factory.mktemp("packs") / "synthetic.json"
    save_pack(pack, path)
    return {"pack": pack, "path": str(path), "train": train, "test": test, "data": data, "warnings": warnings}


def write_store(path: str, items: list[ImportedRun]) -> None:
    from immunity.store import SQLiteStore

    st = SQLiteStore(path, background=False)
    try:
        for it in items:
            st.write_run(it.run, it.steps)
    finally:
        st.close()
