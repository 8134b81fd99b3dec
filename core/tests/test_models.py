import json

import pytest
from immunity.models import ActionType, Event, EventKind, Outcome, PatternPack, Run, Step, Verdict
from pydantic import ValidationError


def test_action_type_parse_and_unknown():
    assert ActionType.parse("search") is ActionType.SEARCH
    assert ActionType.parse("handoff") is ActionType.DELEGATE
    assert ActionType.parse("no-such-thing") is ActionType.OTHER
    assert Step(action_type="verify").action_type is ActionType.VERIFY
    assert Step(action_type="bogus").action_type is ActionType.OTHER


def test_escalate_is_not_done():
    assert ActionType.ESCALATE != ActionType.DONE


def test_outcome_parse():
    assert Outcome.parse(True) is Outcome.SUCCESS
    assert Outcome.parse("resolved") is Outcome.SUCCESS
    assert Outcome.parse(None) is Outcome.UNKNOWN
    with pytest.raises(ValueError, match="unknown outcome"):
        Outcome.parse("maybe")
    with pytest.raises(ValidationError):
        Run(outcome="maybe")


def test_event_arguments_are_coerced_to_dict():
    assert Event(kind="tool_start", arguments='{"a": 1}').arguments == {"a": 1}
    assert Event(kind="tool_start", arguments="ls -la").arguments == {"input": "ls -la"}
    assert Event(kind="tool_start", arguments=[1, 2]).arguments == {"input": [1, 2]}


def test_malformed_event_is_rejected_clearly():
    with pytest.raises(ValidationError, match="kind"):
        Event(kind="not-a-kind")
    with pytest.raises(ValidationError, match="extra"):
        Event(kind="tool_start", bogus=1)


def test_raw_is_never_serialised():
    ev = Event(kind=EventKind.TOOL_END, tool="t", raw=object())
    assert "raw" not in json.loads(ev.model_dump_json())


def test_failed_property():
    assert Event(kind="tool_end", return_code=2).failed
    assert not Event(kind="tool_end", return_code=0).failed
    assert Step(error="boom").failed


def test_json_schemas_export():
    for model in (Event, Step, Run, Verdict, PatternPack):
        schema = model.model_json_schema()
        assert schema["type"] == "object" and schema["properties"]
