"""The custom-domain example installs into a fresh virtualenv and works there.

It builds a new venv, installs core and ``examples/custom_domain`` into it from copies with no
package index (``install_offline`` in conftest: ``uv pip install --offline``), then checks with
that venv's own interpreter that ``immunity plugins`` lists the billing domain and that its check
blocks a refund in a fake run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_domain"

SCRIPT = r"""
import json
from immunity.runtime import Runtime
from immunity.testing import FakeRun

with Runtime(store=":memory:", domain="billing") as rt:
    run = FakeRun(rt, domain="billing")
    blind = run.tool("refund_invoice", {"invoice_id": "INV-7", "amount": 40.0})
    run.tool("lookup_invoice", {"invoice_id": "INV-7"},
             result=json.dumps({"invoice_id": "INV-7", "amount_due": 0, "amount_paid": 25.0}))
    too_much = run.tool("refund_invoice", {"invoice_id": "INV-7", "amount": 40.0})
    fine = run.tool("refund_invoice", {"invoice_id": "INV-7", "amount": 25.0}, result="refunded 25.00")
    mapped = rt.map_action("void_invoice", {"invoice_id": "INV-7"})
    print(json.dumps({
        "blind": [blind.block, [v.error_class for v in blind.verdicts if not v.ok]],
        "too_much": [too_much.block, too_much.message],
        "fine": [fine.block, [v.error_class for v in fine.verdicts if not v.ok]],
        "void": [mapped.action_type.value, mapped.destructive, mapped.mapped_by],
        "steps": [s.action_type.value for s in run.state.steps],
    }))
"""


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def test_the_billing_example_installs_offline_and_its_check_fires(tmp_path: Path, offline_install: Any) -> None:
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "UV_"))}
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env)
    py = str(venv / "bin" / "python")
    offline_install(venv / "bin" / "python", ROOT / "core", EXAMPLE)
    install_s = time.perf_counter() - t0
    print(f"venv + offline install took {install_s:.1f} s")

    plugins = json.loads(_run([str(venv / "bin" / "immunity"), "plugins"], env).stdout)
    billing = next(p for p in plugins if p["name"] == "billing")
    assert billing["distribution"] == "immunity-billing" and billing["error"] is None
    assert "immunity_register_domains" in billing["hooks"]
    # only core and the example are installed there: none of the workspace's other plugins
    assert not any(p["name"] in ("coding", "langgraph") for p in plugins)

    out = json.loads(_run([py, "-c", SCRIPT], env).stdout.strip().splitlines()[-1])
    assert out["blind"] == [True, ["refund_exceeds_paid"]]
    assert out["too_much"][0] is True and "more than the 25.0 paid" in out["too_much"][1]
    assert out["fine"] == [False, []]
    assert out["void"] == ["EDIT", True, "billing"]
    assert out["steps"] == ["EDIT", "SEARCH", "EDIT", "EDIT"]
