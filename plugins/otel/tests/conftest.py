"""The workspace's conftest sets OTEL_SDK_DISABLED (frameworks must not export during tests); these
tests build their own SDK providers with in-memory or loopback exporters, so they switch it back on."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _sdk_enabled(monkeypatch):
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("IMMUNITY_OTEL", raising=False)


@pytest.fixture
def memory_provider():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()
