"""Intervention variants: the different ways of telling an agent the same thing.

A :class:`Variant` is a text template for one error class (and optionally one domain) with a
stable id. The selector keeps a posterior per variant and learns which wording works.

Where variants come from:

- built-in templates (this module): for the common classes, at least three styles each: a
  direct instruction, ask-to-reflect-then-act, and evidence quoting (the verdict's own evidence);
  every other class gets the same three styles around its taxonomy hint;
- the verifier's own hint for the verdict (variant ``<class>/verifier``), so a hand-written hint
  competes with the templates on equal terms; for the constrained ``bandit`` selector (the
  default), the rules' wording (variant ``<class>/default``: the text the ``default`` selector
  sends, the verifier's hint when it has one) takes its place;
- domain templates (``coding:loop/read-first``...), offered only in runs of that domain;
- pattern packs: ``PatternPack.interventions`` ``{class: [text, ...]}``, from trusted packs only
  (signed by a key in ``Config.trusted_keys``, shipped by an installed plugin, or built by code;
  see :mod:`immunity.learning.signing`);
- the user: ``Config.options["variants"] = {class: [text | {"id", "text", "domain"}]}``.

Templates are data: ``{name}`` placeholders are replaced by plain text from the verdict
(redacted and clipped; ``{error}`` and ``{evidence}`` are outside text and go in delimited as data,
``<tool-output>...</tool-output>``, see :mod:`immunity.interventions.quoting`)
(``message``, ``evidence``, ``tool``, ``error``, ``count``, ``class_hint``, ``verifier_hint``);
anything else in braces is left as it is. Nothing is evaluated.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from immunity import taxonomy as tx
from immunity.interventions.quoting import plain, quote
from immunity.models import Verdict

__all__ = ["BUILTIN", "DOMAIN", "GENERIC", "Variant", "VariantCatalog", "default_variant", "render", "stable_id",
           "verifier_variant"]

PREFIX = "[immunity]"


@dataclass(frozen=True)
class Variant:
    """One way of wording an intervention for ``error_class``."""

    variant_id: str
    error_class: str
    text: str
    style: str = "direct"
    domain: str | None = None
    source: str = "builtin"

    def applies(self, error_class: str, domain: str | None) -> bool:
        return self.error_class == error_class and (self.domain is None or self.domain == domain)


def stable_id(*parts: str) -> str:
    """A short id that depends only on ``parts`` (the same text always gets the same id)."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=4).hexdigest()


#: Styles every class gets when it has no specific templates of that style.
GENERIC: dict[str, str] = {
    "direct": f"{PREFIX} {{class_hint}}",
    "reflect": f"{PREFIX} Before your next action, say in one sentence what went wrong ({{message}}) and what "
               "you will do differently, then do it. {class_hint}",
    "evidence": f"{PREFIX} Look at what happened: {{evidence}}. {{class_hint}}",
}

