"""Fixtures for the LLM verifier tests: runtimes closed after each test, and a fake endpoint."""

from __future__ import annotations



