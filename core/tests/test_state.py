"""RunState's per-step signals: signatures, repeat streaks, ping-pong and new information."""

from __future__ import annotations

from typing import Any

from immunity.models import ActionType, Step
from immunity.state import (
    _NEAR_CACHE,
    _NEAR_CACHE_LIMIT,
    RunState,
    _digest_text,
    action_signature,
    near_signature,
    signatures,
)


def call(tool: str | None, args: dict[str, Any] | None = None, result: str | None = "ok", **kw: Any) -> Step:
    return Step(run_id="r", tool=tool, arguments=args, result=result, action_type=ActionType.EXECUTE, **kw)


def test_the_action_signature_is_the_tool_and_its_exact_arguments() -> None:
    a = call("bash", {"command": "ls", "cwd": "/x"})
    assert action_signature(a) == action_signature(call("bash", {"cwd": "/x", "command": "ls"}))  # key order
    assert action_signature(a) != action_signature(call("bash", {"command": "ls ", "cwd": "/x"}))
    assert action_signature(a) != action_signature(call("sh", {"command": "ls", "cwd": "/x"}))
    assert signatures(a) == (action_signature(a), near_signature(a))


def test_a_step_without_a_tool_is_signed_by_its_text() -> None:
    said = Step(run_id="r", tool=None, text="I will look at the file")
    assert action_signature(said) == action_signature(Step(run_id="r", tool=None, text="I will look at the file"))
    assert action_signature(said) != action_signature(Step(run_id="r", tool=None, text="I will look at it"))
    # a tool named "None" is not a step without a tool
    assert action_signature(said) != action_signature(Step(run_id="r", tool="None", text="I will look at the file"))


def test_the_near_signature_ignores_numbers_whitespace_and_case() -> None:
    a, b = call("bash", {"command": "sleep 5 &&  Tail -n 20 log"}), call("bash", {"command": "SLEEP 10 && tail -n 3 log"})
    assert near_signature(a) == near_signature(b)
    assert action_signature(a) != action_signature(b)
    assert near_signature(a) != near_signature(call("bash", {"command": "sleep 5 && head -n 20 log"}))
    text = Step(run_id="r", tool=None, text="Retry 3\n\tof  5")
    assert near_signature(text) == near_signature(Step(run_id="r", tool=None, text="retry 4 of 6"))


def test_arguments_json_cannot_encode_still_get_a_signature() -> None:
    def looped(n: int) -> Step:
        step = call("tool", {"n": n})
        assert step.arguments is not None
        step.arguments["self"] = step.arguments  # a cycle: JSON refuses it
        return step

    assert action_signature(looped(1)) == action_signature(looped(1))
    assert action_signature(looped(1)) != action_signature(looped(2))
    state = RunState()
    state.add_step(looped(1))
    assert state.n_steps == 1


def test_digests_of_tuples_are_unambiguous() -> None:
    assert _digest_text("ab", "c") != _digest_text("a", "bc")
    assert _digest_text(None, "x") != _digest_text("-", "x") != _digest_text("", "x")
    assert _digest_text("\ud800") != _digest_text("?")  # a lone surrogate is not replaced


def test_the_near_cache_stays_bounded() -> None:
    for i in range(_NEAR_CACHE_LIMIT + 10):
        near_signature(call("bash", {"command": f"echo {'x' * (i % 7)} {i}"}))
    assert len(_NEAR_CACHE) <= _NEAR_CACHE_LIMIT
    _NEAR_CACHE.clear()
    long = call("bash", {"command": "cat <<EOF > a.py\n" + "x = 1\n" * 400 + "EOF"})
    assert near_signature(long) == near_signature(long) and not _NEAR_CACHE  # a long body is not kept


def test_a_repeat_is_the_same_call_with_the_same_result() -> None:
    state = RunState()
    for _ in range(3):
        state.add_step(call("status", {"id": 1}, result="pending"))
    assert state.identical_streak == 3 and state.near_streak == 3
    assert state.signature_counts[action_signature(call("status", {"id": 1}))] == 3
    state.add_step(call("status", {"id": 1}, result="done"))  # the same call answering something new
    assert state.identical_streak == 1 and state.near_streak == 4
    assert state.steps_without_new_info == 0


def test_the_same_output_again_is_no_new_information_and_ping_pong_is_counted() -> None:
    state = RunState()
    a, b = ({"path": "a.py"}, "A"), ({"path": "b.py"}, "B")
    for args, out in (a, b, a, b, a):
        state.add_step(call("read", args, result=out))
    assert state.ping_pong == 3
    assert state.steps_without_new_info == 3  # the third read on brings nothing new
    assert state.steps[-1].data["_seen"] is True
    state.add_step(call("read", {"path": "c.py"}, result="C"))
    assert state.ping_pong == 0 and state.steps_without_new_info == 0


def test_a_failed_call_with_the_same_error_repeats_and_its_output_is_digested_once() -> None:
    state = RunState()
    for _ in range(2):
        state.add_step(call("bash", {"command": "python x.py"}, result=None, error="ModuleNotFoundError: No module named 'y'",
                            return_code=1))
    assert state.identical_streak == 2 and state.errors == 2 and state.consecutive_failures == 2
    assert state.error_counts[state.last_error] == 2
    assert state.steps_without_new_info == 1
