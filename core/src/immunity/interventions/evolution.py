"""Intervention evolution: new hint variants, tried on a small share of traffic, promoted or retired
by their posterior against the incumbent.

Where new variants come from (offline, never on the per-step path: ``immunity interventions evolve``
writes them to the store, and a running selector only reads them):

- the **grammar** (:func:`grammar_variants`): a hint is put together from parts, each optional
  except the action: an opener naming the failing call (``{tool} failed.``), the error quoted as
  data (``{error}``, delimited by :func:`immunity.interventions.quoting.quote` when it is rendered),
  a reflect-then-act lead-in, and a concrete next action for the error class. A part choice is a
  *genome* (``o1q0r0a2``); generation is seeded and deterministic, and a child of an evolved
  incumbent differs from it in one part. The texts are data: the same placeholders as every
  template (:func:`immunity.interventions.variants.render`), nothing evaluated.
- an **LLM**, when a plugin implements ``immunity_propose_variants``. Its text is untrusted:
  :func:`sanitize_proposal` redacts it, folds it onto one line, clips it, and rejects a text that
  holds a ``<tool-output>`` delimiter, a link, code, a role marker, an unknown placeholder or
  words outside a hint's purpose (credentials, "ignore previous instructions", sending or
  downloading things). A proposal that passes is stored as ``proposed``: it reaches no prompt until
  someone approves it (``immunity interventions evolve --approve ID``), the same rule as an
  unsigned pattern pack (docs/security.md).

The guard (:class:`Evolution`, used by the ``bandit`` selector):

- a ``candidate`` is offered only on a share of a class's hints (``traffic``, default 10%): a
  seeded coin picks the pool (candidates or established variants) before Thompson sampling picks
  within it, so candidates never get more than that share;
- after ``min_trials`` rewarded pulls (default 20) its class-level posterior Beta(1+s, 1+f) is
  compared with the incumbent's (the established variant of the class with the best posterior mean
  among those with ``min_trials`` rewarded pulls) in closed form (:func:`prob_better`):
  P(candidate > incumbent) >= ``confidence`` (0.95) promotes it (it joins the established pool and
  may become the incumbent); P(candidate < incumbent) >= ``confidence`` retires it (never offered
  again).

Lineage (``bandit_lineage``): variant, class, text, parent (the incumbent it was bred against),
generator (``grammar``, ``llm``), generation (parent's + 1; hand-written variants are generation 0),
status (``proposed``, ``candidate``, ``promoted``, ``retired``) and why.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from immunity import taxonomy as tx
from immunity.interventions.bandit import ARMS, Arm, BanditStore, class_key
from immunity.interventions.quoting import plain
from immunity.interventions.variants import PREFIX, Variant, stable_id

log = logging.getLogger("immunity.interventions")

__all__ = ["LINEAGE", "LINEAGE_DDL", "CANDIDATE", "PROMOTED", "RETIRED", "PROPOSED", "Lineage", "Evolution",
           "EvolutionStore", "evolve", "grammar_variants", "prob_better", "sanitize_proposal"]

LINEAGE = "bandit_lineage"
LINEAGE_DDL = (f"create table if not exists [{LINEAGE}] (variant text primary key, error_class text, domain text, "
               "style text, source text, text text, parent text, generator text, generation integer, status text, "
               "reason text, created float, updated float)")

PROPOSED, CANDIDATE, PROMOTED, RETIRED = "proposed", "candidate", "promoted", "retired"

#: Defaults of ``Config.options["evolution"]``.
TRAFFIC, MIN_TRIALS, CONFIDENCE = 0.10, 20, 0.95


# ---------------------------------------------------------------------------------------------- the grammar
#: Openers per class ("*": the others): naming the call, or not.
OPENERS: dict[str, list[str]] = {
    "*": ["", "{tool} failed.", "Your last call, {tool}, did not work."],
    tx.LOOP: ["", "You are calling {tool} with the same arguments again.", "{tool} keeps giving the same result."],
    tx.NO_PROGRESS: ["", "The last calls of {tool} found nothing new.", "{tool} keeps giving the same result."],
    tx.PREMATURE_DONE: ["", "You are about to finish after {tool}.", "The task is not done yet."],
}
#: What went wrong, quoted as data (``{error}`` and ``{evidence}`` are delimited when rendered), or not.
QUOTES: dict[str, list[str]] = {
    "*": ["", "The error, as data: {error}.", "It answered: {error}."],
    tx.LOOP: ["", "What repeats, as data: {evidence}."],
    tx.NO_PROGRESS: ["", "What repeats, as data: {evidence}."],
    tx.PREMATURE_DONE: ["", "What is still missing, as data: {evidence}."],
    tx.WRONG_PARAMETERS: ["", "What looks wrong, as data: {evidence}."],
    tx.MISREAD_OUTPUT: ["", "What looks wrong, as data: {evidence}."],
}
#: Reflect-then-act lead-ins, or none.
REFLECTS = ["", "First say in one sentence what went wrong, then act:"]
#: Concrete next actions per class.
ACTIONS: dict[str, list[str]] = {
    tx.TOOL_ERROR: [
        "Call {tool} again with the same arguments now.",
        "Retry {tool} once with the same arguments; if it fails again, use another tool.",
        "Call {tool} again; do not continue without its result.",
    ],
    tx.REPEATED_TOOL_ERROR: [
        "Do not call {tool} unchanged again: change the argument the error names, then call it again.",
        "Call {tool} again only after fixing what the error names; otherwise use another tool.",
    ],
    tx.LOOP: [
        "Stop calling {tool} with these arguments: use the result you already have and take the next step.",
        "Do not call {tool} again with the same arguments; move on to the next step of the task.",
        "Stop repeating {tool}; use the result you already have.",
    ],
    tx.NO_PROGRESS: [
        "Stop calling {tool} the same way: use the results you already have and take the next step.",
        "Do not call {tool} again unchanged; try a different query or answer with what you have.",
    ],
    tx.PREMATURE_DONE: [
        "Do not finish yet: do the remaining steps of the task and check the result first.",
        "Do not answer yet: run the check that shows the task is done, then finish.",
    ],
    tx.WRONG_PARAMETERS: [
        "Call {tool} again with arguments taken from the earlier tool results.",
        "Check each argument of {tool} against the earlier tool results, then call it again.",
    ],
    tx.MISREAD_OUTPUT: [
        "Call {tool} again and read its result before using it.",
        "Do not use that value yet: call {tool} again and compare the results.",
    ],
}


def _parts(table: dict[str, list[str]], error_class: str) -> list[str]:
    return table.get(error_class) or table["*"]


def genome_text(error_class: str, genome: tuple[int, int, int, int]) -> str:
    o, q, r, a = genome
    action = ACTIONS[error_class][a]
    if REFLECTS[r]:
        action = action[0].lower() + action[1:]
    parts = [_parts(OPENERS, error_class)[o], _parts(QUOTES, error_class)[q], REFLECTS[r], action]
    return " ".join([PREFIX, *[p for p in parts if p]])


def genome_name(genome: tuple[int, int, int, int]) -> str:
    return "o{}q{}r{}a{}".format(*genome)


_GENOME = re.compile(r"^grammar:o(\d+)q(\d+)r(\d+)a(\d+)$")


def parse_genome(style: str | None) -> tuple[int, int, int, int] | None:
    m = _GENOME.match(style or "")
    if not m:
        return None
    g = tuple(int(x) for x in m.groups())
    return g if len(g) == 4 else None  # type: ignore[return-value]


def _space(error_class: str) -> list[int]:
    return [len(_parts(OPENERS, error_class)), len(_parts(QUOTES, error_class)), len(REFLECTS),
            len(ACTIONS[error_class])]


def grammar_variants(error_class: str, n: int, *, seed: int = 0, parent_genome: tuple[int, int, int, int] | None = None,
                     exclude: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Up to ``n`` new ``(style, text)`` for ``error_class`` from the grammar, deterministic for
    ``seed``: one-part mutations of ``parent_genome`` when given (an evolved incumbent), otherwise
    genomes drawn from the whole grammar. Texts in ``exclude`` are skipped."""
    if error_class not in ACTIONS or n <= 0:
        return []
    rng = random.Random(f"evolve:{error_class}:{seed}")
    sizes = _space(error_class)
    if parent_genome is not None and all(0 <= g < s for g, s in zip(parent_genome, sizes, strict=True)):
        pool = [tuple(parent_genome[:i]) + (v,) + tuple(parent_genome[i + 1:])
                for i, s in enumerate(sizes) for v in range(s) if v != parent_genome[i]]
    else:
        pool = [(o, q, r, a) for o in range(sizes[0]) for q in range(sizes[1]) for r in range(sizes[2])
                for a in range(sizes[3])]
    rng.shuffle(pool)
    seen = set(exclude)
    out: list[tuple[str, str]] = []
    for g in pool:
        genome = (g[0], g[1], g[2], g[3])
        text = genome_text(error_class, genome)
        if text in seen:
            continue
        seen.add(text)
        out.append((f"grammar:{genome_name(genome)}", text))
        if len(out) >= n:
            break
    return out


