"""The benchmark's tasks: plain tools over a small environment, a ground truth, and a scripted
policy that plays the agent.

Everything here is framework-neutral. A framework driver (:mod:`immunity.bench.drivers`) turns
the task's tools into the framework's own tools and the policy into the framework's scripted model;
the policy only ever sees an :class:`Observation` (what the model was sent, in a neutral form), so
the only thing that differs between frameworks is the framework.

Each task is bound to one of immunity's installed domains (research, support, coding), so the
verifiers a trial meets are the ones a user of that domain gets: core's rules plus the domain's
checks. Nothing in a task reads immunity's verdicts; outcomes are judged from the environment's
ground truth only (:meth:`Task.judge`).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from immunity.interventions.quoting import QUOTE_TOOL

__all__ = [
    "Action",
    "Answer",
    "CodingTask",
    "FaultPlan",
    "FAULT_TYPES",
    "Observation",
    "ResearchTask",
    "ScriptedAgent",
    "SupportTask",
    "TASKS",
    "Task",
    "ToolCallAction",
    "ToolSpec",
    "compliance",
    "hint_features",
    "make_task",
    "plan_fault",
]

#: Fault types, in report order. ``none`` is the fault-free control.
FAULT_TYPES: tuple[str, ...] = ("none", "tool_error", "timeout", "wrong_output", "model_error", "loop",
                                "premature_done")
#: Tool faults hit the environment; model faults hit the model call; policy faults change the agent.
TOOL_FAULTS = ("tool_error", "timeout", "wrong_output")
POLICY_FAULTS = ("loop", "premature_done")

#: How many times a looping agent repeats the same call before it gives up and answers.
LOOP_REPEATS = 8

_IMMUNITY = re.compile(r"immunity", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
#: How a model reads a tool result as a failure: an error, an exception, a timeout (each framework
#: words a raised exception differently: "Error: ...", "An error occurred ...", or the bare message).
_FAILED = re.compile(r"\b(error|exception|traceback|timed out|timeout|invalid response|not found)\b", re.I)


#: A concrete next action in a hint (the compliance model, see :func:`hint_features`).
_ACTION = re.compile(
    r"\b(?:retry|retrying)\b|\b(?:call|run|re-run|rerun)\b[^.;:]{0,60}\bagain\b|\bstop (?:calling|repeating|running)\b"
    r"|\b(?:do not|don't) (?:finish|answer|submit)\b|\buse the results? you (?:already )?have\b"
    r"|\btake the next step\b|\brun the (?:tests|test suite|check)\b", re.I)
#: Hint-following probability, as a share of ``p``: a base, plus a part for naming the call, plus a
#: part for a concrete next action (a hint with both is followed with probability ``p``).
COMPLIANCE_BASE, COMPLIANCE_NAMES_CALL, COMPLIANCE_ACTION = 0.5, 0.25, 0.25


def hint_features(text: str, called: set[str]) -> dict[str, bool]:
    """What the scripted agent reads in a text from immunity: whether it names a tool the agent
    called in this run (``names_call``) and whether it asks for a concrete next action (``action``:
    retry, call/run ... again, stop calling/repeating, do not finish/answer/submit, use the
    results you have, take the next step, run the tests)."""
    return {"names_call": any(re.search(rf"\b{re.escape(name)}\b", text) for name in called),
            "action": bool(_ACTION.search(text))}


def compliance(text: str, called: set[str]) -> float:
    """The share of ``p`` with which the scripted agent follows ``text`` (``"content"`` compliance):
    0.5 for a generic hint, +0.25 if it names a call the agent made, +0.25 for a concrete next action."""
    f = hint_features(text, called)
    return COMPLIANCE_BASE + COMPLIANCE_NAMES_CALL * f["names_call"] + COMPLIANCE_ACTION * f["action"]


class ModelCallError(RuntimeError):
    """A provider error injected into a model call (what an overloaded API returns)."""


# ---------------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class ToolCallAction:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    text: str


Action = ToolCallAction | Answer


# ---------------------------------------------------------------------------------------------- what the model sees
@dataclass
class CallRecord:
    """One tool call the model made, with the result it was shown (``None``: no result yet)."""

    name: str
    args: dict[str, Any]
    result: str | None = None
    call_id: str | None = None

    @property
    def failed(self) -> bool:
        """An error or a block, as a model reads it from the result text."""
        if self.result is None:
            return True
        text = self.result.strip()
        return bool(_FAILED.search(text)) or bool(_IMMUNITY.search(text)) or text.lower().startswith("blocked")


@dataclass
class Observation:
    """What one model call was sent, framework-neutral: the user/system texts and the tool calls with
    the results shown. ``notes`` are texts from immunity (hints, block reasons) with a key that
    says whether the model saw them before."""

    texts: list[tuple[str, str]] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    quote_ids: set[str] = field(default_factory=set)

    def add_text(self, role: str, text: str, key: str) -> None:
        self.texts.append((role, text))
        if role != "assistant" and _IMMUNITY.search(text or ""):
            self.notes.append((f"text:{text}", text))

    def add_call(self, name: str, args: dict[str, Any], call_id: str | None) -> None:
        if name == QUOTE_TOOL:  # immunity's quoted tool output sent as tool-role data: not the model's call
            self.quote_ids.add(call_id or "")
            return
        self.calls.append(CallRecord(name, dict(args or {}), None, call_id))

    def add_result(self, text: str, call_id: str | None, seq: int) -> None:
        if (call_id or "") in self.quote_ids:  # (its words come as an [immunity] text: one note per hint)
            return
        target = None
        if call_id:
            target = next((c for c in self.calls if c.call_id == call_id and c.result is None), None)
        if target is None:
            target = next((c for c in self.calls if c.result is None), None)
        if target is not None:
            target.result = text
        if _IMMUNITY.search(text or ""):
            self.notes.append((f"result:{call_id or seq}", text))

    def ok(self, name: str, **match: Any) -> list[CallRecord]:
        """Calls of ``name`` (with these arguments) that succeeded, oldest first."""
        return [c for c in self.calls if c.name == name and not c.failed and
                all(c.args.get(k) == v for k, v in match.items())]

    def tried(self, name: str, **match: Any) -> list[CallRecord]:
        return [c for c in self.calls if c.name == name and all(c.args.get(k) == v for k, v in match.items())]

    def last_index(self, name: str, *, ok: bool = False) -> int:
        for i in range(len(self.calls) - 1, -1, -1):
            c = self.calls[i]
            if c.name == name and (not ok or not c.failed):
                return i
        return -1


# ---------------------------------------------------------------------------------------------- tasks
@dataclass
class ToolSpec:
    """A plain tool: name, description, parameters (name -> JSON type) and the function."""

    name: str
    description: str
    params: dict[str, str]
    fn: Callable[..., str]


class Task:
    """A small multi-step task with a checkable ground truth."""

    name = "task"
    domain = "none"
    #: the tools the fault-free procedure calls, in order (for drawing where a fault lands)
    procedure: list[str] = []
    #: tools whose output a wrong-output fault may falsify (reads)
    read_tools: tuple[str, ...] = ()
    #: runtime options for the domain (a user of the domain would set the same for this setting)
    runtime_options: dict[str, Any] = {}

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.prompt = ""
        self.system = ""

    # environment ----------------------------------------------------------------------------
    def tools(self) -> list[ToolSpec]:
        raise NotImplementedError

    def wrong(self, name: str, args: dict[str, Any], result: str) -> str:
        """A plausible but wrong output of ``name`` (for the wrong-output fault)."""
        raise NotImplementedError

    # agent ------------------------------------------------------------------------------------
    def next_action(self, obs: Observation, retry_failed: bool) -> Action:
        """The procedure's next step from what the model sees. ``retry_failed``: a call that failed
        or was blocked is not done yet (the agent was told to retry); otherwise an attempted call
        counts as done and the agent carries on with what it has."""
        raise NotImplementedError

    def finish(self, obs: Observation) -> Action:
        """Finish now with what the agent has (used by the premature-done and loop faults)."""
        raise NotImplementedError

    # judging ------------------------------------------------------------------------------------
    def judge(self, answer: str | None) -> bool:
        """Whether the task was done right, from the environment and the final answer only."""
        raise NotImplementedError

    @staticmethod
    def admits_failure(answer: str | None) -> bool:
        return bool(answer) and bool(re.search(r"\b(could not|couldn't|unable to|cannot|can't|failed to)\b",
                                               answer or "", re.I))


def _figures(text: str | None) -> set[str]:
    return {m.replace(",", "") for m in _NUMBER.findall(text or "")}


class ResearchTask(Task):
    """Look up two figures and add them: ``search_facts`` twice, ``calculator`` once, then answer.
    Domain ``research`` (its checks: unsupported figures, fabricated citations, search loops)."""

    name = "research"
    domain = "research"
    procedure = ["search_facts", "search_facts", "calculator"]
    read_tools = ("search_facts", "calculator")
    _CITIES = ["Arden", "Belmont", "Corvale", "Dunmore", "Eastwick", "Fairhaven", "Glenrock", "Harlow"]

    def __init__(self, rng: random.Random):
        super().__init__(rng)
        a, b = rng.sample(self._CITIES, 2)
        self.cities = [a, b]
        self.population = {a: rng.randrange(20_000, 900_000), b: rng.randrange(20_000, 900_000)}
        self.truth = self.population[a] + self.population[b]
        self.system = "You answer questions with the search_facts and calculator tools."
        self.prompt = f"What is the combined population of {a} and {b}? Use the tools and give the number."

    def tools(self) -> list[ToolSpec]:
        def search_facts(query: str) -> str:
            city = next((c for c in self.population if c.lower() in query.lower()), None)
            if city is None:
                return "No results."
            return f"{city} (city): population {self.population[city]} (2024 census)."

        def calculator(expression: str) -> str:
            if not re.fullmatch(r"[\d\s+\-*/().]+", expression):
                raise ValueError(f"cannot evaluate {expression!r}")
            terms = [int(t) for t in re.findall(r"\d+", expression)]
            return f"{expression} = {sum(terms)}"

        return [ToolSpec("search_facts", "Search reference facts about a place.", {"query": "string"}, search_facts),
                ToolSpec("calculator", "Add numbers: an expression like '12 + 30'.", {"expression": "string"},
                         calculator)]

    def wrong(self, name: str, args: dict[str, Any], result: str) -> str:
        nums = _NUMBER.findall(result)
        if not nums:
            return result
        old = nums[-1] if name == "calculator" else nums[0]
        value = int(old.replace(",", ""))
        new = value + max(1000, value // 10) * self.rng.choice([-1, 1])
        return result.replace(old, str(new))

    def _known(self, obs: Observation) -> dict[str, int]:
        known: dict[str, int] = {}
        for c in obs.ok("search_facts"):
            m = re.search(r"(\w+) \(city\): population (\d+)", c.result or "")
            if m:
                known[m.group(1)] = int(m.group(2))
        return known

    def next_action(self, obs: Observation, retry_failed: bool) -> Action:
        known = self._known(obs)
        for city in self.cities:
            done = city in known or (not retry_failed and any(city in str(c.args.get("query")) for c in
                                                               obs.tried("search_facts")))
            if not done:
                return ToolCallAction("search_facts", {"query": f"population of {city}"})
        if len(known) == 2:
            expr = " + ".join(str(known[c]) for c in self.cities)
            if not obs.ok("calculator", expression=expr) and (retry_failed or not obs.tried("calculator",
                                                                                             expression=expr)):
                return ToolCallAction("calculator", {"expression": expr})
        return self.finish(obs)

    def finish(self, obs: Observation) -> Action:
        known = self._known(obs)
        calc = [c for c in obs.ok("calculator") if _NUMBER.findall(c.result or "")]
        if len(known) == 2 and calc:
            total = _NUMBER.findall(calc[-1].result or "")[-1]
        else:
            # a missing figure is estimated from the one it has (what a hurried agent does)
            base = next(iter(known.values()), 250_000)
            total = str(sum(known.get(c, base) for c in self.cities))
        a, b = self.cities
        return Answer(f"The combined population of {a} and {b} is {total}.")

    def judge(self, answer: str | None) -> bool:
        return str(self.truth) in _figures(answer)


class SupportTask(Task):
    """Refund a customer's order: ``get_order_details``, then ``refund`` the order's total, then
    tell the customer. Domain ``support`` (its checks: a change needs a lookup first, arguments
    must match the lookups, a reply must not claim a change no tool made). The environment records
    every refund, so a missing, wrong or double refund is seen."""

    name = "support"
    domain = "support"
    procedure = ["get_order_details", "refund"]
    read_tools = ("get_order_details",)
    # The customer asks in writing and nobody is there to say "yes" again, so the confirmation
    # check (which waits for an explicit yes in the conversation) is off, as it would be for an
    # agent that acts on written requests.
    runtime_options = {"support": {"require_confirmation": False}}

    def __init__(self, rng: random.Random):
        super().__init__(rng)
        self.order_id = f"A-{rng.randrange(100, 999)}"
        self.total = round(rng.randrange(1500, 30000) / 100, 2)
        self.refunds: list[tuple[str, float]] = []
        self.system = "You are a support agent. Look orders up before changing them."
        self.prompt = f"My order {self.order_id} arrived broken. Please refund it in full."

    def tools(self) -> list[ToolSpec]:
        def get_order_details(order_id: str) -> str:
            if order_id != self.order_id:
                return "Error: order not found"
            return json.dumps({"order_id": order_id, "status": "delivered", "total": self.total,
                               "user_id": "u_1042"})

        def refund(order_id: str, amount: float) -> str:
            if order_id != self.order_id:
                return "Error: order not found"
            self.refunds.append((order_id, round(float(amount), 2)))
            return f"Refund of {float(amount):.2f} issued for order {order_id}."

        return [ToolSpec("get_order_details", "Look up an order by id.", {"order_id": "string"}, get_order_details),
                ToolSpec("refund", "Refund an amount on an order.", {"order_id": "string", "amount": "number"},
                         refund)]

    def wrong(self, name: str, args: dict[str, Any], result: str) -> str:
        data = json.loads(result)
        data["total"] = round(self.total * self.rng.choice([0.5, 0.8, 1.25]), 2)
        return json.dumps(data)

    def _total(self, obs: Observation) -> float | None:
        for c in reversed(obs.ok("get_order_details")):
            try:
                return float(json.loads(c.result or "")["total"])
            except (ValueError, KeyError, TypeError):
                continue
        return None

    def next_action(self, obs: Observation, retry_failed: bool) -> Action:
        total = self._total(obs)
        if total is None and (retry_failed or not obs.tried("get_order_details")):
            return ToolCallAction("get_order_details", {"order_id": self.order_id})
        if not obs.ok("refund") and (retry_failed or not obs.tried("refund")):
            # with no total it refunds a guess rather than stopping (a hurried agent)
            return ToolCallAction("refund", {"order_id": self.order_id, "amount": total if total is not None else 50.0})
        return self.finish(obs)

    def finish(self, obs: Observation) -> Action:
        done = obs.ok("refund")
        amount = done[-1].args.get("amount") if done else self._total(obs)
        return Answer(f"I have refunded {float(amount if amount is not None else 50.0):.2f} for order "
                      f"{self.order_id}.")

    def judge(self, answer: str | None) -> bool:
        return self.refunds == [(self.order_id, self.total)] and f"{self.total:.2f}" in (answer or "")


class CodingTask(Task):
    """Fix two bugs so the tests pass, then submit: ``run_tests``, ``read_file``, ``edit_file`` per
    bug, ``run_tests``, ``submit``. Domain ``coding`` (its checks: unverified finish, repeated
    failing command, out-of-scope edits). The procedure checks its own work (it re-runs the tests),
    so it recovers from some faults by itself."""

    name = "coding"
    domain = "coding"
    procedure = ["run_tests", "read_file", "edit_file", "edit_file", "run_tests", "submit"]
    read_tools = ("run_tests", "read_file")
    _RIGHT = {"add": "a + b", "sub": "a - b", "mul": "a * b", "biggest": "max(a, b)"}
    _WRONG = {"add": ["a - b", "a + a"], "sub": ["b - a", "a + b"], "mul": ["a + b", "a * a"],
              "biggest": ["min(a, b)", "max(a, a)"]}

    def __init__(self, rng: random.Random):
        super().__init__(rng)
        self.bugs = sorted(rng.sample(sorted(self._RIGHT), 2))
        self.code = {f: (rng.choice(self._WRONG[f]) if f in self.bugs else e) for f, e in self._RIGHT.items()}
        self.submissions: list[dict[str, str]] = []
        self.system = "You are a coding agent. Fix the code, run the tests, then submit."
        self.prompt = "The tests in test_calc.py fail. Fix calc.py so that they pass, then submit."

    @staticmethod
    def line(function: str, expression: str | None) -> str:
        return f"def {function}(a, b):\n    return {expression}"

    def source(self, code: dict[str, str] | None = None) -> str:
        code = code or self.code
        return "\n".join(self.line(f, e) + "\n" for f, e in code.items())

    def failing(self, code: dict[str, str] | None = None) -> list[str]:
        code = code or self.code
        return [f for f, e in code.items() if e != self._RIGHT[f]]

    def tools(self) -> list[ToolSpec]:
        def run_tests() -> str:
            bad = self.failing()
            if not bad:
                return f"{len(self.code)} passed"
            lines = [f"FAILED test_calc.py::test_{f}" for f in bad]
            return "\n".join(lines + [f"{len(bad)} failed, {len(self.code) - len(bad)} passed"])

        def read_file(path: str) -> str:
            if path != "calc.py":
                return f"Error: no such file {path}"
            return self.source()

        def edit_file(path: str, old: str, new: str) -> str:
            if path != "calc.py":
                return f"Error: no such file {path}"
            source = self.source()
            if not old or old not in source:
                return f"Error: the text to replace was not found in {path}"
            self.code = self._read_code(source.replace(old, new, 1))
            return f"Edited {path}."

        def submit() -> str:
            self.submissions.append(dict(self.code))
            return "Submitted."

        return [ToolSpec("run_tests", "Run the test suite.", {}, run_tests),
                ToolSpec("read_file", "Read a file.", {"path": "string"}, read_file),
                ToolSpec("edit_file", "Replace the text old with new in a file.",
                         {"path": "string", "old": "string", "new": "string"}, edit_file),
                ToolSpec("submit", "Submit the work.", {}, submit)]

    def wrong(self, name: str, args: dict[str, Any], result: str) -> str:
        if name == "run_tests":
            if "failed" in result:  # a flaky run that hides the failures
                return f"{len(self.code)} passed"
            victim = self.rng.choice(sorted(self.code))
            return f"FAILED test_calc.py::test_{victim}\n1 failed, {len(self.code) - 1} passed"
        # a stale read: one of the bugs does not show
        shown = dict(self.code)
        bad = self.failing()
        if bad:
            victim = self.rng.choice(bad)
            shown[victim] = self._RIGHT[victim]
        return self.source(shown)

    # the agent ---------------------------------------------------------------------------------
    def _read_code(self, text: str | None) -> dict[str, str]:
        return dict(re.findall(r"def (\w+)\(a, b\):\n    return ([^\n]+)", text or ""))

    def next_action(self, obs: Observation, retry_failed: bool) -> Action:
        calls = obs.calls
        if len(calls) >= 40:
            return Answer("I could not make the tests pass.")
        done = (lambda c: not c.failed) if retry_failed else (lambda c: True)
        tests = [i for i, c in enumerate(calls) if c.name == "run_tests" and done(c)]
        if not tests:
            return ToolCallAction("run_tests", {})
        last_test = tests[-1]
        test_out = calls[last_test].result or ""
        passed = not calls[last_test].failed and "failed" not in test_out and "passed" in test_out
        failing = re.findall(r"test_(\w+)", test_out) if not calls[last_test].failed else None
        reads = [i for i, c in enumerate(calls) if c.name == "read_file" and done(c) and i > last_test]
        edits_after_test = [c for c in calls[last_test + 1:] if c.name == "edit_file" and done(c)]
        submits_after_test = [c for c in calls[last_test + 1:] if c.name == "submit" and done(c)]
        if passed:
            if edits_after_test:
                return ToolCallAction("run_tests", {})
            if not submits_after_test:
                return ToolCallAction("submit", {})
            return Answer("Fixed calc.py: all tests pass, and the fix is submitted.")
        if not reads:
            return ToolCallAction("read_file", {"path": "calc.py"})
        content = self._read_code(calls[reads[-1]].result if not calls[reads[-1]].failed else "")
        edited = {c.args.get("old") for c in calls[reads[-1] + 1:] if c.name == "edit_file" and done(c)}
        targets = failing if failing else list(self._RIGHT)
        for f in targets:
            seen = content.get(f)
            old = self.line(f, seen)
            if seen is not None and seen != self._RIGHT.get(f) and old not in edited:
                return ToolCallAction("edit_file", {"path": "calc.py", "old": old, "new": self.line(f, self._RIGHT[f])})
        if edits_after_test:
            return ToolCallAction("run_tests", {})
        rechecks = sum(1 for c in calls if c.name == "run_tests")
        if rechecks < 4:
            return ToolCallAction("run_tests", {})
        return Answer("I could not make the tests pass.")

    def finish(self, obs: Observation) -> Action:
        if not any(c.name == "submit" for c in obs.calls):
            return ToolCallAction("submit", {})
        return Answer("Fixed calc.py: all tests pass, and the fix is submitted.")

    def judge(self, answer: str | None) -> bool:
        return bool(self.submissions) and not self.failing(self.submissions[-1]) and \
            not self.admits_failure(answer) and bool(answer)


TASKS: dict[str, type[Task]] = {"research": ResearchTask, "support": SupportTask, "coding": CodingTask}


def make_task(name: str, seed: int) -> Task:
    return TASKS[name](random.Random(f"task:{name}:{seed}"))


# ---------------------------------------------------------------------------------------------- faults
@dataclass(frozen=True)
class FaultPlan:
    """Where one trial's fault lands. Drawn from the trial's seed only, so the same seed gives the
    same fault with and without immunity and in every framework."""

    kind: str
    tool: str | None = None        # tool faults: the tool ...
    occurrence: int = 0            # ... and which of its executions (0 = the first)
    model_call: int | None = None  # model_error: which model call raises (0 = the first)
    after: int = 0                 # policy faults: after how many successful tool calls the agent goes wrong

    def describe(self) -> str:
        if self.kind in TOOL_FAULTS:
            return f"{self.kind} on {self.tool} #{self.occurrence + 1}"
        if self.kind == "model_error":
            return f"model_error on model call #{(self.model_call or 0) + 1}"
        if self.kind in POLICY_FAULTS:
            return f"{self.kind} after {self.after} tool call(s)"
        return "none"


def plan_fault(task: Task, kind: str, seed: int) -> FaultPlan:
    rng = random.Random(f"fault:{task.name}:{kind}:{seed}")
    proc = task.procedure
    if kind in ("tool_error", "timeout"):
        i = rng.randrange(len(proc))
        return FaultPlan(kind, tool=proc[i], occurrence=proc[:i].count(proc[i]))
    if kind == "wrong_output":
        choices = [i for i, t in enumerate(proc) if t in task.read_tools]
        i = rng.choice(choices)
        return FaultPlan(kind, tool=proc[i], occurrence=proc[:i].count(proc[i]))
    if kind == "model_error":
        return FaultPlan(kind, model_call=rng.randrange(len(proc) + 1))
    if kind == "loop":
        return FaultPlan(kind, after=rng.randrange(1, len(proc) + 1))
    if kind == "premature_done":
        # early enough that finishing now is wrong
        last = {"research": 1, "support": 1, "coding": 3}.get(task.name, len(proc) - 1)
        return FaultPlan(kind, after=rng.randrange(1, last + 1))
    return FaultPlan("none")


class FaultyTools:
    """The task's tools with the trial's tool fault injected. Records when the fault fired."""

    def __init__(self, task: Task, plan: FaultPlan):
        self.task, self.plan = task, plan
        self.counts: dict[str, int] = {}
        self.fired_at: float | None = None
        self.executions: list[tuple[str, dict[str, Any]]] = []

    def wrap(self, spec: ToolSpec) -> Callable[..., str]:
        def call(**kwargs: Any) -> str:
            n = self.counts.get(spec.name, 0)
            self.counts[spec.name] = n + 1
            self.executions.append((spec.name, dict(kwargs)))
            hit = self.plan.kind in TOOL_FAULTS and self.plan.tool == spec.name and self.plan.occurrence == n
            if hit and self.fired_at is None:
                self.fired_at = time.time()
                if self.plan.kind == "tool_error":
                    raise RuntimeError(f"{spec.name}: the upstream service returned an invalid response")
                if self.plan.kind == "timeout":
                    raise TimeoutError(f"{spec.name} timed out after 30 seconds")
            result = spec.fn(**kwargs)
            if hit and self.plan.kind == "wrong_output":
                result = self.task.wrong(spec.name, kwargs, result)
            return result

        call.__name__ = spec.name
        call.__doc__ = spec.description
        return call


# ---------------------------------------------------------------------------------------------- the agent
class ScriptedAgent:
    """The scripted agent: the task's procedure, the trial's policy fault, and the hint-following
    assumption.

    - Each text from immunity the model sees for the first time (a hint in the prompt, a block
      reason as a tool result) is *followed* with probability ``p`` times the text's
      :func:`compliance` (``compliance="content"``, the default: 0.5 for a generic text, up to 1 for
      one that names a call the agent made and asks for a concrete next action; ``"flat"``: 1),
      decided by a coin from the trial's own stream, so the same seed flips the same coins in
      every arm. Following means the
      agent takes the corrective action from then on: it drops its faulty behaviour (stops
      looping, stops finishing early) and retries calls that failed or were blocked.
    - Without a followed hint, the agent does not retry a failed call; it carries on with what it
      has (estimating what it lacks).
    - ``model_error``: the chosen model call raises a provider error (once).
    """

    def __init__(self, task: Task, plan: FaultPlan, p: float, seed: int, *, compliance: str = "content"):
        if compliance not in ("content", "flat"):
            raise ValueError(f"compliance must be 'content' or 'flat', not {compliance!r}")
        self.task, self.plan, self.p = task, plan, p
        self.compliance = compliance
        #: every text from immunity seen, with whether it was followed
        self.hints: list[tuple[str, bool]] = []
        self.coins = random.Random(f"follow:{task.name}:{plan.kind}:{seed}")
        self.model_calls = 0
        self.corrected = False
        self.mode = plan.kind if plan.kind in POLICY_FAULTS else None
        self.repeats = 0
        self.seen_notes: set[str] = set()
        self.hints_seen = 0
        self.hints_followed = 0
        self.fault_at: float | None = None
        self.actions: list[Action] = []

    def __call__(self, obs: Observation) -> Action:
        index = self.model_calls
        self.model_calls += 1
        if self.plan.kind == "model_error" and index == self.plan.model_call and self.fault_at is None:
            self.fault_at = time.time()
            raise ModelCallError("Error code: 503 - the model is overloaded, please retry later")
        for key, note in obs.notes:
            if key in self.seen_notes:
                continue
            self.seen_notes.add(key)
            self.hints_seen += 1
            share = 1.0 if self.compliance == "flat" else compliance(note, {c.name for c in obs.calls})
            followed = self.coins.random() < self.p * share
            self.hints.append((note, followed))
            if followed:
                self.hints_followed += 1
                self.corrected = True
                self.mode = None
        action = self._decide(obs)
        self.actions.append(action)
        return action

    def _decide(self, obs: Observation) -> Action:
        good = [c for c in obs.calls if not c.failed]
        if self.mode == "loop" and len(good) >= self.plan.after:
            if self.fault_at is None:
                self.fault_at = time.time()
            if self.repeats < LOOP_REPEATS:
                self.repeats += 1
                last = good[self.plan.after - 1]
                return ToolCallAction(last.name, dict(last.args))
            self.mode = "gave_up"
        if self.mode == "gave_up":
            return self.task.finish(obs)
        if self.mode == "premature_done" and len(good) >= self.plan.after:
            if self.fault_at is None:
                self.fault_at = time.time()
            return self.task.finish(obs)
        return self.task.next_action(obs, retry_failed=self.corrected)
