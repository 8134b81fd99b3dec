"""An immunity plugin in one module: block tool calls whose arguments carry a secret.

Install it next to immunity (``pip install ./examples/plugin_example``) and every runtime finds it
through its entry point; nothing else to configure.
"""

from __future__ import annotations

import re

from immunity import hookimpl
from immunity.models import EventKind, Verdict

SECRET = re.compile(r"(api[_-]?key|password|secret|token)\s*[=:]\s*\S+|sk-[A-Za-z0-9]{16,}", re.I)
SEEN_RUNS: list[str] = []


@hookimpl
def immunity_observe(event, run):
    if event.kind == EventKind.RUN_START:
        SEEN_RUNS.append(run.run_id)


@hookimpl
def immunity_verify(event, step):
    if event.kind != EventKind.TOOL_START or step is None:
        return None
    text = str(event.arguments or "")
    if SECRET.search(text):
        return Verdict(ok=False, block=True, error_class="unsafe_action", severity="error",
                       message=f"{event.tool} would send a secret",
                       hint="[immunity] Do not send credentials in tool arguments; use a reference instead.",
                       evidence={"tool": event.tool})
    return None
