"""Generate the hook reference (``docs/hooks.md``) from the hookspecs, so it cannot drift.

``python -m immunity.hookdocs > docs/hooks.md``; a test fails if the committed file differs.
"""

from __future__ import annotations

import inspect
import re

from immunity import hookspecs


def hook_names() -> list[str]:
    return [n for n, f in vars(hookspecs).items() if n.startswith("immunity_") and inspect.isfunction(f)]


def render() -> str:
    src = inspect.getsource(hookspecs)
    lines = ["# Hook reference", "", "Generated from `core/src/immunity/hookspecs.py` by "
             "`python -m immunity.hookdocs`; do not edit by hand.", ""]
    lines += [inspect.cleandoc(hookspecs.__doc__ or ""), ""]
    # keep the phase banners in source order
    phases = [(m.start(), m.group(1).strip()) for m in re.finditer(r"^# -+\n# (.+)\n# -+$", src, re.M)]
    for name in hook_names():
        func = getattr(hookspecs, name)
        pos = src.index(f"def {name}(")
        phase = [p for start, p in phases if start < pos]
        if phase and (len(lines) < 2 or f"## {phase[-1]}" not in lines):
            lines += [f"## {phase[-1]}", ""]
        opts = getattr(func, "immunity_spec", {}) or {}
        first = " (firstresult: stops at the first non-None result)" if opts.get("firstresult") else ""
        sig = str(inspect.signature(func)).replace("'", "")
        lines += [f"### `{name}`{first}", "", "```python", f"def {name}{sig}", "```", ""]
        lines += [inspect.cleandoc(func.__doc__ or "(undocumented)"), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
