"""The ``chat`` format: immunity's interchange format for agent runs (JSON Lines, one run a line).

A record holds the run's OpenAI-style chat messages and its outcome; see :class:`ChatRecord` and
``docs/formats/chat.schema.json`` (generated from it). How messages become steps
(:func:`chat_steps`), shared with the tau-bench importer:

- an assistant message's tool calls are one step each (tool = the function name, arguments = the
  parsed JSON arguments), with the result of the ``tool`` message that answers it (matched by
  ``tool_call_id``, else by name). That is what a live adapter records: one ``tool_start`` +
  ``tool_end`` per call. Text that came with the calls is kept as ``data["thought"]`` of the first;
- an assistant message with text and no tool calls is one message step (a multi-agent log writes
  each agent's message as an assistant message with ``name`` = the agent);
- ``system`` / ``developer`` / ``user`` messages are the agent's input, not steps; the first user
  message is the task unless the record has ``task``;
- a tool result may carry ``return_code`` (shell tools) and ``is_error``; ``failure_step`` counts
  steps defined this way from 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from immunity.importers.base import (
    ImportedRun,
    ImportProblem,
    Record,
    as_text,
    bounded,
    describe,
    each_record,
    iter_records,
    message_step,
    new_run,
    parse_arguments,
    tool_step,
)
from immunity.models import Outcome, Step

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


# ---------------------------------------------------------------------------------------------
# the schema (docs/formats/chat.schema.json is generated from these models)
# ---------------------------------------------------------------------------------------------


class ChatFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="The tool's name.")
    arguments: str | dict[str, Any] | None = Field(
        default=None, description="The call's arguments: a JSON object, or a string holding one (as OpenAI sends).")


class ChatToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = Field(default=None, description="Matches the tool message's tool_call_id.")
    type: Literal["function"] = "function"
    function: ChatFunction


class ChatMessage(BaseModel):
    """One OpenAI chat message, plus ``return_code`` / ``is_error`` on tool results."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = Field(
        default=None, description="Text, or a list of content parts ({type: text, text: ...}).")
    name: str | None = Field(default=None, description="On assistant messages: the agent that spoke (multi-agent "
                             "logs). On tool messages: the tool's name.")
    tool_calls: list[ChatToolCall] | None = Field(default=None, description="On assistant messages: the calls made; "
                                                  "each is one step.")
    function_call: ChatFunction | None = Field(default=None, description="Legacy single function call (one step).")
    tool_call_id: str | None = Field(default=None, description="On tool messages: the call this result answers.")
    return_code: int | None = Field(default=None, description="On tool messages: the exit code of a shell command.")
    is_error: bool | None = Field(default=None, description="On tool messages: the call failed; its content is the "
                                  "error.")


class ChatRecord(BaseModel):
    """One run in the chat interchange format (one JSON object a line)."""

    model_config = ConfigDict(extra="allow", title="immunity chat run")

    id: str = Field(description="The run's id (used as the stored run id).")
    task_id: str | None = Field(default=None, description="The task the run attempted; runs of one task share it.")
    outcome: Literal["success", "failure", "unknown"] = Field(default="unknown", description="How the run ended.")
    domain: str | None = Field(default=None, description="The domain whose rules map its actions (coding, support, "
                               "research, data, ...); else the --domain option.")
    task: str | None = Field(default=None, description="What the agent was asked; default: the first user message.")
    framework: str | None = Field(default=None, description="The agent framework that produced the run.")
    agent: str | None = Field(default=None, description="The agent's name.")
    failure_step: int | None = Field(default=None, ge=0, description="The step (from 0) where the run went wrong, "
                                     "if labelled. Steps: one per tool call, one per assistant text message.")
    messages: list[ChatMessage] = Field(description="The run's messages in order.")
    metadata: dict[str, Any] | None = Field(default=None, description="Anything else worth keeping (kept bounded).")


