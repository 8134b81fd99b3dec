"""The research domain's checks. Each returns a :class:`~immunity.models.Verdict` or ``None``.

They read a per-run memo, ``state.extras["research"]``, that :func:`track` fills once per completed
step: the *figures* (amounts, quantities, percentages, dates; written the same way whatever their
formatting, so ``$950,000`` and ``950000`` compare equal) and URLs that came from a source (the task,
a search or page result, a terminal's output), the ones agents only stated, and the searches made.

Options (``Runtime(..., research={...})``): ``search_loop`` (searches in a row with nothing new
before a hint, default 3).
"""

from __future__ import annotations

import re
from typing import Any

from immunity import taxonomy as tx
from immunity.models import ActionType, Event, EventKind, Run, Severity, Step, Verdict
from immunity.state import RunState

from immunity_research.mapping import TERMINAL_OUTPUT

#: Error classes added by this domain.
UNSUPPORTED_CLAIM = "unsupported_claim"
FABRICATED_CITATION = "fabricated_citation"
SEARCH_LOOP = "search_loop"

tx.register_class(UNSUPPORTED_CLAIM,
                  "A message or final answer states specific figures that no retrieved source, tool output or the "
                  "task contains.", "Who&When (CaptainAgent) failures; research domain",
                  "Back every figure with a source you retrieved in this run, or look it up before stating it.")
tx.register_class(FABRICATED_CITATION, "An answer cites a URL that no search or page in the run returned.",
                  "research domain", "Cite only sources you actually retrieved in this run.")
tx.register_class(SEARCH_LOOP, "Searches repeat (same query, or several in a row) without returning anything new.",
                  "research domain; PEERS no-progress signal",
                  "Your searches keep returning nothing new. Change the query terms, the source, or conclude.")

_FIGURE = re.compile(r"(?<![\w.])(\$|€|£)?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(\s?%|\s?percent\b)?(?![\w])")
_URL = re.compile(r"https?://[^\s)\]>\"'`,]+")
_TERMINAL = re.compile(TERMINAL_OUTPUT)
_CODE = re.compile(r"```")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"the", "a", "an", "of", "in", "on", "for", "to", "and", "or", "what", "is", "are", "how", "which", "who"}
_LIMIT = 50000


def figures(text: str | None) -> set[str]:
    """Specific figures in a text, normalised: ``$950,000`` -> ``950000``; ``12.50%`` -> ``12.5%``.
    Integers below 100 are left out (counts, list numbers and step numbers are not claims)."""
    out: set[str] = set()
    for m in _FIGURE.finditer((text or "")[:20000]):
        cur, whole, frac, pct = m.groups()
        number = whole.replace(",", "")
        frac = (frac or "").rstrip("0")
        if not frac and not cur and not pct and len(number.lstrip("0")) < 3:
            continue
        out.add(number + ("." + frac if frac else "") + ("%" if pct else ""))
    return out


def urls(text: str | None) -> set[str]:
    return {u.rstrip(".").rstrip("/") for u in _URL.findall((text or "")[:20000])}


def memo(state: RunState) -> dict[str, Any]:
    m = state.extras.get("research")
    if m is None:
        task = state.task or ""
        m = state.extras["research"] = {"opts": {}, "sourced": figures(task), "stated": set(), "urls": urls(task),
                                        "sources": 0, "queries": {}, "searches_without_new": 0}
    return m


def _is_source(step: Step) -> bool:
    """A step whose output came from outside the agents: a tool result, a terminal's output."""
    if step.tool is not None:
        return step.action_type in (ActionType.SEARCH, ActionType.EXECUTE, ActionType.VERIFY) and not step.failed
    return bool(_TERMINAL.match(step.text or ""))


def _query_key(arguments: dict[str, Any] | None) -> str | None:
    for key in ("query", "q", "search_query", "keywords", "url", "term"):
        value = (arguments or {}).get(key)
        if isinstance(value, str) and value.strip():
            words = sorted(set(_WORD.findall(value.lower())) - _STOP)
            return " ".join(words)[:300]
    return None


def track(step: Step, run: Run, state: RunState) -> None:
    """Fold one completed step into the memo (O(size of the step))."""
    m = memo(state)
    if step.data.get("blocked"):
        return
    if _is_source(step):
        body = step.result if step.tool is not None else step.text
        new_figures = figures(body) - m["sourced"]
        new_urls = urls(body) - m["urls"]
        if len(m["sourced"]) < _LIMIT:
            m["sourced"] |= new_figures
        if len(m["urls"]) < _LIMIT:
            m["urls"] |= new_urls | urls(str(step.arguments or ""))
        m["sources"] += 1
        if step.action_type == ActionType.SEARCH:
            m["searches_without_new"] = 0 if (new_urls or new_figures or step.data.get("_new_info")) else \
                m["searches_without_new"] + 1
            key = _query_key(step.arguments)
            if key is not None and len(m["queries"]) < _LIMIT:
                m["queries"][key] = m["queries"].get(key, 0) + 1
    elif step.tool is None and _CODE.search(step.text or ""):
        if len(m["urls"]) < _LIMIT:  # URLs in code are fetched, not cited: citing them later is fine
            m["urls"] |= urls(step.text)
    elif step.tool is None:
        said = figures(step.text)
        # what this message adds: read by unsupported_claim, which runs after this for the same step
        m["fresh"], m["fresh_step"] = said - m["stated"] - m["sourced"], step.index
        if len(m["stated"]) < _LIMIT:
            m["stated"] |= said


