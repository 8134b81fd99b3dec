"""Chaos experiments for protected agents: seeded, declarative fault injection into tool and
model calls, and a report of which faults the agent and immunity survived.

::

    from immunity import chaos

    exp = chaos.Experiment.load("chaos.toml")          # or Experiment.from_dict({...})
    with chaos.activate(exp) as c:
        tools = c.tools([get_order_details, refund])   # wrapped: faults land here
        step = c.model(my_scripted_model_step)         # and here
        ... run the protected agent ...
    print(chaos.format_report(chaos.survival(c, store)))

An agent script that routes its tools through :func:`tools` / :func:`model` runs unchanged
outside chaos (they return what they were given) and under ``immunity chaos run EXPERIMENT --
python my_agent.py`` (the experiment is switched on through ``IMMUNITY_CHAOS``). See
docs/chaos.md.
"""

from __future__ import annotations

from immunity.chaos.experiment import FAULT_KINDS, Experiment, FaultSpec
from immunity.chaos.injector import (
    Chaos,
    ChaosHTTPError,
    Injection,
    activate,
    current,
    deactivate,
    model,
    tool,
    tools,
)
from immunity.chaos.report import format_report, survival

__all__ = ["FAULT_KINDS", "Chaos", "ChaosHTTPError", "Experiment", "FaultSpec", "Injection", "activate", "current",
           "deactivate", "format_report", "model", "survival", "tool", "tools"]