#: Specific templates for the common classes: {class: {style: text}}.
BUILTIN: dict[str, dict[str, str]] = {
    tx.LOOP: {
        "direct": f"{PREFIX} You are repeating the same action and getting the same result. Do something "
                  "different now: change the arguments, use another tool, or finish with what you have.",
        "reflect": f"{PREFIX} Stop and think before acting: why did the last attempts give the same result, and "
                   "what single different action would give new information? Then take that action.",
        "evidence": f"{PREFIX} {{message}} ({{evidence}}). Repeating it again will not change the result; "
                    "choose a different action.",
    },
    tx.NO_PROGRESS: {
        "direct": f"{PREFIX} The last steps produced no new information. Change strategy now, or give your "
                  "answer with what you already know.",
        "reflect": f"{PREFIX} List what you have learned so far and what is still missing. If nothing you can "
                   "do will find the missing part, answer with what you have.",
        "evidence": f"{PREFIX} {{message}}. Waiting or re-reading will not change that; try another source or "
                    "conclude.",
    },
    tx.REPEATED_TOOL_ERROR: {
        "direct": f"{PREFIX} This call failed the same way again. Do not retry it unchanged: fix the arguments "
                  "or use another tool.",
        "reflect": f"{PREFIX} Read the error message word by word and say what it asks for before the next "
                   "call. Then make a call that addresses it.",
        "evidence": f"{PREFIX} The same error keeps coming back: {{error}}. Change what the error points at "
                    "before calling again.",
    },
    tx.TOOL_ERROR: {
        "direct": f"{PREFIX} {{tool}} failed. Read the error and fix the call before trying again.",
        "reflect": f"{PREFIX} {{tool}} failed. What does the error say is wrong? Answer that first, then call "
                   "again with corrected arguments.",
        "evidence": f"{PREFIX} {{tool}} returned an error: {{error}}. Fix that cause, not the symptom.",
    },
    tx.PREMATURE_DONE: {
        "direct": f"{PREFIX} Do not finish yet: your last check failed. Fix the problem and verify again "
                  "before giving the final answer.",
        "reflect": f"{PREFIX} Before finishing, say which check shows the task is done. If there is none that "
                   "passed after your last change, run one first.",
        "evidence": f"{PREFIX} {{message}}. Show a passing check before you finish.",
    },
    tx.WRONG_PARAMETERS: {
        "direct": f"{PREFIX} The arguments of this call look wrong. Check them against what the tools returned "
                  "earlier before calling again.",
        "reflect": f"{PREFIX} For each argument of your next call, say where its value came from. Fix any value "
                   "you cannot trace to a tool result or the task.",
        "evidence": f"{PREFIX} {{message}} ({{evidence}}). Correct the arguments and call again.",
    },
    tx.WRONG_TOOL: {
        "direct": f"{PREFIX} {{tool}} does not fit the current sub-goal. Pick the tool that does.",
        "reflect": f"{PREFIX} Re-read the task and name the sub-goal you are on; then choose the tool whose "
                   "description matches it.",
        "evidence": f"{PREFIX} {{message}}. Use a tool that can achieve this step.",
    },
    tx.UNSAFE_ACTION: {
        "direct": f"{PREFIX} This action is destructive and cannot be undone. Use a safer alternative.",
        "reflect": f"{PREFIX} Before a destructive action, say what it destroys and whether the task really "
                   "asks for that. Prefer an action that can be undone.",
        "evidence": f"{PREFIX} {{message}}. Do not run it; find a reversible way.",
    },
    tx.POLICY_VIOLATION: {
        "direct": f"{PREFIX} Follow the policy: do the required lookups and confirmations before this change.",
        "reflect": f"{PREFIX} Which policy steps must come before this action, and have you done each of them? "
                   "Do the missing ones first.",
        "evidence": f"{PREFIX} {{message}}. Complete the required steps before changing anything.",
    },
    tx.RUNAWAY_COST: {
        "direct": f"{PREFIX} You are close to the budget. Give your final answer now with what you have.",
        "reflect": f"{PREFIX} The budget is nearly used up. Summarise what you found and answer now; do not start "
                   "new work.",
        "evidence": f"{PREFIX} {{message}}. Answer now with the best result you have.",
    },
    tx.HALLUCINATED_STATE: {
        "direct": f"{PREFIX} You referred to something that does not exist. Check it exists before relying on it.",
        "reflect": f"{PREFIX} Which of the things you just referred to did a tool actually return? Verify the "
                   "others before using them.",
        "evidence": f"{PREFIX} {{message}}. Look it up before using it.",
    },
}

#: Domain templates: {domain: {class: {style: text}}}.
DOMAIN: dict[str, dict[str, dict[str, str]]] = {
    "coding": {
        tx.LOOP: {"read-first": f"{PREFIX} Rerunning the same command will give the same output. Read the file "
                                "or the full error it points at, change the code, then run it again."},
        tx.PREMATURE_DONE: {"tests-first": f"{PREFIX} Run the test suite and quote its passing summary line "
                                           "before you finish."},
        tx.REPEATED_TOOL_ERROR: {"traceback": f"{PREFIX} Open the file and line named at the end of the "
                                              "traceback and fix that before running anything again."},
    },
    "support": {
        tx.POLICY_VIOLATION: {"confirm": f"{PREFIX} Look up the customer and the booking, state the change "
                                         "and its cost, and get an explicit yes before changing anything."},
        tx.LOOP: {"ask-user": f"{PREFIX} You already have this record. Ask the customer for the detail you "
                              "are missing instead of looking it up again."},
    },
    "research": {
        tx.NO_PROGRESS: {"rephrase": f"{PREFIX} Searching the same way finds nothing new. Rephrase the query with "
                                     "different terms, or write up what the sources you have support."},
        tx.LOOP: {"cite": f"{PREFIX} You have these results already. Cite what they say and move to the next "
                          "question."},
    },
    "data": {
        tx.PREMATURE_DONE: {"validate": f"{PREFIX} Validate the data you wrote (row counts, nulls, a sample) "
                                        "before you finish."},
        tx.REPEATED_TOOL_ERROR: {"schema": f"{PREFIX} The query keeps failing the same way. Read the table "
                                           "schema first and fix the column or type it names."},
    },
}