# ----------------------------------------------------------------------------------------------- checks


def _message_text(event: Event, step: Step | None) -> str | None:
    if step is None:
        return None
    if step.tool is None and event.kind in (EventKind.MODEL_END, EventKind.MESSAGE, EventKind.FINAL_ANSWER):
        return step.text
    if step.action_type in (ActionType.DONE, ActionType.RESPOND) and event.kind == EventKind.TOOL_START:
        args = step.arguments or {}
        for key in ("report", "answer", "text", "content", "final_answer", "summary"):
            if isinstance(args.get(key), str):
                return args[key]
    return None


def unsupported_claim(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``unsupported_claim``: an agent's message states figures before the run retrieved anything at
    all, or a final answer's figures appear in no source (retrieved text, a terminal's output, the task)."""
    text = _message_text(event, step)
    if step is None or not text or _TERMINAL.match(text) or _CODE.search(text):
        return None
    m = memo(state)
    final = step.action_type == ActionType.DONE
    stated = figures(text)
    if not stated:
        return None
    unsourced = stated - m["sourced"]
    if final:
        if not unsourced or (m["sources"] and unsourced != stated):
            return None  # at least one figure of the answer comes from a source
    else:
        fresh = m.get("fresh", set()) if m.get("fresh_step") == step.index else unsourced - m["stated"]
        if m["sources"] or not fresh:
            return None
        unsourced = fresh
    listed = sorted(unsourced)[:8]
    return Verdict(ok=False, error_class=UNSUPPORTED_CLAIM, severity=Severity.WARNING,
                   message=(f"the final answer's figures {listed} appear in no retrieved source" if final else
                            f"figures {listed} stated before anything was retrieved or computed"),
                   hint="[immunity] These figures come from no source in this run. Search for them (or compute them) "
                        "and cite where they come from before relying on them.",
                   evidence={"figures": listed, "sources": m["sources"], "final": final})


def fabricated_citation(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``fabricated_citation``: a message or answer cites a URL that no search, page, tool argument or
    terminal output in the run contained (only checked once the run has retrieved something)."""
    text = _message_text(event, step)
    if not text or _TERMINAL.match(text) or _CODE.search(text):
        return None
    m = memo(state)
    cited = urls(text)
    if not cited or not m["sources"]:
        return None
    unknown = sorted(u for u in cited if u not in m["urls"] and not any(k.startswith(u) or u.startswith(k)
                                                                        for k in m["urls"]))
    if not unknown:
        return None
    return Verdict(ok=False, error_class=FABRICATED_CITATION, severity=Severity.WARNING,
                   message=f"cites {unknown[:3]} which no retrieved result contains",
                   hint="[immunity] You cite sources that none of your searches returned. Open them first, or cite "
                        "only what you retrieved.",
                   evidence={"urls": unknown[:10]})


def search_loop(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``search_loop``: a search repeats an earlier query (same words in any order), or several
    searches in a row returned no new source or figure."""
    if step is None or step.action_type != ActionType.SEARCH:
        return None
    m = memo(state)
    limit = int(m["opts"].get("search_loop", 3))
    if event.kind == EventKind.TOOL_START:
        key = _query_key(step.arguments)
        if key and m["queries"].get(key, 0) >= 2:
            return Verdict(ok=False, error_class=SEARCH_LOOP, severity=Severity.WARNING,
                           message=f"the query {key!r} was already searched {m['queries'][key]} times",
                           hint="[immunity] You already ran this search. Use different terms or another source.",
                           evidence={"query": key, "times": m["queries"][key]})
        return None
    if event.kind in (EventKind.TOOL_END, EventKind.MESSAGE, EventKind.MODEL_END) and \
            m["searches_without_new"] >= limit:
        return Verdict(ok=False, error_class=SEARCH_LOOP, severity=Severity.WARNING,
                       message=f"{m['searches_without_new']} searches in a row returned nothing new",
                       hint="[immunity] Your last searches returned nothing new. Change the query terms or the source, "
                            "or answer with what you have and say what is missing.",
                       evidence={"searches_without_new": m["searches_without_new"]})
    return None


CHECKS = [unsupported_claim, fabricated_citation, search_loop]

ERROR_CLASSES = {
    UNSUPPORTED_CLAIM: "unsupported_claim: figures stated before any retrieval, or a final answer whose figures "
                       "appear in no source",
    FABRICATED_CITATION: "fabricated_citation: a cited URL no retrieved result contains",
    SEARCH_LOOP: "search_loop: a repeated query, or N searches in a row with nothing new",
}
