"""Packs written by hand: a JSON or YAML spec of patterns, embedded and packed like a learned pack.

::

    name: my-coding-pack
    version: 0.1.0
    domain: coding
    embedder: hashing            # the embedder plugin (default hashing)
    threshold: 0.5               # alarm when the risk reaches this
    min_similarity: 0.3          # a few hand-picked tokens: the predicates do the precise work
    patterns:
      - error_class: loop
        description: the same failing command three times in a row
        signature: "actexecute prevexecute failed streak2"   # step-signature tokens (docs/learning.md)
        predicates: {action_type: EXECUTE, min: {identical_streak: 3, last_failed: 1}}
        weight: 4.0                # log-odds the pattern adds; risk = sigmoid(weight - 3)
        intervention: "[immunity] Stop re-running the same failing command; read its error."

A hand-written pack has no learned model: its risk after a step is ``sigmoid(w - 3)`` where ``w`` is
the largest weight of a matching pattern (0 when none matches), so with the default threshold of
0.5 a pattern alarms when its weight is at least 3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from immunity.errors import PackError
from immunity.learning.matcher import build_embedder, embed_signatures, signature_mode
from immunity.learning.model import MODEL_INPUTS, Logistic, Member, PatternTable, TaskPrior, member_to_dict
from immunity.models import FailurePattern, PatternPack

HANDWRITTEN_OFFSET = 3.0
#: A hand-written signature names a few tokens of the ~20 a step has, so its cosine with a matching
#: step is about sqrt(few/20); the predicates do the precise work.
HANDWRITTEN_MIN_SIMILARITY = 0.3


def read_spec(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:  # pragma: no cover
            raise PackError("reading a YAML spec needs PyYAML (pip install pyyaml), or write the spec as JSON") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PackError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("patterns"), list) or not data.get("name"):
        raise PackError(f"{path}: a spec needs a 'name' and a list of 'patterns'")
    return data


def build_from_spec(path: str, pm: Any) -> PatternPack:
    spec = read_spec(path)
    emb_spec = {"plugin": spec.get("embedder", "hashing"), "options": spec.get("embedder_options") or {}}
    embedder = build_embedder(pm, emb_spec)
    mode = signature_mode(embedder)
    pats: list[FailurePattern] = []
    sigs: list[str] = []
    for i, p in enumerate(spec["patterns"]):
        if not isinstance(p, dict) or not p.get("signature") or not p.get("error_class"):
            raise PackError(f"{path}: pattern {i} needs an 'error_class' and a 'signature'")
        sigs.append(str(p["signature"]))
        pats.append(FailurePattern(
            pattern_id=str(p.get("id") or f"hw_{spec['name']}_{i}"), error_class=str(p["error_class"]),
            description=str(p.get("description", "")), domain=spec.get("domain"),
            predicates=dict(p.get("predicates") or {}), weight=float(p.get("weight", HANDWRITTEN_OFFSET)),
            intervention=p.get("intervention"), support=0, metadata={"handwritten": True}))
    vecs = embed_signatures(embedder, mode, sigs)
    for p, v in zip(pats, vecs, strict=True):
        p.vector = [float(x) for x in v]
    n_in = len(MODEL_INPUTS)
    coef = np.zeros(n_in)
    coef[MODEL_INPUTS.index("pattern_weight_now")] = 1.0
    threshold = float(spec.get("threshold", 0.5))
    dim = int(embedder.dimension)
    member = Member(
        name=str(spec["name"]), threshold=threshold,
        table=PatternTable(ids=[p.pattern_id for p in pats], vectors=vecs, weights=np.asarray([p.weight for p in pats]),
                           classes=[p.error_class for p in pats], predicates=[p.predicates for p in pats],
                           min_similarity=float(spec.get("min_similarity", HANDWRITTEN_MIN_SIMILARITY))),
        logistic=Logistic(np.zeros(n_in), np.ones(n_in), coef, -HANDWRITTEN_OFFSET),
        prior=TaskPrior(np.zeros((0, dim), np.float32), np.zeros(0), np.zeros(0), [], 0.5))
    return PatternPack(
        name=str(spec["name"]), version=str(spec.get("version", "0.1.0")), domain=spec.get("domain"),
        created_with="immunity pack build", embedder=str(embedder.name), dimension=dim, threshold=threshold,
        training={"handwritten": True}, provenance={"spec": Path(path).name}, patterns=pats,
        interventions={p.error_class: [p.intervention] for p in pats if p.intervention},
        model={"kind": "logistic-v1", "embedder": emb_spec, "signature": mode, "members": [member_to_dict(member)]})