# ---------------------------------------------------------------------------------------------- LLM proposals
#: Placeholders an LLM-proposed text may use (the others carry text a hint should not need).
ALLOWED_PLACEHOLDERS = {"tool", "error", "message", "class_hint"}
_REJECT = [
    (re.compile(r"tool-output", re.I), "holds the <tool-output> delimiter"),
    (re.compile(r"https?://|www\.|\w+@\w+\.\w+", re.I), "holds a link or an address"),
    (re.compile(r"`|<[a-z/!][^>]*>|\$\(|;\s*(rm|curl|wget|sh|bash)\b", re.I), "holds code or markup"),
    (re.compile(r"\b(system|assistant|user|developer)\s*:", re.I), "holds a role marker"),
    (re.compile(r"\b(ignore|disregard|forget|override)\b[^.]{0,40}\b(instruction|rule|prompt|previous|above)s?\b",
                re.I), "tells the model to drop its instructions"),
    (re.compile(r"\b(password|passwords|api[ _-]?key|secret|token|credential|credentials|private key)\b", re.I),
     "mentions credentials"),
    (re.compile(r"\b(send|email|upload|download|post|transfer|pay|purchase|delete all|rm -rf)\b", re.I),
     "asks for an action outside a hint's purpose"),
]
_BRACES = re.compile(r"\{([^{}]*)\}")
#: Longest proposal kept (characters, after the prefix).
PROPOSAL_LIMIT = 300


