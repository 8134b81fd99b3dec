"""A fake OpenAI-compatible endpoint for tests: no network, real httpx.

::

    from immunity_llm_verifier.testing import FakeEndpoint, verdict

    endpoint = FakeEndpoint(lambda req: verdict(False, "scope_creep", hint="Only touch the orders table."))
    rt = Runtime(verifiers=["llm"], llm_verifier={**endpoint.options(), "max_calls": 5})

The responder receives a :class:`FakeRequest` (the parsed JSON body and the prompt's text) and
returns the reply content (a ``str``, or a ``dict`` which is sent as JSON text), or a whole
``httpx.Response`` (an HTTP error, a 429 with ``Retry-After``), or raises an ``httpx`` exception
(a timeout, a refused connection).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["FakeEndpoint", "FakeRequest", "verdict"]


@dataclass
class FakeRequest:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def prompt(self) -> str:
        return "\n".join(str(m.get("content") or "") for m in self.body.get("messages") or [])

    @property
    def step_to_check(self) -> str:
        """The prompt's STEP TO CHECK section."""
        text = self.prompt
        i = text.find("STEP TO CHECK:")
        return text[i + len("STEP TO CHECK:"):].split("Reply with the JSON object only.")[0].strip() if i >= 0 else ""

    @property
    def task(self) -> str:
        text = self.prompt
        i = text.find("TASK:\n")
        return text[i + 6:].split("\n")[0] if i >= 0 else ""


def verdict(ok: bool, error_class: str = "none", *, severity: str = "error", message: str = "", hint: str = "",
            confidence: float | None = None) -> dict[str, Any]:
    """A reply in the verifier's JSON contract."""
    out: dict[str, Any] = {"ok": ok, "error_class": "none" if ok else error_class, "severity": "info" if ok else severity,
                           "message": message, "hint": hint}
    if confidence is not None:
        out["confidence"] = confidence
    return out


class FakeEndpoint:
    """Answers ``POST .../chat/completions`` with ``responder(request)``; records every request."""

    def __init__(self, responder: Callable[[FakeRequest], Any], *, model: str = "fake-judge",
                 tokens: int | None = 100, base_url: str = "http://verifier.test/v1"):
        self.responder = responder
        self.model = model
        self.tokens = tokens
        self.base_url = base_url
        self.requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        self.transport = httpx.MockTransport(self._handle)

    def options(self, **extra: Any) -> dict[str, Any]:
        """``llm_verifier`` options pointing at this endpoint."""
        return {"base_url": self.base_url, "model": self.model, "transport": self.transport, **extra}

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        req = FakeRequest(body=json.loads(request.content or b"{}"), headers=dict(request.headers))
        with self._lock:
            self.requests.append(req)
        reply = self.responder(req)
        if isinstance(reply, httpx.Response):
            return reply
        content = json.dumps(reply) if isinstance(reply, dict) else str(reply)
        body: dict[str, Any] = {"id": f"cmpl-{len(self.requests)}", "object": "chat.completion", "model": self.model,
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                             "finish_reason": "stop"}]}
        if self.tokens is not None:
            body["usage"] = {"prompt_tokens": self.tokens - 20, "completion_tokens": 20, "total_tokens": self.tokens}
        return httpx.Response(200, json=body)
