"""The pytest plugin shipped for plugin authors, used the way they would."""

import pytest
from immunity.models import ActionType, EventKind, Verdict
from immunity.testing import FakeAdapter, ScriptStep

pytest_plugins = ["pytester"]


def test_fixtures_are_available(immunity_runtime, fake_run):
    run = fake_run(task="t")
    run.tool("grep", {"pattern": "x"})
    assert run.state.steps[0].action_type is ActionType.OTHER or run.state.steps[0].tool == "grep"
    assert immunity_runtime.store.count("steps") == 1


class Nag:
    @staticmethod
    def verify(event, step, run, state):
        return None


@pytest.mark.immunity(domain="testing", step_budget_ms=100)
def test_marker_configures_runtime(immunity_runtime):
    assert immunity_runtime.config.domain == "testing"
    assert immunity_runtime.config.step_budget_ms == 100


def test_fake_adapter_delivers_hints_only_to_the_next_call(immunity_runtime):
    import pluggy

    hookimpl = pluggy.HookimplMarker("immunity")

    class Drift:
        @hookimpl
        def immunity_verify(self, event, step, run, state):
            if event.kind == EventKind.TOOL_END and step.tool == "browse":
                return Verdict(ok=False, error_class="goal_drift", message="off task", hint="back to the task")

    immunity_runtime.pm.register(Drift())
    adapter = FakeAdapter(immunity_runtime, tools={"browse": lambda url: "cat pictures"})
    adapter.run([ScriptStep(tool="browse", arguments={"url": "cats"}), ScriptStep(tool="browse", arguments={"url": "c"}),
                 ScriptStep(answer="done")])
    hinted = [i for i, seen in enumerate(adapter.seen) if any(m.get("content") == "back to the task" for m in seen)]
    assert hinted == [1]  # only the call right after the verdict saw it
    assert not any(m.get("content") == "back to the task" for m in adapter.history)  # not left in history


def test_plugin_author_workflow_with_pytester(pytester):
    pytester.makepyfile(
        """
        import pluggy
        from immunity.models import Verdict
        hookimpl = pluggy.HookimplMarker("immunity")

        class NoSecrets:
            @hookimpl
            def immunity_verify(self, event, step, run, state):
                if event.kind == "tool_start" and "password" in str(event.arguments):
                    return Verdict(ok=False, block=True, error_class="unsafe_action", message="secret")

        def test_blocks(immunity_runtime, fake_run):
            immunity_runtime.pm.register(NoSecrets())
            run = fake_run()
            assert run.tool("send", {"body": "password=1"}).block
            assert not run.tool("send", {"body": "hello"}).block
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
