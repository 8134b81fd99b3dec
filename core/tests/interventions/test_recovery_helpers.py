"""Backoff and Retry-After parsing, transient-error detection, and the recover hook's decisions
(fed through a real runtime session)."""

from __future__ import annotations

import email.utils
import random
from typing import Any

import pytest
from immunity.interventions import backoff_delay, is_transient, parse_retry_after
from immunity.models import RecoveryKind
from immunity.runtime import Runtime
from immunity.testing import FakeRun


def test_exponential_backoff_is_capped() -> None:
    delays = [backoff_delay(a, base=0.5, jitter=0.0) for a in range(8)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 30.0 and delays[-1] == 30.0


def test_jitter_stays_within_its_fraction_and_is_seedable() -> None:
    a = [backoff_delay(2, jitter=0.2, rng=random.Random(7)) for _ in range(3)]
    b = [backoff_delay(2, jitter=0.2, rng=random.Random(7)) for _ in range(3)]
    assert a == b
    assert all(2.0 <= d <= 2.4 for d in a)


@pytest.mark.parametrize(("source", "expected"), [
    ("HTTP 429 Too Many Requests. Retry-After: 7", 7.0),
    ("RateLimitError: {'retry-after': '12', 'x-request-id': 'abc'}", 12.0),
    ("Rate limit reached for gpt-4o. Please try again in 1.5s.", 1.5),
    ("Rate limit reached. Please try again in 250ms.", 0.25),
    ("overloaded, retry in 2 minutes", 120.0),
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after-ms": "1500"}, 1.5),
    ("ValueError: bad input", None),
    (None, None),
])
def test_parse_retry_after(source: Any, expected: float | None) -> None:
    assert parse_retry_after(source) == expected


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(42.0)
    assert parse_retry_after(f"503 Service Unavailable; Retry-After: {date}", now=now) == pytest.approx(42.0)


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    assert backoff_delay(0, retry_after=9.0) == 9.0
    assert backoff_delay(0, retry_after="Retry-After: 5") == 5.0
    assert backoff_delay(5, retry_after=500.0, max_delay=30.0) == 30.0


@pytest.mark.parametrize("msg", ["ReadTimeout: timed out", "HTTP 503 Service Unavailable", "429 Too Many Requests",
                                 "ConnectionResetError: [Errno 104] Connection reset by peer",
                                 "anthropic.OverloadedError: overloaded", "APITimeoutError: Request timed out."])
def test_transient_errors(msg: str) -> None:
    assert is_transient(msg)


@pytest.mark.parametrize("msg", ["KeyError: 'sku'", "FileNotFoundError: no such file", "", None])
def test_not_transient(msg: str | None) -> None:
    assert not is_transient(msg)


# ---------------------------------------------------------------------------------------------- the hook
@pytest.fixture
def rt() -> Any:
    runtime = Runtime(store=":memory:", recovery={"base_delay": 0.25})
    yield runtime
    runtime.close()


def test_transient_tool_error_is_retried_with_the_servers_delay(rt: Any) -> None:
    run = FakeRun(rt)
    d = run.tool("fetch_page", {"url": "u"}, error="HTTPError: 429 Too Many Requests; Retry-After: 4")
    assert d.recovery.kind == RecoveryKind.RETRY and d.recovery.delay_s == 4.0 and d.recovery.max_attempts == 3
    d = run.tool("fetch_page", {"url": "v"}, error="ReadTimeout: timed out")
    assert d.recovery.kind == RecoveryKind.RETRY and d.recovery.delay_s >= 0.5  # second failure: 0.25 * 2


def test_side_effecting_tool_is_not_retried_blindly(rt: Any) -> None:
    run = FakeRun(rt)
    d = run.tool("send_payment", {"amount": 5}, error="ReadTimeout: timed out")
    assert run.state.last_step.side_effect
    assert d.recovery.kind == RecoveryKind.RETRY and d.recovery.max_attempts == 1
    assert "check whether it took effect" in d.recovery.hint


def test_tool_circuit_breaker_skips_the_tool(rt: Any) -> None:
    run = FakeRun(rt)
    kinds = [run.tool("lookup", {"q": i}, error=f"KeyError: {i}").recovery.kind for i in range(3)]
    assert kinds[-1] == RecoveryKind.SKIP
    assert any("paused for this run" in h for h in run.state.hints_pending)


def test_run_circuit_breaker_aborts(rt: Any) -> None:
    run = FakeRun(rt)
    for i in range(5):
        d = run.tool(f"tool_{i}", {"i": i}, error="ValueError: nope")
    assert d.recovery.kind == RecoveryKind.ABORT and d.stop


def test_model_errors_fall_back_to_the_configured_model() -> None:
    rt = Runtime(store=None, fallback_model="gpt-4o-mini", recovery={"base_delay": 0.01})
    try:
        s = FakeRun(rt).session
        first = s.model_end(error="APITimeoutError: Request timed out.", model="gpt-4.1")
        assert first.recovery.kind == RecoveryKind.RETRY and first.recovery.delay_s < 0.1
        second = s.model_end(error="APITimeoutError: Request timed out.", model="gpt-4.1")
        assert second.recovery.kind == RecoveryKind.FALLBACK and second.recovery.fallback == "gpt-4o-mini"
        s.model_end("ok", model="gpt-4o-mini")  # a success resets the count
        third = s.model_end(error="APITimeoutError: Request timed out.", model="gpt-4.1")
        assert third.recovery.kind == RecoveryKind.RETRY
    finally:
        rt.close()


def test_failed_check_after_a_change_rolls_back_to_the_verified_checkpoint(rt: Any) -> None:
    undone: list[dict[str, Any]] = []
    rt.compensate_with("write_config", lambda **kw: undone.append(kw))
    run = FakeRun(rt, domain="coding")
    run.tool("read_config", {"path": "app.toml"}, result="x = 1")
    cp = run.session.checkpoint({"step": 1})
    assert cp.verified
    run.tool("write_config", {"path": "app.toml", "text": "x = "}, result="written")
    d = run.tool("validate_config", {"path": "app.toml"}, error="invalid TOML at line 1", return_code=1)
    assert run.state.last_step.action_type.value == "VERIFY"
    assert d.recovery.kind == RecoveryKind.ROLLBACK and d.recovery.checkpoint_id == cp.checkpoint_id
    assert "were undone" in d.recovery.hint
    assert run.session.rollback(cp) == ["write_config"]  # what an adapter does with the recovery
    assert undone == [{"path": "app.toml", "text": "x = "}]


def test_no_rollback_without_a_change_since_the_checkpoint(rt: Any) -> None:
    run = FakeRun(rt)
    run.tool("read_config", {"path": "a"}, result="x = 1")
    run.session.checkpoint({"step": 1})
    d = run.tool("validate_config", {"path": "a"}, error="invalid", return_code=1)
    assert d.recovery is None or d.recovery.kind != RecoveryKind.ROLLBACK
