"""immunity-llm-verifier: L2/L3 checks of a run's critical steps by a model.

Switched on per runtime, never by installing the package::

    Runtime(verifiers=["llm"], llm_verifier={"base_url": "http://localhost:8000/v1", "model": "judge",
                                             "timeout_s": 8, "max_calls": 20})

The plugin registers the verifier name ``"llm"`` (so ``verifiers=["llm"]`` is accepted by core's
dispatcher) and does the checks in its own ``immunity_verify`` hook. Doing them there rather than
inside core's dispatcher matters twice: the hook receives the run's session, so a problem (timeout,
HTTP error, unparseable reply, budget used up) is raised for core to record against the run, where
``immunity runs show`` and ``immunity doctor`` show it; and a slow model call is timed against this
plugin, not against core's always-on rules verifier, which would otherwise be skipped for the run
after three slow checks.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import pluggy
from immunity.models import Event, Run, Step, Verdict
from immunity.state import RunState

from immunity_llm_verifier.contract import ERROR_CLASSES, ParsedVerdict, build_messages, parse_reply
from immunity_llm_verifier.options import L1, L2, L3, Options, TierSettings, VerifierConfigError
from immunity_llm_verifier.transport import (
    ChatModelTransport,
    Completion,
    OpenAITransport,
    VerifierBudgetExhausted,
    VerifierProblem,
    VerifierTimeout,
    VerifierUnavailable,
)
from immunity_llm_verifier.verifier import PLUGIN, Ledger, LLMVerifier

__all__ = [
    "ERROR_CLASSES", "L1", "L2", "L3", "PLUGIN", "ChatModelTransport", "Completion", "LLMVerifier", "Ledger",
    "OpenAITransport", "Options", "ParsedVerdict", "TierSettings", "VerifierBudgetExhausted",
    "VerifierConfigError", "VerifierProblem", "VerifierTimeout", "VerifierUnavailable", "build_messages",
    "parse_reply",
]

log = logging.getLogger("immunity.llm_verifier")
hookimpl = pluggy.HookimplMarker("immunity")

#: The verifier of each runtime that switched it on (or the configuration error it met).
_BY_RUNTIME: weakref.WeakKeyDictionary[Any, LLMVerifier | VerifierConfigError] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class SwitchedOn:
    """What core's dispatcher gets for the name ``"llm"``: the switch, not the checker. The
    checks run in this plugin's ``immunity_verify`` hook (see the module docstring), so this
    object's ``verify`` returns nothing and can never fail, which keeps core's rules running
    whatever the verifier's options say."""

    name = "llm"

    def __init__(self, config: Any = None):
        self.config = config

    def verify(self, event: Event, step: Step | None, run: Run, state: RunState) -> list[Verdict]:
        return []


def switched_on(config: Any) -> bool:
    return "llm" in (getattr(config, "verifiers", None) or [])


#: Core calls this plugin's per-event hooks only in runtimes that switched the verifier on.
immunity_active = switched_on


def verifier_for(runtime: Any) -> LLMVerifier | VerifierConfigError:
    """The runtime's verifier, built on first use from ``config.options["llm_verifier"]``."""
    with _lock:
        v = _BY_RUNTIME.get(runtime)
        if v is None:
            try:
                v = LLMVerifier.from_config(runtime.config)
            except (VerifierConfigError, ValueError, TypeError) as exc:
                v = exc if isinstance(exc, VerifierConfigError) else VerifierConfigError(str(exc))
            _BY_RUNTIME[runtime] = v
        return v


#: A model call always overruns core's per-event step budget; this plugin has its own hard
#: timeout and call/token budget, so core's budget leaves it alone.
immunity_budget_exempt = True


@hookimpl
def immunity_register_verifiers(register: Any) -> None:
    register("llm", SwitchedOn)


@hookimpl
def immunity_configure(config: Any) -> None:
    options = (getattr(config, "options", None) or {}).get("llm_verifier")
    if not switched_on(config):
        if options:
            log.info("llm_verifier options are set but the verifier is off: add verifiers=['llm'] to use it")
        return
    try:
        Options.from_config(config)
    except (VerifierConfigError, ValueError, TypeError) as exc:
        log.warning("the llm verifier is switched on but misconfigured; runs go on without it: %s", exc)


@hookimpl
def immunity_verify(event: Event, step: Step | None, run: Run, state: RunState, session: Any) -> list[Verdict] | None:
    """Check an L2/L3 step with the tier's model. Raises a ``VerifierProblem`` (recorded by core
    against the run; the run goes on) when there is no usable answer."""
    runtime = session.runtime
    if not switched_on(runtime.config) or step is None:
        return None
    verifier = verifier_for(runtime)
    if isinstance(verifier, VerifierConfigError):
        ledger = state.extras.setdefault(PLUGIN, Ledger())
        if isinstance(ledger, Ledger) and not ledger.config_error_reported:
            ledger.config_error_reported = True
            ledger.stopped = f"misconfigured: {verifier}"
            run.metadata[PLUGIN] = ledger.summary()
            raise verifier
        return None
    if verifier.plan(event, step, run, state) is None:
        return None
    return verifier.check(event, step, run, state)


@hookimpl
def immunity_unconfigure(config: Any) -> None:
    with _lock:
        for runtime, v in list(_BY_RUNTIME.items()):
            if getattr(runtime, "config", None) is config:
                if isinstance(v, LLMVerifier):
                    v.close()
                _BY_RUNTIME.pop(runtime, None)
