"""The same agents, written the way each framework's public docs write them, behave the same under
``immunity.protect`` in the four frameworks.

Each framework gets a kit that builds, from the framework's own public classes only (no helper of
this project except the adapter's scripted model, since there is no network):

- one agent with the tools ``lookup`` and ``delete_records``;
- two agents that share ``lookup``, the first handing over to the second the framework's way
  (LangGraph: a handoff tool returning ``Command(goto=..., graph=Command.PARENT)`` between two
  ``create_react_agent`` agents; LlamaIndex: an ``AgentWorkflow`` with ``can_handoff_to``; OpenAI
  Agents: ``handoffs=[...]``; CrewAI: a sequential crew whose second task belongs to the second
  agent);

and runs them plainly and streamed. The observable behaviour asserted is the same for all four:
one run per call with a ``<framework>-`` run id, every step carries its agent, a handoff is one
DELEGATE step carrying its target, the shared tool is recorded once per call, a model error is
retried, a rollback resumes the run to its answer (CrewAI: inside the same ``kickoff()``), and a
stop ends the run with a final answer. Where docs/adapters.md documents that a framework cannot do
one of these, the case is an expected failure carrying that reason.
"""

import asyncio
import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from immunity import (
    ActionType,
    EventKind,
    Intervention,
    InterventionKind,
    Recovery,
    RecoveryKind,
    Runtime,
    Severity,
    Verdict,
    hookimpl,
)

FRAMEWORKS = {"langgraph": ("langgraph", "immunity_langgraph"), "llamaindex": ("llama_index.core", "immunity_llamaindex"),
              "openai_agents": ("agents", "immunity_openai_agents"), "crewai": ("crewai", "immunity_crewai")}
STOP_TEXT = "deleting records is not allowed; this run ends here"
ROLLBACK_HINT = "[immunity] That value was corrupt; look the key up again with the key 'a'."

# a turn of a scripted model, framework-neutral:
#   ("call", tool, args) | ("handoff", agent) | "final answer" | a callable returning one (it may raise)
Turn = Any


class Rules:
    """The checks a user would add: a corrupt lookup result asks for a rollback; deleting records
    stops the run."""

    @hookimpl
    def immunity_verify(self, event: Any) -> Verdict | None:
        if event.kind == EventKind.TOOL_END and event.tool == "lookup" and "CORRUPT" in str(event.result or ""):
            return Verdict(ok=False, error_class="hallucinated_state", severity=Severity.ERROR,
                           message="the lookup returned a corrupt value", hint=ROLLBACK_HINT)
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Verdict(ok=False, error_class="unsafe_action", severity=Severity.ERROR, message="no deletes")
        return None

    @hookimpl(tryfirst=True)
    def immunity_intervene(self, event: Any) -> Intervention | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Intervention(kind=InterventionKind.STOP, text=STOP_TEXT)
        return None

    @hookimpl(tryfirst=True)
    def immunity_recover(self, event: Any, verdicts: list[Verdict]) -> Recovery | None:
        if any(v.error_class == "hallucinated_state" for v in verdicts):
            return Recovery(kind=RecoveryKind.ROLLBACK, reason="corrupt value", hint=ROLLBACK_HINT)
        return None