def sanitize_proposal(text: Any) -> tuple[str | None, str]:
    """``(clean_text, "")`` for an acceptable LLM proposal, or ``(None, why)``.

    Redacted, on one line, clipped to :data:`PROPOSAL_LIMIT`, prefixed with ``[immunity]``; rejected
    when it holds a ``<tool-output>`` delimiter, a link, code or markup, a role marker, an
    instruction to drop instructions, credentials, an action outside a hint's purpose, or a
    placeholder other than :data:`ALLOWED_PLACEHOLDERS`."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty or not text"
    raw = " ".join(text.split())
    if len(raw) > 4 * PROPOSAL_LIMIT:
        return None, "too long"
    for pattern, why in _REJECT:
        if pattern.search(raw):
            return None, why
    for name in _BRACES.findall(raw):
        if name not in ALLOWED_PLACEHOLDERS:
            return None, f"unknown placeholder {{{name}}}"
    if raw.count("{") != raw.count("}"):
        return None, "unbalanced braces"
    clean = plain(raw, PROPOSAL_LIMIT)  # redacted, one line, clipped
    if clean.startswith(PREFIX):
        clean = clean[len(PREFIX):].strip()
    if not clean:
        return None, "empty"
    return f"{PREFIX} {clean}", ""


# ---------------------------------------------------------------------------------------------- maths
def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def prob_better(s1: int, f1: int, s2: int, f2: int) -> float:
    """P(X > Y) for X ~ Beta(1 + s1, 1 + f1), Y ~ Beta(1 + s2, 1 + f2), in closed form (the sum over
    the integer first parameter of X; exact, no sampling)."""
    a1, b1, a2, b2 = 1 + s1, 1 + f1, 1 + s2, 1 + f2
    total = 0.0
    lb2 = _lbeta(a2, b2)
    for i in range(a1):
        total += math.exp(_lbeta(a2 + i, b1 + b2) - math.log(b1 + i) - _lbeta(1 + i, b1) - lb2)
    return min(1.0, max(0.0, total))


# ---------------------------------------------------------------------------------------------- store
@dataclass
class Lineage:
    variant_id: str
    error_class: str
    text: str
    parent: str | None
    generator: str
    generation: int
    status: str = CANDIDATE
    reason: str | None = None
    domain: str | None = None
    style: str = "evolved"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def as_variant(self) -> Variant:
        return Variant(self.variant_id, self.error_class, self.text, style=self.style, domain=self.domain,
                       source=f"evolved:{self.generator}")

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant_id, "error_class": self.error_class, "text": self.text,
                "parent": self.parent, "generator": self.generator, "generation": self.generation,
                "status": self.status, "reason": self.reason, "domain": self.domain, "style": self.style,
                "created": self.created, "updated": self.updated}


_COLS = "variant, error_class, domain, style, source, text, parent, generator, generation, status, reason, created, updated"


class EvolutionStore:
    """The lineage rows, in memory and (with a store) in ``bandit_lineage``."""

    def __init__(self, store: Any = None):
        self.store = store
        self.db: Any = getattr(store, "db", None)
        self.rows: dict[str, Lineage] = {}

    def _transaction(self) -> Any:
        transaction = getattr(self.store, "transaction", None)
        return transaction(flush=False) if callable(transaction) else self.db.conn

    def ensure_table(self) -> None:
        if self.db is None:
            return
        with self._transaction():
            self.db.execute(LINEAGE_DDL)

    def load(self) -> dict[str, Lineage]:
        if self.db is None:
            return self.rows
        self.ensure_table()
        with self._transaction():
            rows = self.db.execute(f"select {_COLS} from [{LINEAGE}]").fetchall()
        out: dict[str, Lineage] = {}
        for vid, cls, domain, style, _source, text, parent, gen, generation, status, reason, created, updated in rows:
            if not isinstance(vid, str) or not isinstance(text, str) or not text.strip():
                continue
            out[vid] = Lineage(vid, str(cls or ""), text, parent, str(gen or "?"), int(generation or 0),
                               str(status or CANDIDATE), reason, domain, str(style or "evolved"),
                               float(created or 0), float(updated or 0))
        self.rows = out
        return out

    def add(self, row: Lineage) -> bool:
        """Store a new variant; ``False`` when its id is already known."""
        if row.variant_id in self.rows:
            return False
        self.rows[row.variant_id] = row
        if self.db is not None:
            self.ensure_table()
            with self._transaction():
                self.db.execute(f"insert or ignore into [{LINEAGE}] ({_COLS}) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                                f"?, ?, ?)",
                                [row.variant_id, row.error_class, row.domain, row.style, f"evolved:{row.generator}",
                                 row.text, row.parent, row.generator, row.generation, row.status, row.reason,
                                 row.created, row.updated])
        return True

    def set_status(self, variant_id: str, status: str, reason: str | None) -> None:
        row = self.rows.get(variant_id)
        if row is not None:
            row.status, row.reason, row.updated = status, reason, time.time()
        if self.db is not None:
            with self._transaction():
                self.db.execute(f"update [{LINEAGE}] set status = ?, reason = ?, updated = ? where variant = ?",
                                [status, reason, time.time(), variant_id])


# ---------------------------------------------------------------------------------------------- the guard
class Evolution:
    """The candidate guard of the ``bandit`` selector (options: ``Config.options["evolution"]`` =
    {``traffic`` (0.10), ``min_trials`` (20), ``confidence`` (0.95)})."""

    def __init__(self, options: dict[str, Any] | None, store: Any = None):
        opts = dict(options or {})
        self.traffic = float(opts.get("traffic", TRAFFIC))
        self.min_trials = int(opts.get("min_trials", MIN_TRIALS))
        self.confidence = float(opts.get("confidence", CONFIDENCE))
        if not 0.0 <= self.traffic <= 1.0 or not 0.5 < self.confidence < 1.0 or self.min_trials < 1:
            raise ValueError(f"evolution options out of range: {opts!r} (traffic in [0, 1], confidence in "
                             "(0.5, 1), min_trials >= 1)")
        self.lineage = EvolutionStore(store)

    def load(self) -> list[Variant]:
        """The variants the selector may offer (candidates and promoted ones)."""
        rows = self.lineage.load()
        return [r.as_variant() for r in rows.values() if r.status in (CANDIDATE, PROMOTED)]

    def status(self, variant_id: str) -> str | None:
        row = self.lineage.rows.get(variant_id)
        return row.status if row else None

    def hidden(self) -> set[str]:
        """Variants never offered: retired and not yet approved ones."""
        return {vid for vid, r in self.lineage.rows.items() if r.status in (RETIRED, PROPOSED)}

    def split(self, variant_ids: list[str]) -> tuple[list[str], list[str]]:
        """``(established, candidates)``."""
        cands = [v for v in variant_ids if self.status(v) == CANDIDATE]
        return [v for v in variant_ids if v not in cands], cands

    def choose_pool(self, established: list[str], candidates: list[str], rng: random.Random) -> list[str]:
        """The pool Thompson sampling picks from: candidates on a ``traffic`` share of hints (when
        there are any), established variants otherwise (the coin is drawn only when there are
        candidates, so a selector without any draws exactly as before)."""
        if candidates and rng.random() < self.traffic:
            return candidates
        return established  # may be empty: the hint is then held back, never given to a candidate

    def incumbent(self, error_class: str, arms: dict[tuple[str, str], Arm]) -> Arm | None:
        key = class_key(error_class)
        best: Arm | None = None
        for (ctx, vid), arm in arms.items():
            if ctx != key or arm.disabled or arm.rewarded < self.min_trials:
                continue
            if self.status(vid) in (CANDIDATE, RETIRED, PROPOSED):
                continue
            if best is None or arm.mean > best.mean:
                best = arm
        return best

    def judge(self, error_class: str, arms: dict[tuple[str, str], Arm]) -> list[tuple[str, str, str]]:
        """Promote or retire the class's candidates that have enough evidence; returns
        ``(variant, new status, reason)`` for each change (persisted)."""
        inc = self.incumbent(error_class, arms)
        if inc is None:
            return []
        changes = []
        for vid, row in list(self.lineage.rows.items()):
            if row.error_class != error_class or row.status != CANDIDATE:
                continue
            arm = arms.get((class_key(error_class), vid))
            if arm is None or arm.rewarded < self.min_trials:
                continue
            p = prob_better(arm.successes, arm.failures, inc.successes, inc.failures)
            desc = (f"P(better than {inc.variant}) = {p:.3f} after {arm.rewarded} rewarded pulls "
                    f"({arm.successes} ok; incumbent {inc.successes}/{inc.rewarded})")
            if p >= self.confidence:
                changes.append((vid, PROMOTED, desc))
            elif 1.0 - p >= self.confidence:
                changes.append((vid, RETIRED, desc))
        for vid, status, reason in changes:
            self.lineage.set_status(vid, status, reason)
            log.info("intervention variant %s %s: %s", vid, status, reason)
        return changes


# ---------------------------------------------------------------------------------------------- offline generation
def _incumbent_for_generation(cls: str, evo: Evolution, arms: dict[tuple[str, str], Arm]) -> tuple[str, int, str | None]:
    """``(parent id, parent generation, parent style)`` new variants of ``cls`` are bred against:
    the incumbent when there is one, else the class's direct hand-written template."""
    inc = evo.incumbent(cls, arms)
    vid = inc.variant if inc is not None else f"{cls}/direct"
    row = evo.lineage.rows.get(vid)
    return vid, (row.generation if row else 0), (row.style if row else None)


