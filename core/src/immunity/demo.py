"""``immunity demo``: an agent with a scripted model fails in a known way; immunity catches and
corrects it; the run is printed as a timeline. Uses the first installed framework adapter that has
a demo (LangGraph first), else a framework-free fake run."""

from __future__ import annotations

from typing import Any

from immunity.runtime import Runtime

PREFERRED = ("langgraph", "openai-agents", "llamaindex", "crewai")


def _fake_demo(runtime: Runtime) -> str:
    from immunity.testing import FakeAdapter, ScriptStep

    calls = {"n": 0}

    def run_tests(path: str = "tests") -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("ImportError: cannot import name 'parse' from 'app.util'")
        return "3 passed"

    def edit(path: str, text: str) -> str:
        return f"wrote {path}"

    def turn(seen: list[dict[str, Any]]) -> ScriptStep:
        hinted = any("[immunity]" in str(m.get("content")) for m in seen if m.get("role") == "user")
        if hinted and calls["n"] >= 2 and not any("wrote" in str(m.get("content")) for m in seen):
            return ScriptStep(tool="edit", arguments={"path": "app/util.py", "text": "def parse(): ..."})
        if calls["n"] >= 3:
            return ScriptStep(answer="Fixed the import; tests pass.")
        return ScriptStep(tool="run_tests", arguments={"path": "tests"})

    adapter = FakeAdapter(runtime, tools={"run_tests": run_tests, "edit": edit})
    session = adapter.run([turn] * 8, task="Make the test suite pass", domain=runtime.config.domain)
    return session.run.run_id


def run_demo(*, framework: str | None = None, store: str = "immunity.db") -> str:
    from immunity.timeline import render_run

    rt = Runtime(store=store)
    try:
        adapters = rt.pm.registry("adapters")
        from immunity.guard import RENAMED_ADAPTERS

        framework = RENAMED_ADAPTERS.get(framework or "", framework)  # the old name still works
        names = [framework] if framework else [n for n in PREFERRED if n in adapters]
        chosen = None
        for name in names:
            cls = adapters.get(name)
            if cls is None:
                raise SystemExit(f"no adapter {name!r} installed; installed: {sorted(adapters)}")
            if cls.framework_version() is not None and hasattr(cls, "demo"):
                chosen = cls
                break
        if chosen is not None:
            run_id = chosen.demo(rt)
            header = f"immunity demo on {chosen.framework} {chosen.framework_version()} (scripted model, offline)"
        else:
            run_id = _fake_demo(rt)
            header = "immunity demo on a fake framework (no adapter installed; scripted model, offline)"
        rt.flush()
        run = rt.store.get_run(run_id)
        legend = ("legend: x failed step   ! verdict (what a check found)   > intervention (a hint goes into the "
                  "next model call only)   ~ recovery")
        return (f"{header}\n{legend}\n\n{render_run(rt.store, run)}\n\n"
                f"stored in {store}; see it again with: immunity runs show {run_id}")
    finally:
        rt.close()