def _text(value: Any, limit: int = 300) -> str:
    # outside text: redacted, clipped, on one line (see immunity.interventions.quoting)
    return plain(value, limit)


def _evidence(verdict: Verdict) -> str:
    ev = {k: v for k, v in (verdict.evidence or {}).items() if v not in (None, "", [], {})}
    if not ev:
        return _text(verdict.message) or "the last steps"
    return ", ".join(f"{k}={_text(v, 80)}" for k, v in list(ev.items())[:6])


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(variant: Variant, verdict: Verdict, *, tool: str | None = None, error: str | None = None) -> str:
    """The variant's text for ``verdict`` (known placeholders filled in, nothing evaluated)."""
    cls = tx.get(verdict.error_class)
    ev = verdict.evidence or {}
    values = {
        "message": _text(verdict.message) or "the last step was flagged",
        "evidence": quote(_evidence(verdict), 600),
        "tool": _text(tool or ev.get("tool"), 80) or "the tool",
        "error": quote(error or ev.get("error")) or _text(verdict.message),
        "count": _text(ev.get("count") or ev.get("identical_streak") or ev.get("ping_pong") or ""),
        "class_hint": cls.hint if cls else "Something went wrong in the last step.",
        "verifier_hint": _text(verdict.hint, 600),
    }
    out = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), variant.text)
    return " ".join(out.split())


@dataclass
class VariantCatalog:
    """All variants known to a runtime, looked up by class and domain."""

    variants: dict[str, Variant] = field(default_factory=dict)

    def add(self, variant: Variant) -> None:
        self.variants.setdefault(variant.variant_id, variant)

    def extend(self, variants: Iterable[Variant]) -> None:
        for v in variants:
            self.add(v)

    def get(self, variant_id: str) -> Variant | None:
        return self.variants.get(variant_id)

    def for_class(self, error_class: str, domain: str | None) -> list[Variant]:
        """The variants offered for ``error_class`` in a run of ``domain``: specific templates (or the
        generic ones for a class with none), domain, pack and user templates."""
        found = [v for v in self.variants.values() if v.applies(error_class, domain)]
        if not any(v.source == "builtin" for v in found):
            found += [Variant(f"{error_class}/{style}", error_class, text, style=style) for style, text in
                      GENERIC.items()]
        return found

    @classmethod
    def build(cls, config: Any = None, packs: Iterable[Any] = ()) -> VariantCatalog:
        cat = cls()
        for error_class, styles in BUILTIN.items():
            for style, text in styles.items():
                cat.add(Variant(f"{error_class}/{style}", error_class, text, style=style))
        for domain, classes in DOMAIN.items():
            for error_class, styles in classes.items():
                for style, text in styles.items():
                    cat.add(Variant(f"{domain}:{error_class}/{style}", error_class, text, style=style, domain=domain))
        from immunity.learning.signing import is_trusted

        for pack in packs:
            if not is_trusted(pack, config):  # an untrusted pack's words never reach a prompt
                continue
            for error_class, texts in (getattr(pack, "interventions", None) or {}).items():
                for text in texts or []:
                    if isinstance(text, str) and text.strip():
                        vid = f"pack:{pack.name}:{error_class}/{stable_id(text)}"
                        cat.add(Variant(vid, error_class, text, style="pack", domain=getattr(pack, "domain", None),
                                        source=f"pack:{pack.name}"))
        options = getattr(config, "options", None) or {}
        for error_class, items in (options.get("variants") or {}).items():
            for item in items if isinstance(items, list | tuple) else [items]:
                if isinstance(item, str):
                    item = {"text": item}
                if not isinstance(item, dict) or not str(item.get("text") or "").strip():
                    raise ValueError(f"variants[{error_class!r}]: each variant is a text or a dict with 'text'")
                text = str(item["text"])
                vid = str(item.get("id") or f"user:{error_class}/{stable_id(text)}")
                cat.add(Variant(vid, error_class, text, style=str(item.get("style") or "user"),
                                domain=item.get("domain"), source="user"))
        return cat


def default_variant(error_class: str) -> Variant:
    """The variant that stands for the rules' own wording: the text the ``default`` selector sends
    (the verifier's hint, or the verdict's message with the class's hint). The ``bandit`` selector
    fills it in from :func:`immunity.defaults.policy.hint_for`, not from this template."""
    return Variant(f"{error_class}/default", error_class, "{verifier_hint}", style="default", source="default")


def verifier_variant(error_class: str) -> Variant:
    """The variant that stands for the verdict's own hint."""
    return Variant(f"{error_class}/verifier", error_class, "{verifier_hint}", style="verifier", source="verifier")
