"""Precision / recall of the LLM verifier per error class, on the labelled steps in
``tests/fixtures/labelled_steps.jsonl`` (or ``--cases``), against any OpenAI-compatible endpoint.

    python bench/eval_verifier.py --base-url http://localhost:8000/v1 --model my-judge \
        [--l3-model my-strong-judge] [--api-key-env OPENAI_API_KEY] [--timeout 30] [--json out.json]

Every case is checked with the tier it names (L2 or L3), so ``--l3-model`` lets the two tiers use
different models as they would in a run. Prints the per-class table; ``--json`` writes the whole
report (per-class figures, confusion matrix, each case's answer, latency, tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from immunity_llm_verifier.options import Options
from immunity_llm_verifier.quality import evaluate, format_report, load_cases
from immunity_llm_verifier.verifier import LLMVerifier

DEFAULT_CASES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "labelled_steps.jsonl"


def build_options(args: argparse.Namespace, transport: Any = None) -> Options:
    tiers: dict[str, Any] = {}
    if args.l3_model:
        tiers["L3"] = {"model": args.l3_model}
    return Options.parse({"base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env,
                          "timeout_s": args.timeout, "json_mode": args.json_mode, "tiers": tiers,
                          "transport": transport, "max_output_tokens": args.max_output_tokens})


def main(argv: list[str] | None = None, *, transport: Any = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--model", required=True, help="model for L2 (and L3 unless --l3-model)")
    p.add_argument("--l3-model", default=None)
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--max-output-tokens", type=int, default=300)
    p.add_argument("--json-mode", action="store_true", help="ask for response_format json_object")
    p.add_argument("--cases", default=str(DEFAULT_CASES))
    p.add_argument("--json", dest="json_out", default=None, help="write the full report here")
    args = p.parse_args(argv)
    verifier = LLMVerifier(build_options(args, transport))
    try:
        report = evaluate(verifier, load_cases(args.cases))
    finally:
        verifier.close()
    report["endpoint"] = {"base_url": args.base_url, "model": args.model, "l3_model": args.l3_model or args.model}
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
