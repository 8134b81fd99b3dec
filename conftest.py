"""Test isolation for the whole workspace: no network, no $HOME, strict plugin loading."""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="immunity-test-home-")
for key, value in {
    "HOME": _HOME,
    "XDG_CONFIG_HOME": os.path.join(_HOME, ".config"),
    "XDG_DATA_HOME": os.path.join(_HOME, ".local", "share"),
    "CREWAI_STORAGE_DIR": os.path.join(_HOME, "crewai"),
    "CREWAI_TESTING": "true",
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "OTEL_SDK_DISABLED": "true",
    "OPENAI_AGENTS_DISABLE_TRACING": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "IMMUNITY_STRICT_PLUGINS": "1",
    "IMMUNITY_STORE": os.path.join(_HOME, "immunity.db"),
}.items():
    os.environ[key] = value
for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY",
            "LANGCHAIN_API_KEY", "IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "IMMUNITY_DISABLE_PLUGINS",
            "IMMUNITY_LOAD_PLUGINS", "IMMUNITY_TRACE_PLUGINS"):
    os.environ.pop(key, None)
