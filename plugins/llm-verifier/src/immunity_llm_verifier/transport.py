"""How the verifier reaches a model: an OpenAI-compatible endpoint over HTTP (httpx), or a chat
model object the user already has (langchain-core's ``BaseChatModel`` or anything with
``invoke(messages)`` returning an object with ``content``).

Both honour a hard deadline. Every failure is raised as one of the exceptions below, which the
plugin turns into a recorded problem and no verdict: the agent's run goes on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from immunity.interventions.recovery import parse_retry_after

from immunity_llm_verifier.options import TierSettings

__all__ = ["ChatModelTransport", "Completion", "OpenAITransport", "VerifierBudgetExhausted", "VerifierProblem",
           "VerifierTimeout", "VerifierUnavailable", "make_transport"]


class VerifierProblem(Exception):
    """Base of every problem the verifier records instead of a verdict."""


class VerifierTimeout(VerifierProblem, TimeoutError):
    """The model did not answer before the tier's ``timeout_s``."""


class VerifierUnavailable(VerifierProblem, RuntimeError):
    """The endpoint refused, failed (HTTP error), rate-limited past the deadline, or replied with
    something that is not a chat completion."""


class VerifierBudgetExhausted(VerifierProblem, TimeoutError):
    """The run used up the verifier's calls or tokens; no more LLM checks in this run. A
    ``TimeoutError`` like core's own step-budget notice, so a fail-closed runtime records it and
    goes on instead of failing the run for a limit the user set."""


@dataclass
class Completion:
    """What a model replied: the text, the tokens it cost (``None`` when not reported), the time."""

    text: str
    tokens: int | None
    latency_s: float
    model: str


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content
                       if isinstance(p, str | dict))
    return "" if content is None else str(content)


class OpenAITransport:
    """``POST {base_url}/chat/completions`` with a hard deadline per check.

    ``transport`` is an httpx transport (``httpx.MockTransport`` in tests); ``None`` uses the
    network. A 429 or 503 with a ``Retry-After`` that fits in what is left of the deadline is
    retried (``retries`` times); anything else that is not a 200 is a :class:`VerifierUnavailable`.
    """

    def __init__(self, tier: TierSettings, *, transport: Any = None, retries: int = 1):
        if not tier.base_url:
            raise ValueError("OpenAITransport needs a base_url")
        self.tier = tier
        self.retries = retries
        self.url = tier.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json", **tier.headers}
        key = tier.key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        import httpx  # here, not at import: loading the plugin (every ``immunity`` command) stays cheap

        self._client = httpx.Client(transport=transport, headers=headers, timeout=tier.timeout_s,
                                    follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def complete(self, messages: list[dict[str, str]]) -> Completion:
        import httpx

        tier = self.tier
        body: dict[str, Any] = {"model": tier.model, "messages": messages, "temperature": 0,
                                "max_tokens": tier.max_output_tokens}
        if tier.json_mode:
            body["response_format"] = {"type": "json_object"}
        t0 = time.monotonic()
        deadline = t0 + tier.timeout_s
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VerifierTimeout(f"no reply from {self.url} within {tier.timeout_s:g}s")
            try:
                resp = self._client.post(self.url, json=body, timeout=httpx.Timeout(left))
            except httpx.TimeoutException as exc:
                raise VerifierTimeout(f"no reply from {self.url} within {tier.timeout_s:g}s "
                                      f"({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise VerifierUnavailable(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code in (429, 503) and attempt < self.retries:
                wait = parse_retry_after(resp.headers)
                left = deadline - time.monotonic()
                if wait is not None and wait < left:
                    attempt += 1
                    time.sleep(wait)
                    continue
                raise VerifierUnavailable(
                    f"{self.url} answered {resp.status_code} (rate limited); Retry-After "
                    f"{resp.headers.get('retry-after', 'not given')} does not fit in the {tier.timeout_s:g}s timeout")
            if resp.status_code != 200:
                raise VerifierUnavailable(f"{self.url} answered HTTP {resp.status_code}: {resp.text[:200]}")
            try:
                data = resp.json()
                choice = data["choices"][0]["message"]
                text = _content_text(choice.get("content"))
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                raise VerifierUnavailable(f"{self.url} did not return a chat completion: {resp.text[:200]!r}") from exc
            usage = data.get("usage") or {}
            tokens = usage.get("total_tokens")
            if tokens is None and ("prompt_tokens" in usage or "completion_tokens" in usage):
                tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
            return Completion(text=text, tokens=None if tokens is None else int(tokens),
                              latency_s=time.monotonic() - t0, model=str(data.get("model") or tier.model))


class ChatModelTransport:
    """A chat model object given by the user, called with ``invoke(messages)`` (role/content dicts,
    which langchain-core accepts). The call runs in a daemon thread so the deadline holds even for
    a model that never returns; such a call is abandoned, not cancelled."""

    def __init__(self, tier: TierSettings):
        self.tier = tier
        self.model = tier.chat_model
        if not callable(getattr(self.model, "invoke", None)):
            raise ValueError(f"chat_model {type(self.model).__name__} has no invoke(messages) method")

    def close(self) -> None:
        return None

    def complete(self, messages: list[dict[str, str]]) -> Completion:
        box: dict[str, Any] = {}
        t0 = time.monotonic()

        def call() -> None:
            try:
                box["reply"] = self.model.invoke(messages)
            except BaseException as exc:  # reported to the caller below
                box["error"] = exc

        worker = threading.Thread(target=call, name="immunity-llm-verifier", daemon=True)
        worker.start()
        worker.join(self.tier.timeout_s)
        if worker.is_alive():
            raise VerifierTimeout(f"chat model {self.tier.model_name} did not answer within {self.tier.timeout_s:g}s")
        if "error" in box:
            exc = box["error"]
            raise VerifierUnavailable(f"chat model {self.tier.model_name} failed: {type(exc).__name__}: {exc}") from exc
        reply = box.get("reply")
        text = _content_text(getattr(reply, "content", reply))
        usage = getattr(reply, "usage_metadata", None) or {}
        tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
        return Completion(text=text, tokens=None if tokens is None else int(tokens),
                          latency_s=time.monotonic() - t0, model=self.tier.model_name)


def make_transport(tier: TierSettings, *, transport: Any = None, retries: int = 1) -> Any:
    """The transport a tier asks for: its chat model if it has one, else its HTTP endpoint."""
    if tier.chat_model is not None:
        return ChatModelTransport(tier)
    return OpenAITransport(tier, transport=transport, retries=retries)