def chat_schema() -> dict[str, Any]:
    """The JSON schema of a chat record (``docs/formats/chat.schema.json``)."""
    schema = ChatRecord.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = ("One agent run in immunity's chat interchange format: one JSON object a line "
                             "(JSON Lines). See docs/formats/README.md for how messages become steps.")
    return schema


def write_schema(path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(chat_schema(), indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# messages -> steps
# ---------------------------------------------------------------------------------------------


class ChatSteps:
    """The steps, task and warnings read from one list of chat messages."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.warnings: list[str] = []
        self.task: str | None = None
        self.system: str | None = None


def _tool_error(content: str | None, msg: dict[str, Any], error_prefixes: tuple[str, ...]) -> str | None:
    if msg.get("is_error") is True:
        return content or "error"
    if content and error_prefixes and content.lstrip().startswith(error_prefixes):
        return content
    return None


def chat_steps(messages: Any, *, error_prefixes: tuple[str, ...] = (), user_turns: bool = False) -> ChatSteps:
    """Steps from OpenAI-style chat messages (see the module docstring for the rules).

    ``error_prefixes``: tool results starting with one of these are errors (tau-bench's tools
    answer ``"Error: ..."``). ``user_turns``: every user message after the first (which is the
    task) becomes a message step with ``agent="user"`` (a customer's turns in a support
    conversation: what a live adapter reports as ``message(text, agent="user")``). Messages with an unknown role and tool results that answer no call
    are left out and named in ``warnings`` (``message 7: ...``).
    """
    out = ChatSteps()
    if not isinstance(messages, list):
        raise ValueError(f"'messages' must be a list, not {type(messages).__name__}")
    pending: dict[str, Step] = {}          # tool_call_id -> step still waiting for its result
    by_name: dict[str, list[Step]] = {}    # tool name -> steps waiting for a result
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            out.warnings.append(f"message {i}: not an object ({type(msg).__name__}); left out")
            continue
        role = msg.get("role")
        content = as_text(msg.get("content"))
        if role not in ROLES:
            out.warnings.append(f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)}); left out")
            continue
        if role in ("system", "developer"):
            if out.system is None and content:
                out.system = content
            continue
        if role == "user":
            if out.task is None and content:
                out.task = content
            elif user_turns and content and content.strip():
                out.steps.append(message_step(content, agent="user"))
            continue
        if role == "assistant":
            calls = list(msg.get("tool_calls") or [])
            if msg.get("function_call"):
                calls.append({"id": None, "function": msg["function_call"]})
            thought = content if calls else None
            agent = msg.get("name")
            made = 0
            for j, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not fn.get("name"):
                    out.warnings.append(f"message {i}: tool call {j} has no function name; left out")
                    continue
                args, problem = parse_arguments(fn.get("arguments"))
                if problem:
                    out.warnings.append(f"message {i}: tool call {j} ({fn['name']}): {problem}")
                call_id = call.get("id")
                step = tool_step(str(fn["name"]), args, agent=agent, tool_call_id=call_id,
                                 thought=thought if made == 0 else None, no_result=True)
                made += 1
                out.steps.append(step)
                if call_id:
                    pending[call_id] = step
                by_name.setdefault(step.tool or "", []).append(step)
            if not made and content and content.strip():
                out.steps.append(message_step(content, agent=agent, from_model=True))
            continue
        # a tool / function result
        call_id = msg.get("tool_call_id")
        found: Step | None = pending.pop(call_id, None) if call_id else None
        if found is None and not call_id:
            # no id: the oldest open call of that name, or the only open call if no name is given
            if msg.get("name"):
                waiting = by_name.get(str(msg["name"]), [])
            else:
                waiting = [s for lst in by_name.values() for s in lst]
                waiting = waiting if len(waiting) == 1 else []
            if waiting:
                found = waiting[0]
                if found.data.get("tool_call_id"):
                    pending.pop(found.data["tool_call_id"], None)
        if found is None:
            what = f"tool_call_id {call_id!r}" if call_id else f"tool {msg.get('name')!r}"
            out.warnings.append(f"message {i}: a {role} result for {what} that answers no earlier call; left out")
            continue
        step = found
        lst = by_name.get(step.tool or "", [])
        by_name[step.tool or ""] = [s for s in lst if s is not step]
        rc = msg.get("return_code")
        rc = int(rc) if isinstance(rc, int | float) and not isinstance(rc, bool) else None
        error = _tool_error(content, msg, error_prefixes)
        if rc not in (None, 0) and error is None:
            error = content or f"return code {rc}"
        filled = tool_step(step.tool or "", step.arguments, result=content, error=error, return_code=rc,
                           agent=step.agent, tool_call_id=step.data.get("tool_call_id"),
                           thought=step.data.get("thought"))
        step.result, step.error, step.return_code = filled.result, filled.error, filled.return_code
        step.data.pop("no_result", None)
        step.data.update({k: v for k, v in filled.data.items() if k not in ("tool_call_id", "thought")})
    return out


# ---------------------------------------------------------------------------------------------
# the importer
# ---------------------------------------------------------------------------------------------

_KNOWN = {"id", "task_id", "outcome", "domain", "task", "framework", "agent", "failure_step", "messages", "metadata"}


def record_to_run(value: Any, path: str, rec: Record, fmt: str = "chat") -> ImportedRun | ImportProblem:
    """One chat record as an imported run (or the problem that stops it)."""
    if not isinstance(value, dict):
        return ImportProblem(path, rec.where, f"expected a JSON object, got {type(value).__name__}")
    where = describe(rec, id=value.get("id"))
    if "messages" not in value:
        return ImportProblem(path, where, "no 'messages'")
    head = {k: value.get(k) for k in _KNOWN if k != "messages" and value.get(k) is not None}
    head["messages"] = []
    if "id" not in head:
        return ImportProblem(path, where, "no 'id'")
    if not isinstance(head["id"], str):
        head["id"] = str(head["id"])
    if "task_id" in head and not isinstance(head["task_id"], str):
        head["task_id"] = str(head["task_id"])
    try:
        ChatRecord.model_validate(head)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
        return ImportProblem(path, where, f"does not fit the chat schema: {errs}")
    try:
        parsed = chat_steps(value["messages"])
    except ValueError as exc:
        return ImportProblem(path, where, str(exc))
    extra = {k: v for k, v in value.items() if k not in _KNOWN}
    meta = dict(value.get("metadata") or {})
    if extra:
        meta["extra"] = extra
    if parsed.system:
        meta["system_prompt"] = parsed.system
    run = new_run(fmt, path, where, run_id=str(head["id"]), framework=value.get("framework") or fmt,
                  task=value.get("task") or parsed.task, task_id=head.get("task_id"), domain=value.get("domain"),
                  agent=value.get("agent"), outcome=Outcome.parse(head.get("outcome", "unknown")),
                  failure_step=value.get("failure_step"), metadata=bounded(meta))
    warnings = list(parsed.warnings)
    if rec.warning:
        warnings.append(rec.warning)
    fs = run.failure_step
    if fs is not None and fs >= len(parsed.steps):
        warnings.append(f"failure_step {fs} is past the last step ({len(parsed.steps)} steps); kept as given")
    return ImportedRun(run, parsed.steps, path, where, warnings)


class ChatImporter:
    name = "chat"
    default_domain: str | None = None
    #: one run per record, read through the shared JSON readers (see ``iter_runs(..., share=...)``)
    splits_records = True

    def detect(self, path: str, head: str) -> bool:
        first = head.lstrip()[:1]
        return first == "{" and '"messages"' in head and ('"outcome"' in head or '"id"' in head)

    def read(self, path: str) -> Iterator[ImportedRun | ImportProblem]:
        yield from each_record(path, iter_records(path), lambda rec: record_to_run(rec.value, path, rec))


def schema_path() -> str:
    """Where the committed schema lives in a source checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "..", "..", "docs", "formats", "chat.schema.json"))
