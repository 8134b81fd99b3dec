"""The failure taxonomy: the error classes verdicts, patterns and interventions speak of.

Merged from the seed systems (AIRAS's antigen classes, AgentRaft's verifier error types, Agent SRE's
signals, drift's checks) and the MAST / Who&When failure studies. Domains may add classes with
:func:`register_class`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorClass:
    name: str
    definition: str
    source: str
    hint: str


_CLASSES: dict[str, ErrorClass] = {}


def register_class(name: str, definition: str, source: str, hint: str) -> ErrorClass:
    """Add (or replace) an error class; returns it."""
    cls = ErrorClass(name, definition, source, hint)
    _CLASSES[name] = cls
    return cls


def get(name: str | None) -> ErrorClass | None:
    return _CLASSES.get(name or "")


def hint(name: str | None, default: str = "Something went wrong in the last step.") -> str:
    """The class's hint, or ``default`` for an unknown class."""
    cls = _CLASSES.get(name or "")
    return cls.hint if cls else default


def all_classes() -> dict[str, ErrorClass]:
    return dict(_CLASSES)


LOOP = "loop"
NO_PROGRESS = "no_progress"
REPEATED_TOOL_ERROR = "repeated_tool_error"
PREMATURE_DONE = "premature_done"
WRONG_TOOL = "wrong_tool"
WRONG_PARAMETERS = "wrong_parameters"
MISREAD_OUTPUT = "misread_output"
RETRIEVAL_FAILURE = "retrieval_failure"
GOAL_DRIFT = "goal_drift"
SCOPE_CREEP = "scope_creep"
CONTRADICTION = "contradiction"
HALLUCINATED_STATE = "hallucinated_state"
CLEANUP_SPIRAL = "cleanup_spiral"
DEPENDENCY_CASCADE = "dependency_cascade"
RUNAWAY_COST = "runaway_cost"
INCOMPLETE = "incomplete"
UNSAFE_ACTION = "unsafe_action"
POLICY_VIOLATION = "policy_violation"
TOOL_ERROR = "tool_error"

for _name, _definition, _source, _hint in [
    (LOOP, "The agent repeats the same or nearly the same action (or alternates between two) without new results.",
     "AIRAS LOOP; AgentRaft loop fault; MAST 'step repetition'; drift loop check",
     "You are repeating the same action and getting the same result. Stop and try a different approach."),
    (NO_PROGRESS, "Several steps in a row return nothing new (polling, re-reading, re-searching).",
     "Agent SRE no-progress SLI; PEERS §8.1",
     "The last steps produced no new information. Change strategy or conclude with what you have."),
    (REPEATED_TOOL_ERROR, "The same tool error (after normalising specifics) happens again.",
     "AIRAS error-repeat predicate; AgentRaft tool-error fault",
     "This call failed the same way before. Read the error message and change the arguments or the tool."),
    (PREMATURE_DONE, "The agent declares the task done without evidence: no passing check after its last change, "
     "or open obligations left.", "AIRAS PREMATURE_TERMINATION; MAST 'premature termination'; drift completion check",
     "Do not finish yet: verify your last change (run the tests or check the result) first."),
    (WRONG_TOOL, "A tool that cannot achieve the current sub-goal is chosen.", "AIRAS WRONG_TOOL; MAST",
     "This tool does not fit the current sub-goal. Re-read the task and pick the tool that does."),
    (WRONG_PARAMETERS, "The right tool is called with arguments that are invalid or contradict known facts.",
     "AIRAS WRONG_PARAMS; tau-bench wrong-argument failures",
     "Check the arguments against what the tools returned earlier before calling again."),
    (MISREAD_OUTPUT, "A tool result is misinterpreted (an error read as success, a value misquoted).",
     "MAST 'ignored/misread output'; AgentRaft wrong-output fault",
     "Re-read the last tool output carefully; it may not say what you assumed."),
    (RETRIEVAL_FAILURE, "Searches return nothing relevant and the agent goes on as if they had.",
     "AIRAS RETRIEVAL_FAILURE", "Your searches found nothing relevant. Reformulate the query or change the source."),
    (GOAL_DRIFT, "The agent works on something other than the task it was given.",
     "AgentRaft GOAL_DRIFT; MAST 'task derailment'", "Re-read the original task; your last steps drifted from it."),
    (SCOPE_CREEP, "The agent changes things outside the task's scope.", "AgentRaft SCOPE_CREEP",
     "Only change what the task needs; revert changes outside its scope."),
    (CONTRADICTION, "A step contradicts an earlier verified step or a tool's output.", "AgentRaft CONTRADICTION",
     "This contradicts what was established earlier. Reconcile before going on."),
    (HALLUCINATED_STATE, "The agent refers to files, records or results that do not exist.",
     "AgentRaft HALLUCINATION; MAST", "Verify that what you refer to exists before relying on it."),
    (CLEANUP_SPIRAL, "Repeated edits to undo or fix the agent's own previous edits.", "hugfeature drift",
     "You keep fixing your own edits. Step back, restore a known-good state, and make one deliberate change."),
    (DEPENDENCY_CASCADE, "An early failure propagates through later steps that depend on it.", "Who&When; MAST",
     "An earlier step failed and later steps depend on it. Fix that step first."),
    (RUNAWAY_COST, "Tokens, cost or steps grow past the budget without the task converging.",
     "Agent SRE cost SLO; PEERS §8.2", "You are close to the budget. Finish with the best answer you have."),
    (INCOMPLETE, "The answer leaves parts of the task undone.", "AgentRaft INCOMPLETE",
     "Part of the task is still open. Address every part before finishing."),
    (UNSAFE_ACTION, "A destructive or irreversible action (rm -rf, DROP TABLE, force push).", "domain checks",
     "This action is destructive and irreversible. Use a safer alternative or ask first."),
    (POLICY_VIOLATION, "A state-changing action without the checks a policy requires before it.",
     "tau-bench policy; support domain", "Follow the policy: do the required lookups and confirmations first."),
    (TOOL_ERROR, "A tool call failed.", "all seeds", "The tool call failed. Read the error and fix the call."),
]:
    register_class(_name, _definition, _source, _hint)
