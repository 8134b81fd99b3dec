"""The UI: the demo in miniature (a fleet with chaos on -> burn-rate alerts -> an incident and its
postmortem), Datasette serving the store read-only with immunity's pages and canned queries, and a
real headless Chromium loading the pages, rendering the charts and taking screenshots.

With ``IMMUNITY_UPDATE_SCREENSHOTS=1`` the screenshots this test's browser took are copied to
``docs/screenshots/`` (that is how the committed ones were made).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("datasette")
pytest.importorskip("langgraph")
pytest.importorskip("immunity_support")

ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "docs" / "screenshots"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """examples/chaos_fleet.py in miniature: 3 calm runs, 6 runs with chaos."""
    demo_mod = _load(ROOT / "examples" / "chaos_fleet.py", "chaos_fleet_example")
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    res = demo_mod.run_demo(out, baseline=3, chaotic=6, log=lines.append)
    res["log"] = lines
    res["out"] = out
    return res


def test_the_demo_in_miniature_alerts_opens_an_incident_and_writes_its_postmortem(demo):
    assert any(a.slo == "refunds-succeed" for a in demo["fired"]), demo["log"]
    slo_incidents = [i for i in demo["incidents"] if i["kind"] == "slo"]
    assert slo_incidents and slo_incidents[0]["runs"] >= 1
    md = Path(next(p for p in demo["postmortems"] if slo_incidents[0]["incident_id"] in p)).read_text()
    for section in ("## Timeline", "## Affected runs", "## Decisive steps", "## Patterns matched",
                    "## Interventions tried"):
        assert section in md
    assert "| alert |" in md and "failure" in md
    assert "method: alignment" in md   # failed runs explained against successful runs of the same order
    assert any("faults injected" in line for line in demo["log"])


async def test_pages_and_canned_queries_answer(demo):
    from immunity_datasette import make_datasette, prepare_store
    from immunity_datasette.pages import CANNED

    prepare_store(demo["store"])
    ds = make_datasette(demo["store"])
    r = await ds.client.get("/-/immunity")
    assert r.status_code == 200
    page = r.text
    inc = next(i for i in demo["incidents"] if i["kind"] == "slo")
    assert inc["incident_id"] in page and "refunds-succeed" in page and "runs-chart" in page
    assert "chaos-chart" in page and "<rect class='bar'" in page
    run_id = demo["stormy"][0].run_id
    r = await ds.client.get(f"/-/immunity/runs/{run_id}")
    assert r.status_code == 200 and "lane-chart" in r.text and "seconds since the run started" in r.text
    r = await ds.client.get(f"/-/immunity/incidents/{inc['incident_id']}")
    assert r.status_code == 200 and "<h1>Postmortem" in r.text and "<table>" in r.text
    assert (await ds.client.get("/-/immunity/runs/nope")).status_code == 404
    for name in CANNED:
        r = await ds.client.get(f"/immunity/{name}.json?_shape=array")
        assert r.status_code == 200, (name, r.text[:300])
        assert isinstance(r.json(), list)
    rows = (await ds.client.get("/immunity/incidents.json?_shape=array")).json()
    assert {i["incident_id"] for i in rows} >= {inc["incident_id"]}
    # read-only: no writable canned query, and the connection refuses writes
    assert all("write" not in q for q in CANNED.values())
    r = await ds.client.get("/immunity.json?sql=delete+from+runs")
    assert r.status_code in (400, 403) or "error" in r.text.lower()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo):
    import uvicorn
    from immunity_datasette import make_datasette, prepare_store

    prepare_store(demo["store"])
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(make_datasette(demo["store"]).app(), host="127.0.0.1", port=port,
                                        log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(timeout=10)


def _browser(url: str, tmp: Path, *, screenshot: Path | None = None, height: int = 1500) -> str:
    browser = _chromium()
    profile = tmp / f"profile-{time.monotonic_ns()}"
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--mute-audio", f"--user-data-dir={profile}", f"--window-size=1280,{height}"]
    if screenshot is not None:
        proc = subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=60)
        assert screenshot.exists(), proc.stderr[-2000:]
        return ""
    proc = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _eval_report(tmp: Path) -> Path:
    """``immunity eval --cv --html`` on the synthetic population the learning tests use."""
    from click.testing import CliRunner
    from immunity.cli import build_cli

    conf = _load(ROOT / "core" / "tests" / "learning" / "conftest.py", "learning_population")
    store = str(tmp / "population.db")
    conf.write_store(store, conf.population())
    html = tmp / "eval.html"
    res = CliRunner().invoke(build_cli(), ["eval", "--cv", "--store", store, "--folds", "3", "--bootstrap", "100",
                                           "--html", str(html)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return html


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.fixture(scope="module")
def pages(demo, server, tmp_path_factory):
    inc = next(i for i in demo["incidents"] if i["kind"] == "slo")
    failed = next(r.run_id for r in demo["stormy"] if r.outcome == "failure")
    return {
        "ui-overview": (f"{server}/-/immunity", ["runs-chart", "chaos-chart", 'class="axis-label"', "run start (UTC)",
                                                 inc["incident_id"], "refunds-succeed"]),
        "ui-run-timeline": (f"{server}/-/immunity/runs/{failed}", ["lane-chart", "chaos faults", 'class="mark"',
                                                                   "seconds since the run started"]),
        "ui-incident-postmortem": (f"{server}/-/immunity/incidents/{inc['incident_id']}",
                                   ["Postmortem", "Decisive steps", "Interventions tried"]),
        "ui-canned-query-incidents": (f"{server}/immunity/incidents", [inc["incident_id"], "Incidents"]),
        "eval-report": (_eval_report(tmp_path_factory.mktemp("eval")).as_uri(),
                        ["roc-chart", "risk-chart", "calibration-chart", "false-positive rate", 'class="band"',
                         "observed failure rate", "mean risk"]),
    }


@pytest.mark.skipif(_chromium() is None, reason="no chromium (.ci/run installs Debian's chromium)")
@pytest.mark.parametrize("name", ["ui-overview", "ui-run-timeline", "ui-incident-postmortem",
                                  "ui-canned-query-incidents", "eval-report"])
def test_headless_chromium_loads_the_page_renders_its_charts_and_takes_a_screenshot(name, pages, tmp_path):
    url, expected = pages[name]
    dom = _browser(url, tmp_path)
    for text in expected:
        assert text in dom, (name, text)
    shot = tmp_path / f"{name}.png"
    _browser(url, tmp_path, screenshot=shot, height=2000 if name == "eval-report" else 1500)
    assert _png_ok(shot), name
    if os.environ.get("IMMUNITY_UPDATE_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SHOTS / f"{name}.png")


def test_immunity_ui_is_a_command_of_the_cli(tmp_path):
    from click.testing import CliRunner
    from immunity.cli import build_cli

    res = CliRunner().invoke(build_cli(), ["ui", "--help"])
    assert res.exit_code == 0 and "read-only" in res.output
    res = CliRunner().invoke(build_cli(), ["ui", "--store", str(tmp_path / "missing.db")])
    assert res.exit_code != 0 and "no store at" in res.output