def evolve(store: Any, *, classes: Iterable[str] | None = None, n: int = 3, seed: int = 0, pm: Any = None,
           config: Any = None, llm: bool = True) -> dict[str, Any]:
    """Generate new variants for ``classes`` (default: every class the grammar knows) into
    ``store``: ``n`` from the grammar per class (candidates), and what LLM plugins propose through
    ``immunity_propose_variants`` (sanitised; stored as ``proposed``). Offline only.

    Returns ``{"added": [lineage dicts], "rejected": [{"error_class", "text", "why"}]}``."""
    options = dict(getattr(config, "options", None) or {})
    evo = Evolution(options.get("evolution"), store)
    evo.lineage.load()
    bandit = BanditStore(store)
    bandit.load()
    existing = {r.text for r in evo.lineage.rows.values()}
    added: list[Lineage] = []
    rejected: list[dict[str, Any]] = []
    wanted = list(classes) if classes else list(ACTIONS)
    from immunity.interventions.variants import BUILTIN, GENERIC

    for cls in wanted:
        parent, parent_gen, parent_style = _incumbent_for_generation(cls, evo, bandit.arms)
        for style, text in grammar_variants(cls, n, seed=seed, parent_genome=parse_genome(parent_style),
                                            exclude=existing):
            row = Lineage(f"evolved:{cls}/{stable_id(text)}", cls, text, parent, "grammar", parent_gen + 1,
                          status=CANDIDATE, reason="generated by the grammar", style=style)
            if evo.lineage.add(row):
                existing.add(text)
                added.append(row)
        if not llm or pm is None:
            continue
        examples = list((BUILTIN.get(cls) or {k: v for k, v in GENERIC.items()}).values())
        try:
            results = pm.hook.immunity_propose_variants(error_class=cls, examples=examples, n=n, config=config)
        except Exception as exc:  # a broken LLM plugin costs its proposals, not the run of the command
            rejected.append({"error_class": cls, "text": None, "why": f"{type(exc).__name__}: {exc}"})
            continue
        for proposals in results or []:
            for text in list(proposals or [])[: max(n, 1) * 3]:
                clean, why = sanitize_proposal(text)
                if clean is None:
                    rejected.append({"error_class": cls, "text": plain(text, 120), "why": why})
                    continue
                if clean in existing:
                    continue
                row = Lineage(f"evolved:{cls}/{stable_id(clean)}", cls, clean, parent, "llm", parent_gen + 1,
                              status=PROPOSED, reason="proposed by an LLM; approve to try it", style="llm")
                if evo.lineage.add(row):
                    existing.add(clean)
                    added.append(row)
    return {"added": [r.as_dict() for r in added], "rejected": rejected}