class Env:
    """What the tools did, shared by every kit."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def lookup(self, key: str) -> str:
        self.calls.append(("lookup", key))
        return "CORRUPT" if key == "bad" else f"value-of-{key}"

    def delete_records(self, table: str) -> str:
        self.calls.append(("delete_records", table))
        return f"deleted every row of {table}"


def _script(turns: list[Turn], convert: Callable[[Turn], Any]) -> list[Any]:
    """The scripted model's turns: a neutral callable turn ``f()`` is decided when the model is
    called (and may raise); anything else is converted now."""
    out: list[Any] = []
    for t in turns:
        if callable(t):
            out.append(lambda *_, _t=t: convert(_t()))
        else:
            out.append(convert(t))
    return out


def flaky(exc: BaseException, turns: list[Turn]) -> list[Turn]:
    """A model whose first call raises ``exc`` and whose later calls play ``turns``, decided by the
    number of calls (so it plays the same whether a raising turn uses up its place or not)."""
    count = [0]

    def turn() -> Turn:
        count[0] += 1
        if count[0] == 1:
            raise exc
        return turns[min(count[0] - 2, len(turns) - 1)]

    return [turn] * (len(turns) + 2)


# ---------------------------------------------------------------------------------------------- kits
class LangGraphKit:
    """As LangGraph's docs write agents: ``@tool`` functions, ``create_react_agent`` with a
    checkpointer and a thread id; multi-agent: a handoff tool returning
    ``Command(goto=agent, graph=Command.PARENT)``, the agents as nodes of a parent ``StateGraph``."""

    def __init__(self, env: Env):
        from langchain_core.tools import tool

        self.env = env

        @tool
        def lookup(key: str) -> str:
            """Look up the value stored under a key."""
            return env.lookup(key)

        @tool
        def delete_records(table: str) -> str:
            """Delete every record of a table."""
            return env.delete_records(table)

        self.tools = [lookup, delete_records]

    @staticmethod
    def model(turns: list[Turn]) -> Any:
        from immunity_langgraph.testing import ScriptedChatModel, tool_call

        def convert(t: Turn) -> Any:
            if isinstance(t, tuple) and t[0] == "call":
                return tool_call(t[1], **t[2])
            if isinstance(t, tuple) and t[0] == "handoff":
                return tool_call(f"transfer_to_{t[1]}")
            return t

        return ScriptedChatModel(script=_script(turns, convert))

    @staticmethod
    def _react(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # create_react_agent's move to langchain.agents
            from langgraph.prebuilt import create_react_agent

            return create_react_agent(*args, **kwargs)

    def single(self, turns: list[Turn]) -> Any:
        from langgraph.checkpoint.memory import InMemorySaver

        return self._react(self.model(turns), self.tools, checkpointer=InMemorySaver())

    def two_agents(self, first: list[Turn], second: list[Turn]) -> Any:
        from typing import Annotated

        from langchain_core.tools import InjectedToolCallId, tool
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.graph import START, MessagesState, StateGraph
        from langgraph.prebuilt import InjectedState
        from langgraph.types import Command

        def create_handoff_tool(agent_name: str) -> Any:
            name = f"transfer_to_{agent_name}"

            @tool(name, description=f"Hand the conversation over to {agent_name}.")
            def handoff_tool(state: Annotated[MessagesState, InjectedState],
                             tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
                message = {"role": "tool", "content": f"Successfully transferred to {agent_name}", "name": name,
                           "tool_call_id": tool_call_id}
                return Command(goto=agent_name, update={"messages": state["messages"] + [message]},
                               graph=Command.PARENT)

            return handoff_tool

        lookup = self.tools[0]
        researcher = self._react(self.model(first), [lookup, create_handoff_tool("writer")], name="researcher")
        writer = self._react(self.model(second), [lookup], name="writer")
        return (StateGraph(MessagesState).add_node(researcher, destinations=("writer",)).add_node(writer)
                .add_edge(START, "researcher").compile(checkpointer=InMemorySaver()))

    def run(self, target: Any, prompt: str, *, stream: bool = False) -> str:
        config = {"configurable": {"thread_id": "parity"}}
        inputs = {"messages": [{"role": "user", "content": prompt}]}
        if stream:
            last: Any = None
            for chunk in target.stream(inputs, config, stream_mode="values"):
                last = chunk
            return str(last["messages"][-1].content)
        return str(target.invoke(inputs, config)["messages"][-1].content)


class LlamaIndexKit:
    """As LlamaIndex's docs write agents: plain functions as tools, ``FunctionAgent``;
    multi-agent: ``AgentWorkflow(agents=[...], root_agent=...)`` with ``can_handoff_to``."""

    def __init__(self, env: Env):
        def lookup(key: str) -> str:
            """Look up the value stored under a key."""
            return env.lookup(key)

        def delete_records(table: str) -> str:
            """Delete every record of a table."""
            return env.delete_records(table)

        self.tools = [lookup, delete_records]

    @staticmethod
    def model(turns: list[Turn]) -> Any:
        from immunity_llamaindex.testing import ScriptedLLM, tool_call

        def convert(t: Turn) -> Any:
            if isinstance(t, tuple) and t[0] == "call":
                return tool_call(t[1], t[2])
            if isinstance(t, tuple) and t[0] == "handoff":
                return tool_call("handoff", {"to_agent": t[1], "reason": "the writer answers"})
            return t

        return ScriptedLLM(_script(turns, convert))

    def single(self, turns: list[Turn]) -> Any:
        from llama_index.core.agent.workflow import FunctionAgent

        return FunctionAgent(name="researcher", description="Looks things up.", tools=self.tools,
                             llm=self.model(turns), system_prompt="You look things up.")

    def two_agents(self, first: list[Turn], second: list[Turn]) -> Any:
        from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent

        researcher = FunctionAgent(name="researcher", description="Looks things up.", tools=self.tools[:1],
                                   llm=self.model(first), can_handoff_to=["writer"])
        writer = FunctionAgent(name="writer", description="Writes the answer.", tools=self.tools[:1],
                               llm=self.model(second))
        return AgentWorkflow(agents=[researcher, writer], root_agent="researcher")

    def run(self, target: Any, prompt: str, *, stream: bool = False) -> str:
        async def go() -> str:
            handler = target.run(user_msg=prompt)
            if stream:
                async for _event in handler.stream_events():
                    pass
            return str(await handler)

        return asyncio.run(go())


class OpenAIAgentsKit:
    """As the OpenAI Agents SDK's docs write agents: ``@function_tool``, ``Agent``, ``Runner``;
    multi-agent: ``handoffs=[...]``."""

    def __init__(self, env: Env):
        from agents import function_tool

        @function_tool
        def lookup(key: str) -> str:
            """Look up the value stored under a key."""
            return env.lookup(key)

        @function_tool
        def delete_records(table: str) -> str:
            """Delete every record of a table."""
            return env.delete_records(table)

        self.tools = [lookup, delete_records]

    @staticmethod
    def model(turns: list[Turn]) -> Any:
        from immunity_openai_agents.testing import ScriptedModel, call

        def convert(t: Turn) -> Any:
            if isinstance(t, tuple) and t[0] == "call":
                return call(t[1], **t[2])
            if isinstance(t, tuple) and t[0] == "handoff":
                return call(f"transfer_to_{t[1]}")
            return t

        return ScriptedModel(_script(turns, convert))

    def single(self, turns: list[Turn]) -> Any:
        from agents import Agent

        return Agent(name="researcher", instructions="You look things up.", model=self.model(turns), tools=self.tools)

    def two_agents(self, first: list[Turn], second: list[Turn]) -> Any:
        from agents import Agent

        writer = Agent(name="writer", instructions="You write the answer.", model=self.model(second),
                       tools=self.tools[:1])
        return Agent(name="researcher", instructions="You look things up, then hand over to the writer.",
                     model=self.model(first), tools=self.tools[:1], handoffs=[writer])

    def run(self, target: Any, prompt: str, *, stream: bool = False) -> str:
        from agents import Runner

        if not stream:
            return str(Runner.run_sync(target, prompt).final_output)

        async def go() -> str:
            result = Runner.run_streamed(target, prompt)
            async for _event in result.stream_events():
                pass
            return str(result.final_output)

        return asyncio.run(go())


class CrewAIKit:
    """As CrewAI's docs write crews: ``@tool`` functions, ``Agent(role, goal, backstory)``,
    ``Task(description, expected_output, agent)``, ``Crew(agents, tasks)``; two agents: a sequential
    crew whose second task belongs to the second agent (CrewAI's own delegation between tasks)."""

    def __init__(self, env: Env):
        from crewai.tools import tool

        @tool("lookup")
        def lookup(key: str) -> str:
            """Look up the value stored under a key."""
            return env.lookup(key)

        @tool("delete_records")
        def delete_records(table: str) -> str:
            """Delete every record of a table."""
            return env.delete_records(table)

        self.tools = [lookup, delete_records]
        self.stream = False

    @staticmethod
    def model(turns: list[Turn]) -> Any:
        from immunity_crewai.testing import ScriptedLLM, ToolCall

        def convert(t: Turn) -> Any:
            if isinstance(t, tuple) and t[0] == "call":
                return ToolCall(t[1], t[2])
            if isinstance(t, tuple) and t[0] == "handoff":
                # a sequential crew hands over when a task is done: the first agent answers its task
                return f"Done; {t[1]} takes over."
            return t

        return ScriptedLLM(script=_script(turns, convert))

    def _agent(self, role: str, turns: list[Turn], tools: list[Any]) -> Any:
        from crewai import Agent

        return Agent(role=role, goal=f"Do the {role}'s part.", backstory=f"An experienced {role}.",
                     llm=self.model(turns), tools=tools, verbose=False)

    def single(self, turns: list[Turn]) -> Any:
        from crewai import Crew, Task

        agent = self._agent("researcher", turns, self.tools)
        task = Task(description="{prompt}", expected_output="The answer.", agent=agent)
        return Crew(agents=[agent], tasks=[task], verbose=False)

    def two_agents(self, first: list[Turn], second: list[Turn]) -> Any:
        from crewai import Crew, Task

        researcher = self._agent("researcher", first, self.tools[:1])
        writer = self._agent("writer", second, self.tools[:1])
        research = Task(description="{prompt}", expected_output="The values found.", agent=researcher)
        write = Task(description="Write the answer to: {prompt}", expected_output="The answer.", agent=writer)
        return Crew(agents=[researcher, writer], tasks=[research, write], verbose=False)

    def run(self, target: Any, prompt: str, *, stream: bool = False) -> str:
        if stream:
            target.stream = True
            streaming = target.kickoff(inputs={"prompt": prompt})
            for _chunk in streaming:
                pass
            return str(streaming.result.raw)
        return str(target.kickoff(inputs={"prompt": prompt}).raw)


KITS: dict[str, type] = {"langgraph": LangGraphKit, "llamaindex": LlamaIndexKit, "openai_agents": OpenAIAgentsKit,
                         "crewai": CrewAIKit}


#: cases that should work and do not: adapter bugs found by these tests, reported, not hidden (the
#: test still runs; it shows as XPASS once the adapter is fixed, and the entry should then go)
ADAPTER_BUGS: dict[tuple[str, str], str] = {}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> str:
    for module in FRAMEWORKS[request.param]:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed")
        pytest.importorskip(module)
    bug = ADAPTER_BUGS.get((request.function.__name__, request.param))
    if bug is not None:
        request.applymarker(pytest.mark.xfail(reason=bug, strict=False))
    return str(request.param)


@pytest.fixture
def rt() -> Any:
    runtime = Runtime(store=":memory:", plugins=[Rules()], recovery={"base_delay": 0.001, "max_delay": 0.01})
    yield runtime
    runtime.close()


#: a run id is ``<framework>-<the framework's own id>`` (docs/adapters.md, "run id")
RUN_ID_PREFIX = {"langgraph": "langgraph-", "llamaindex": "llamaindex-", "openai_agents": "openai-agents-",
                 "crewai": "crewai-"}


def _one_run(rt: Runtime) -> Any:
    rt.flush()
    runs = rt.store.runs(limit=None)
    assert len(runs) == 1, f"one call, one run; stored: {[(r.run_id, r.status) for r in runs]}"
    assert runs[0].run_id.startswith(RUN_ID_PREFIX[runs[0].framework.replace("-", "_")]), runs[0].run_id
    return runs[0]


def _steps(rt: Runtime, run: Any) -> list[tuple[str | None, str]]:
    return [(s.agent, s.tool or s.action_type.value) for s in rt.store.steps(run.run_id)]


# ---------------------------------------------------------------------------------------------- the cases
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_two_agents_share_a_tool_and_the_handoff_is_a_delegate_step(framework: str, rt: Runtime,
                                                                    stream: bool) -> None:
    env = Env()
    kit = KITS[framework](env)
    target = kit.two_agents([("call", "lookup", {"key": "a"}), ("handoff", "writer")],
                            [("call", "lookup", {"key": "b"}), "a is value-of-a and b is value-of-b"])
    guard = rt.protect(target)
    answer = kit.run(target, "What are a and b?", stream=stream)
    assert answer == "a is value-of-a and b is value-of-b"
    assert env.calls == [("lookup", "a"), ("lookup", "b")]
    run = _one_run(rt)
    assert guard.run_id == run.run_id
    steps = rt.store.steps(run.run_id)
    assert steps and all(s.agent in ("researcher", "writer") for s in steps), _steps(rt, run)
    assert [(s.agent, s.tool) for s in steps if s.tool == "lookup"] == [("researcher", "lookup"), ("writer", "lookup")]
    # one handoff, one DELEGATE step, carrying who handed over to whom (a handoff tool's call is that
    # step: LangGraph's Command(goto) tool, LlamaIndex's handoff tool with its reason)
    delegates = [s for s in steps if s.action_type == ActionType.DELEGATE]
    assert [(s.agent, s.data.get("target")) for s in delegates] == [("researcher", "writer")], \
        [(s.agent, s.tool, s.action_type.value) for s in steps]
    if framework == "llamaindex":
        assert (delegates[0].arguments or {}).get("reason") == "the writer answers"
    assert steps[-1].agent == "writer"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_model_error_is_retried(framework: str, rt: Runtime, stream: bool) -> None:
    env = Env()
    kit = KITS[framework](env)
    target = kit.single(flaky(TimeoutError("503 Service Unavailable: the model is overloaded"),
                              [("call", "lookup", {"key": "a"}), "a is value-of-a"]))
    guard = rt.protect(target)
    answer = kit.run(target, "What is a?", stream=stream)
    assert answer == "a is value-of-a"
    run = _one_run(rt)
    assert guard.run_id == run.run_id
    errors = [e.error for e in rt.store.events(run.run_id) if e.kind == EventKind.MODEL_END and e.error]
    assert len(errors) == 1 and "overloaded" in errors[0]
    assert [r.kind for r in rt.store.recoveries(run.run_id)] == [RecoveryKind.RETRY]
    assert env.calls == [("lookup", "a")]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_rollback_resumes_the_run_to_its_answer(framework: str, rt: Runtime, stream: bool) -> None:
    env = Env()
    kit = KITS[framework](env)
    target = kit.single([("call", "lookup", {"key": "bad"}), ("call", "lookup", {"key": "a"}), "a is value-of-a"])
    guard = rt.protect(target)
    answer = kit.run(target, "What is a?", stream=stream)
    assert answer == "a is value-of-a"
    run = _one_run(rt)
    assert guard.run_id == run.run_id
    if stream and framework == "openai_agents":
        # the run goes on to its answer with the rollback's hint, but is not rolled back
        assert env.calls == [("lookup", "bad"), ("lookup", "a")] and run.status == "finished"
        assert any(e.data.get("rollback_skipped") == "streamed run" for e in rt.store.events(run.run_id))
        pytest.xfail("docs/adapters.md: run_streamed has handed its RunResultStreaming to the caller, and the SDK "
                     "cannot restart that object's run loop from earlier input")
    rollbacks = rt.store.recoveries(run.run_id)
    # the rollback asked for, and the rollback carried out (back to a checkpoint)
    assert [r.kind.value for r in rollbacks] == ["rollback", "rollback"] and rollbacks[-1].checkpoint_id
    assert env.calls == [("lookup", "bad"), ("lookup", "a")]
    assert run.status not in ("stopped", "rolling_back"), run.status


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_stop_ends_the_run_with_a_final_answer(framework: str, rt: Runtime, stream: bool) -> None:
    env = Env()
    kit = KITS[framework](env)
    target = kit.single([("call", "lookup", {"key": "a"}), ("call", "delete_records", {"table": "users"}),
                         "never reached"])
    guard = rt.protect(target)
    answer = kit.run(target, "Clean up the users table.", stream=stream)
    assert STOP_TEXT in answer
    assert env.calls == [("lookup", "a")]  # the delete never ran
    run = _one_run(rt)
    assert guard.run_id == run.run_id
    assert run.status == "stopped"
    assert STOP_TEXT in (run.final_answer or "")
