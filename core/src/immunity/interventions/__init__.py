"""Interventions that learn, escalate and recover safely.

- :mod:`~immunity.interventions.selector`: the ``bandit`` selector (escalation ladder per error
  class, contextual Thompson sampling over wording variants, tolerance layer);
- :mod:`~immunity.interventions.variants`: the variants (built-in, domain, pack and user templates);
- :mod:`~immunity.interventions.bandit`: Beta arms, sampling, persistence (``bandit_*`` tables);
- :mod:`~immunity.interventions.budget`: the ``budget`` verifier (tokens and cost, reserved before
  each model call; a run over budget ends with a final answer);
- :mod:`~immunity.interventions.loops`: the ``loops`` verifier (near-identical repeats, polling);
- :mod:`~immunity.interventions.recovery`: backoff honouring ``Retry-After``, transient retries,
  model fallback, circuit breakers, rollback to the last verified checkpoint;
- :mod:`~immunity.interventions.replay`: what-if replay of stored runs and run alignment.

See ``docs/interventions.md``.
"""

from immunity.interventions.budget import PRICES, BudgetVerifier, estimate_tokens, find_price, price_of
from immunity.interventions.loops import LoopsVerifier
from immunity.interventions.recovery import backoff_delay, is_transient, parse_retry_after
from immunity.interventions.selector import DEFAULT_LADDER, BanditSelector, stop_answer
from immunity.interventions.variants import Variant, VariantCatalog

__all__ = [
    "DEFAULT_LADDER",
    "PRICES",
    "BanditSelector",
    "BudgetVerifier",
    "LoopsVerifier",
    "Variant",
    "VariantCatalog",
    "backoff_delay",
    "estimate_tokens",
    "find_price",
    "is_transient",
    "parse_retry_after",
    "price_of",
    "stop_answer",
]
