"""``immunity demo --framework crewai``: a real CrewAI crew, a scripted model, offline.

The model asks a weather tool for ``"Paris, FR"``; the tool only knows bare city names and fails.
The model repeats the same call (as real models do); immunity sees the same error twice, and its
hint in the next model call says so. The scripted model follows the hint (``"Paris"``), the tool
answers, and the crew finishes.
"""

from __future__ import annotations

import os
from typing import Any

for _key, _value in {"CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_DISABLE_TRACKING": "true",
                     "CREWAI_DISABLE_VERSION_CHECK": "true", "CREWAI_TRACING_ENABLED": "false",
                     "CREWAI_TESTING": "true", "OTEL_SDK_DISABLED": "true"}.items():
    os.environ.setdefault(_key, _value)

from crewai import Agent, Crew, Task  # noqa: E402
from crewai.tools import BaseTool  # noqa: E402

from immunity_crewai.testing import ScriptedLLM, ToolCall, text_of  # noqa: E402

KNOWN = {"paris": "Sunny, 21C", "london": "Light rain, 14C", "tokyo": "Cloudy, 18C"}


class WeatherTool(BaseTool):
    name: str = "get_weather"
    description: str = "Current weather for a city. Argument: city (the bare city name)."

    def _run(self, city: str) -> str:
        key = city.strip().lower()
        if key not in KNOWN:
            raise ValueError(f"unknown city {city!r}: pass the bare city name")
        return f"{city}: {KNOWN[key]}"


def demo_turn(messages: list[dict[str, Any]]) -> Any:
    """The scripted model: repeats its mistake until a hint mentions the repeated error."""
    hinted = any(m.get("role") == "user" and "[immunity]" in str(m.get("content")) and "times" in str(m.get("content"))
                 for m in messages)
    tool_results = [str(m.get("content")) for m in messages if m.get("role") == "tool"]
    if tool_results and "Sunny" in tool_results[-1]:
        return "It is sunny and 21C in Paris."
    if hinted:
        return ToolCall("get_weather", {"city": "Paris"})
    return ToolCall("get_weather", {"city": "Paris, FR"})


def build_crew(llm: Any = None) -> Crew:
    llm = llm or ScriptedLLM(script=[demo_turn] * 6)
    agent = Agent(role="weather assistant", goal="Answer weather questions with the weather tool",
                  backstory="You answer briefly.", llm=llm, tools=[WeatherTool()], verbose=False)
    task = Task(name="weather", description="What is the weather in Paris, France right now?",
                expected_output="One sentence with the weather in Paris.", agent=agent)
    return Crew(agents=[agent], tasks=[task], verbose=False)


def run_demo(adapter_cls: Any, runtime: Any) -> str:
    crew = build_crew()
    adapter = adapter_cls(runtime)
    adapter.instrument(crew)
    try:
        crew.kickoff()
    finally:
        adapter.uninstrument()
    runs = [s for s in runtime.sessions.values() if s.run.framework == "crewai"]
    llm = crew.agents[0].llm
    if not any("[immunity]" in text_of(call) for call in getattr(llm, "calls", [])):
        raise RuntimeError("the demo's hint did not reach the model")
    return runs[-1].run.run_id
