"""The research checks in a real LangGraph run (prebuilt ReAct agent, scripted model, offline).

The tools are real over a small fixed corpus: ``web_search`` returns the documents that contain the
query's words (their URL and text), ``submit_answer`` records the answer it is given. Every check of
the domain is driven through ``Runtime(domain="research").protect(graph)``; each test asserts the
verdict stored with its error class and the hint in the model's next call, and the correct behaviour
in the same graph stays quiet.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from typing import Any

from immunity.models import Verdict
from immunity.runtime import Runtime
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import HumanMessage
from langchain_core.tools import BaseTool, tool

REDFIN = "https://www.redfin.com/HI/Pearl-City/2072-Akaikai-Loop-96782/home/8523401"
MAGAZINE = "https://www.honolulumagazine.com/real-estate/pearl-city-market-2022"
CORPUS = {
    REDFIN: "2072 Akaikai Loop, Pearl City, HI 96782. Last sold on March 14, 2022 for $950,000. "
            "3 beds, 2 baths, 1,344 sq ft.",
    MAGAZINE: "Pearl City market report: the median single-family price reached $1,050,000 in 2022, "
              "up 11.5% on the year.",
}
TASK = "What did 2072 Akaikai Loop in Pearl City sell for in 2022?"


def research_tools(answers: list[str], corpus: dict[str, str] | None = None) -> list[BaseTool]:
    docs = CORPUS if corpus is None else corpus

    @tool
    def web_search(query: str) -> str:
        """Search the web."""
        words = {w for w in re.findall(r"[a-z0-9]+", query.lower()) if len(w) > 3}
        hits = [{"url": url, "snippet": text} for url, text in docs.items()
                if words and words <= set(re.findall(r"[a-z0-9]+", text.lower()))]
        return json.dumps(hits) if hits else "No results found."

    @tool
    def submit_answer(answer: str) -> str:
        """Submit the final answer, with its sources."""
        answers.append(answer)
        return "answer recorded"

    return [web_search, submit_answer]


@dataclass
class Result:
    model: ScriptedChatModel
    verdicts: list[Verdict]

    def fired(self, check: str) -> list[str]:
        return [v.error_class or "" for v in self.verdicts if v.plugin == f"research:{check}" and not v.ok]

    def research_checks(self) -> list[str]:
        return [v.plugin for v in self.verdicts if v.plugin.startswith("research:") and not v.ok]

    def hints(self, call: int) -> list[str]:
        return [str(m.content) for m in self.model.calls[call]
                if isinstance(m, HumanMessage) and str(m.content).startswith("[immunity]")]


def run_agent(tools: list[BaseTool], script: list[Any], task: str = TASK, **options: Any) -> Result:
    """Build a prebuilt ReAct agent over ``tools``, protect it, run ``task`` and read the store."""
    from langgraph.prebuilt import create_react_agent

    model = ScriptedChatModel(script=script)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(model, tools)
    rt = Runtime(store=":memory:", domain="research", **options)
    try:
        rt.protect(graph)
        graph.invoke({"messages": [("user", task)]})
        rt.flush()
        (run,) = rt.store.runs()
        assert run.domain == "research"
        assert model.turns_used == len(script)
        return Result(model, rt.store.verdicts(run.run_id))
    finally:
        rt.close()


# ---------------------------------------------------------------------------------- search_loop


def test_a_search_loop_gets_a_hint_into_the_next_model_call() -> None:
    result = run_agent(research_tools([], corpus={}), [
        tool_call("web_search", query="Akaikai Loop Pearl City sold 2022"),
        tool_call("web_search", query="sold 2022 Akaikai Loop Pearl City"),
        tool_call("web_search", query="Pearl City Akaikai Loop sold 2022"),
        "I could not find the sale price.",
    ], task="What did 2072 Akaikai Loop sell for in 2022?")
    assert any("[immunity]" in h and "search" in h.lower() for h in result.hints(3))
    assert result.hints(1) == []  # hints only when due
    assert "search_loop" in result.fired("search_loop")


def test_searches_that_find_new_sources_are_quiet() -> None:
    answers: list[str] = []
    result = run_agent(research_tools(answers), [
        tool_call("web_search", query="2072 Akaikai Loop sold"),
        tool_call("web_search", query="Pearl City median price 2022"),
        tool_call("submit_answer", answer=f"It sold for $950,000 on March 14, 2022 ({REDFIN})."),
        "It sold for $950,000.",
    ])
    assert result.fired("search_loop") == []
    assert all(result.hints(n) == [] for n in range(4))
    assert answers == [f"It sold for $950,000 on March 14, 2022 ({REDFIN})."]


# ---------------------------------------------------------------------------- unsupported_claim


def test_an_answer_whose_figure_no_source_has_gets_a_hint_then_the_sourced_one_is_quiet() -> None:
    answers: list[str] = []
    result = run_agent(research_tools(answers), [
        tool_call("web_search", query="2072 Akaikai Loop sold"),
        tool_call("submit_answer", answer="It sold for $1,020,000."),   # the search said $950,000
        tool_call("submit_answer", answer="It sold for $950,000."),
        "It sold for $950,000.",
    ])
    assert "$950,000" in str(result.model.calls[1][-1].content)  # what the search really returned
    v = next(v for v in result.verdicts if v.plugin == "research:unsupported_claim")
    assert v.error_class == "unsupported_claim" and v.evidence["figures"] == ["1020000"]
    assert result.fired("unsupported_claim") == ["unsupported_claim"]  # the corrected answer is quiet
    assert any("come from no source" in h for h in result.hints(2))
    assert result.hints(3) == []
    assert answers == ["It sold for $1,020,000.", "It sold for $950,000."]  # a hint, not a block


def test_an_answer_with_the_retrieved_figure_is_quiet() -> None:
    result = run_agent(research_tools([]), [
        tool_call("web_search", query="2072 Akaikai Loop sold"),
        tool_call("submit_answer", answer="It sold for $950,000."),
        "It sold for $950,000.",
    ])
    assert result.research_checks() == []
    assert all(result.hints(n) == [] for n in range(3))


# -------------------------------------------------------------------------- fabricated_citation


def test_citing_a_page_no_search_returned_gets_a_hint() -> None:
    answers: list[str] = []
    zillow = "https://www.zillow.com/homedetails/2072-Akaikai-Loop-Pearl-City-HI-96782/12345_zpid"
    result = run_agent(research_tools(answers), [
        tool_call("web_search", query="2072 Akaikai Loop sold"),
        tool_call("submit_answer", answer=f"It sold for $950,000 (source: {zillow})."),
        tool_call("submit_answer", answer=f"It sold for $950,000 (source: {REDFIN})."),
        "It sold for $950,000.",
    ])
    fired = [v for v in result.verdicts if v.plugin == "research:fabricated_citation"]
    assert [v.error_class for v in fired] == ["fabricated_citation"]  # only the invented URL
    assert fired[0].evidence["urls"] == [zillow]
    assert any("none of your searches returned" in h for h in result.hints(2))
    assert result.hints(3) == []


def test_citing_the_page_the_search_returned_is_quiet() -> None:
    result = run_agent(research_tools([]), [
        tool_call("web_search", query="2072 Akaikai Loop sold"),
        tool_call("submit_answer", answer=f"It sold for $950,000 (source: {REDFIN})."),
        "It sold for $950,000.",
    ])
    assert result.research_checks() == []
    assert all(result.hints(n) == [] for n in range(3))