def approve(store: Any, variant_id: str) -> Lineage:
    """Make a ``proposed`` variant a ``candidate`` (raises ``KeyError`` / ``ValueError``)."""
    lineage = EvolutionStore(store)
    lineage.load()
    matches = [v for v in lineage.rows if v == variant_id or v.endswith(variant_id)]
    if len(matches) != 1:
        raise KeyError(f"no single evolved variant matches {variant_id!r} ({len(matches)} do)")
    row = lineage.rows[matches[0]]
    if row.status != PROPOSED:
        raise ValueError(f"{row.variant_id} is {row.status}, not proposed")
    lineage.set_status(row.variant_id, CANDIDATE, "approved")
    return row


def read_lineage(db: Any) -> list[dict[str, Any]]:
    """Every evolved variant with its class-level arm (for ``immunity interventions``)."""
    if db is None or LINEAGE not in set(db.table_names()):
        return []
    arms: dict[str, tuple[int, int, int]] = {}
    if ARMS in set(db.table_names()):
        for _ctx, vid, s, f, n in db.execute(f"select context, variant, successes, failures, pulls from [{ARMS}] "
                                             f"where context like 'class=%'").fetchall():
            arms[vid] = (int(s or 0), int(f or 0), int(n or 0))
    out = []
    for row in db.execute(f"select {_COLS} from [{LINEAGE}] order by error_class, generation, variant").fetchall():
        vid, cls, domain, style, _src, text, parent, gen, generation, status, reason, created, updated = row
        s, f, n = arms.get(vid, (0, 0, 0))
        ps, pf, _pn = arms.get(parent or "", (0, 0, 0))
        out.append({"variant": vid, "error_class": cls, "text": text, "parent": parent, "generator": gen,
                    "generation": generation, "status": status, "reason": reason, "style": style,
                    "pulls": n, "successes": s, "rewarded": s + f, "mean": round((1 + s) / (2 + s + f), 4),
                    "parent_mean": round((1 + ps) / (2 + ps + pf), 4)})
    return out
