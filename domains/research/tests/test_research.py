"""Research mapping and checks on realistic tool runs and multi-agent chats, through the installed plugin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from immunity.models import ActionType
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from immunity_research.checks import figures

TASK = ("I live in Pearl City, Hawaii. Two homes near me sold in 2022: 2072 Akaikai Loop and 2017 Komo Mai Drive. "
        "Which sold for more, and for how much?")
SEARCH_OUT = ("exitcode: 0 (execution succeeded)\nCode output: Search Result 1:\n2072 Akaikai Loop, Pearl City, HI 96782 "
              "| Zillow\nhttps://www.zillow.com/homedetails/2072-Akaikai-Loop/\nSold on 11/4/22 for $860,000.\n"
              "Search Result 2:\n2017 Komo Mai Dr, Pearl City, HI | Redfin\nhttps://www.redfin.com/HI/Pearl-City/2017-Komo-Mai-Dr\n"
              "Sold for $900,000 in 2022.")


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime(store=":memory:", domain="research")
    yield runtime
    runtime.close()


def failed(decision: Any, check: str) -> list[str]:
    return [v.error_class for v in decision.verdicts if not v.ok and v.plugin == f"research:{check}"]


@pytest.mark.parametrize("tool,expected", [
    ("web_search", "SEARCH"), ("google_search", "SEARCH"), ("arxiv_search", "SEARCH"), ("read_url", "SEARCH"),
    ("read_paper", "SEARCH"), ("take_notes", "EDIT"), ("verify_claim", "VERIFY"), ("write_report", "RESPOND"),
    ("submit_report", "DONE"), ("outline", "PLAN"), ("run_code", "EXECUTE"), ("ask_expert", "DELEGATE"),
])
def test_tool_mapping(rt: Runtime, tool: str, expected: str) -> None:
    m = rt.map_action(tool, {"query": "x"})
    assert (m.action_type, m.mapped_by) == (ActionType(expected), "research")


@pytest.mark.parametrize("text,expected", [
    ("You are given: (1) a task and advises from your manager with a specific plan", "PLAN"),
    ("Let me search for it.\n```python\nfrom functions import perform_web_search\nprint(perform_web_search('x'))\n```",
     "EXECUTE"),
    (SEARCH_OUT, "SEARCH"),
    ("exitcode: 1 (execution failed)\nCode output: Traceback (most recent call last):\nNameError: name 'x'", "EXECUTE"),
    ("1. **HawaiiRealEstate_Expert:** Please gather recent sales data for the two homes.", "DELEGATE"),
    ("Let me verify the accuracy of these prices against the listing.", "VERIFY"),
    ("The home that sold for more is 2017 Komo Mai Drive.\n\nTERMINATE", "DONE"),
    ("There is no code from the last 1 message for me to execute. Group chat manager should let others talk.",
     "RESPOND"),
])
def test_message_mapping(rt: Runtime, text: str, expected: str) -> None:
    assert rt.map_action(None, None, text).action_type == ActionType(expected)


def test_figures_compare_whatever_the_formatting() -> None:
    assert figures("Sold for $950,000 (up 12.50%) in step 3") == {"950000", "12.5%"}
    assert figures("sale price of 950000") == {"950000"}


# ------------------------------------------------------------------------------------------ unsupported_claim


def test_figures_stated_before_any_retrieval_fire(rt: Runtime) -> None:
    run = FakeRun(rt, task=TASK, domain="research")
    run.say("You are given: (1) a task and advises from your manager with a specific plan", agent="manager")
    d = run.say("Here is the sales data:\n1. 2072 Akaikai Loop: Sold for $850,000\n2. 2017 Komo Mai Drive: "
                "Sold for $950,000", agent="HawaiiRealEstate_Expert")
    assert failed(d, "unsupported_claim") == ["unsupported_claim"]
    v = next(v for v in d.verdicts if v.plugin == "research:unsupported_claim")
    assert v.evidence["figures"] == ["850000", "950000"]
    # restating the same figures is not a new claim
    d2 = run.say("Great, so 2017 Komo Mai Drive sold for $950,000.", agent="Validation_Expert")
    assert failed(d2, "unsupported_claim") == []


def test_a_final_answer_without_sources_fires_and_with_them_is_quiet(rt: Runtime) -> None:
    run = FakeRun(rt, task=TASK, domain="research")
    d = run.final("2017 Komo Mai Drive sold for more, at $950,000.")
    assert failed(d, "unsupported_claim") == ["unsupported_claim"]
    run2 = FakeRun(rt, task=TASK, domain="research")
    run2.tool("web_search", {"query": "2017 Komo Mai Drive Pearl City sold 2022"}, result=SEARCH_OUT)
    d = run2.final("2017 Komo Mai Drive sold for more, at $900,000 (https://www.redfin.com/HI/Pearl-City/2017-Komo-Mai-Dr).")
    assert failed(d, "unsupported_claim") == [] and failed(d, "fabricated_citation") == []


def test_figures_from_a_terminal_output_count_as_sourced(rt: Runtime) -> None:
    run = FakeRun(rt, task=TASK, domain="research")
    run.say("```python\nprint(perform_web_search('Akaikai Loop sold 2022'))\n```", agent="WebServing_Expert")
    run.say(SEARCH_OUT, agent="Computer_terminal")
    d = run.say("The home that sold for more is 2017 Komo Mai Drive, for $900,000.\n\nTERMINATE", agent="Analyst")
    assert run.state.last_step.action_type == ActionType.DONE
    assert failed(d, "unsupported_claim") == []


# ------------------------------------------------------------------------------------------ fabricated_citation


def test_citing_a_page_never_retrieved_fires(rt: Runtime) -> None:
    run = FakeRun(rt, task=TASK, domain="research")
    run.tool("web_search", {"query": "Akaikai Loop sale"}, result=SEARCH_OUT)
    d = run.final("It sold for $860,000 according to https://www.hawaiilife.com/listings/2072-akaikai-loop")
    assert failed(d, "fabricated_citation") == ["fabricated_citation"]


def test_urls_in_code_are_requests_not_citations(rt: Runtime) -> None:
    run = FakeRun(rt, task=TASK, domain="research")
    run.tool("web_search", {"query": "Akaikai Loop sale"}, result=SEARCH_OUT)
    d = run.say("```python\nimport requests\nprint(requests.get('https://en.wikipedia.org/wiki/Pearl_City').text)\n```")
    assert failed(d, "fabricated_citation") == []


# ------------------------------------------------------------------------------------------ search_loop


def test_the_same_query_a_third_time_fires(rt: Runtime) -> None:
    run = FakeRun(rt, task=TASK, domain="research")
    run.tool("web_search", {"query": "Akaikai Loop Pearl City sold 2022"}, result=SEARCH_OUT)
    run.tool("web_search", {"query": "sold 2022 Akaikai Loop Pearl City"}, result="No results.")
    d = run.tool("web_search", {"query": "Pearl City Akaikai Loop sold 2022"}, result="No results.")
    assert failed(d, "search_loop") == ["search_loop"]


def test_searches_in_a_row_with_nothing_new_fire_and_new_results_reset(rt: Runtime) -> None:
    run = FakeRun(rt, task=TASK, domain="research")
    run.tool("web_search", {"query": "komo mai drive price"}, result=SEARCH_OUT)
    outs = [run.tool("web_search", {"query": q}, result=SEARCH_OUT)
            for q in ("komo mai sale", "komo mai 2022", "pearl city home sales")]
    assert [failed(d, "search_loop") for d in outs] == [[], [], ["search_loop"]]
    fresh = run.tool("read_url", {"url": "https://www.redfin.com/HI/Pearl-City/2017-Komo-Mai-Dr"},
                     result="Sold Jul 2022 for $905,000. https://www.redfin.com/sold-history/2017")
    assert failed(fresh, "search_loop") == []
