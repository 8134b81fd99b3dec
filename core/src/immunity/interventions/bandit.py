"""Beta-Bernoulli arms, Thompson sampling with a class-level fallback, and their persistence.

Arms are kept at two levels for each variant:

- the *context* arm, keyed by (domain, error class, step-position bucket, framework);
- the *class* arm, keyed by the error class alone (it sees every pull of every context).

A context arm with fewer than ``min_context_pulls`` rewarded pulls borrows the other contexts'
evidence from the class arm, scaled to at most ``borrow`` pseudo-pulls, so a new context starts
from what the variant did elsewhere instead of from nothing.

Persistence (when the runtime has a store): ``bandit_arms`` (success / failure counts per arm,
updated with SQL increments so several processes can share a store), ``bandit_pulls`` (one row per
delivered intervention, with its intervention id and, once the run's outcome is known, its
reward) and ``bandit_variants`` (the texts of the variants that were pulled, for reports). Without a
store, or when the tables cannot be read or written, everything is kept in memory and the problem
is recorded (fail-open).
"""

from __future__ import annotations

import logging
import math
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("immunity.interventions")

ARMS = "bandit_arms"
PULLS = "bandit_pulls"
VARIANTS = "bandit_variants"

__all__ = ["ARMS", "PULLS", "VARIANTS", "Arm", "BanditError", "BanditStore", "Pull", "beta_interval",
           "class_key", "context_key", "position_bucket", "thompson_pick"]


class BanditError(RuntimeError):
    """The bandit's tables are missing in a way that cannot be repaired, or hold invalid values."""


# ---------------------------------------------------------------------------------------------- contexts
def position_bucket(n_steps: int) -> str:
    """The step-position bucket of a context: ``early`` (steps 0-4), ``middle`` (5-14), ``late`` (15+)."""
    return "early" if n_steps < 5 else ("middle" if n_steps < 15 else "late")


def context_key(domain: str | None, error_class: str, position: str, framework: str | None) -> str:
    return f"domain={domain or '-'}|class={error_class}|pos={position}|framework={framework or '-'}"


def class_key(error_class: str) -> str:
    return f"class={error_class}"


def parse_context(key: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in key.split("|") if "=" in part)


# ---------------------------------------------------------------------------------------------- beta maths
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-14
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """P(X <= x) for X ~ Beta(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The ``q`` quantile of Beta(a, b) (bisection on the CDF; 60 halvings is below 1e-15)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def beta_interval(successes: int, failures: int, level: float = 0.95) -> tuple[float, float, float]:
    """Posterior mean and central ``level`` interval of a Beta(1 + successes, 1 + failures)."""
    a, b = 1.0 + successes, 1.0 + failures
    tail = (1.0 - level) / 2
    return a / (a + b), beta_ppf(tail, a, b), beta_ppf(1.0 - tail, a, b)


# ---------------------------------------------------------------------------------------------- arms
@dataclass
class Arm:
    context: str
    variant: str
    error_class: str
    successes: int = 0
    failures: int = 0
    pulls: int = 0
    disabled: bool = False
    disabled_reason: str | None = None

    @property
    def rewarded(self) -> int:
        return self.successes + self.failures

    @property
    def mean(self) -> float:
        return (1.0 + self.successes) / (2.0 + self.rewarded)


@dataclass
class Pull:
    """One delivered intervention whose variant the bandit chose."""

    intervention_id: str
    run_id: str
    variant: str
    error_class: str
    context: str
    step: int
    ts: float = field(default_factory=time.time)
    reward: int | None = None


def thompson_pick(candidates: list[str], arms: dict[tuple[str, str], Arm], context: str, cls_key: str,
                  rng: random.Random, *, min_context_pulls: int = 10, borrow: float = 10.0) -> tuple[str, float]:
    """Sample each candidate's success rate from its posterior and return the best ``(variant, draw)``.

    The posterior of a candidate in ``context`` is Beta(1 + s, 1 + f) on its context arm, plus (while
    the context arm has fewer than ``min_context_pulls`` rewarded pulls) the class arm's evidence
    from the other contexts, scaled down to at most ``borrow`` pseudo-pulls."""
    best, best_draw = candidates[0], -1.0
    for vid in sorted(candidates):
        ctx = arms.get((context, vid))
        cls = arms.get((cls_key, vid))
        s_c, f_c = (ctx.successes, ctx.failures) if ctx else (0, 0)
        a, b = 1.0 + s_c, 1.0 + f_c
        if s_c + f_c < min_context_pulls and cls is not None:
            s_o, f_o = max(0, cls.successes - s_c), max(0, cls.failures - f_c)
            n_o = s_o + f_o
            if n_o:
                w = min(1.0, borrow / n_o)
                a, b = a + w * s_o, b + w * f_o
        draw = rng.betavariate(a, b)
        if draw > best_draw:
            best, best_draw = vid, draw
    return best, best_draw


# ---------------------------------------------------------------------------------------------- store
def _valid_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BanditError(f"{ARMS} holds an invalid {what}: {value!r}")
    return int(value)


class BanditStore:
    """Arms and pulls, in memory and (when ``store`` has a database) in the store's bandit tables.

    Every method that touches the database raises on failure; the selector catches, records the
    error and switches this object to memory-only (:attr:`broken`) so the run goes on."""

    def __init__(self, store: Any = None):
        self.store = store
        self.db: Any = getattr(store, "db", None)
        self.arms: dict[tuple[str, str], Arm] = {}
        self.pulls: dict[str, Pull] = {}
        self.broken: str | None = None
        self._mem_lock = threading.RLock()

    @property
    def persistent(self) -> bool:
        return self.db is not None and self.broken is None

    def _transaction(self) -> Any:
        """One transaction on the store's connection for the bandit's own tables: the store's
        :meth:`~immunity.store.SQLiteStore.transaction` (the statements run alone, serialised with
        the store's writer thread; queued rows need not be written first, the bandit's tables do not
        depend on them), or the connection's own transaction for a store object that has none."""
        transaction = getattr(self.store, "transaction", None)
        return transaction(flush=False) if callable(transaction) else self.db.conn

    # -------------------------------------------------------------- schema
    def ensure_tables(self) -> None:
        if not self.persistent:
            return
        with self._transaction():
            self.db.execute(f"""create table if not exists [{ARMS}] (
                context text not null, variant text not null, error_class text, successes integer not null default 0,
                failures integer not null default 0, pulls integer not null default 0, disabled integer not null
                default 0, disabled_reason text, updated float, primary key (context, variant))""")
            self.db.execute(f"""create table if not exists [{PULLS}] (
                intervention_id text primary key, run_id text, variant text, error_class text, context text,
                step integer, ts float, reward integer)""")
            self.db.execute(f"create index if not exists [{PULLS}_run] on [{PULLS}] (run_id)")
            self.db.execute(f"""create table if not exists [{VARIANTS}] (
                variant text primary key, error_class text, domain text, style text, source text, text text)""")

    def load(self) -> None:
        """Read every arm (validating the counts) into memory."""
        if not self.persistent:
            return
        self.ensure_tables()
        with self._transaction():
            cur = self.db.execute(f"select context, variant, error_class, successes, failures, pulls, disabled, "
                                  f"disabled_reason from [{ARMS}]")
            rows = cur.fetchall()
        arms: dict[tuple[str, str], Arm] = {}
        for ctx, vid, cls, s, f, n, dis, reason in rows:
            if not isinstance(ctx, str) or not isinstance(vid, str):
                raise BanditError(f"{ARMS} holds a row without a context or variant: {(ctx, vid)!r}")
            arms[(ctx, vid)] = Arm(ctx, vid, str(cls or ""), _valid_count(s, "success count"),
                                   _valid_count(f, "failure count"), _valid_count(n, "pull count"), bool(dis),
                                   reason)
        with self._mem_lock:
            self.arms.clear()
            self.arms.update(arms)

    # -------------------------------------------------------------- pulls and rewards
    def arm(self, context: str, variant: str, error_class: str) -> Arm:
        with self._mem_lock:
            key = (context, variant)
            if key not in self.arms:
                self.arms[key] = Arm(context, variant, error_class)
            return self.arms[key]

    def record_pulls(self, pulls: list[Pull], variants: list[Any]) -> None:
        """Keep ``pulls`` (not yet rewarded) and count them on their arms."""
        with self._mem_lock:
            for p in pulls:
                self.pulls[p.intervention_id] = p
                for key in (p.context, class_key(p.error_class)):
                    self.arm(key, p.variant, p.error_class).pulls += 1
        if not self.persistent or not pulls:
            return
        self._retry_missing(self._write_pulls, pulls, variants)

    def _retry_missing(self, fn: Any, *args: Any) -> Any:
        """Run ``fn``; if a bandit table was dropped meanwhile, create the tables again and retry once."""
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            log.info("a bandit table is missing (%s): creating it again", exc)
            self.ensure_tables()
            return fn(*args)

    def _write_pulls(self, pulls: list[Pull], variants: list[Any]) -> None:
        now = time.time()
        with self._transaction():
            for p in pulls:
                self.db.execute(f"insert or ignore into [{PULLS}] (intervention_id, run_id, variant, error_class, "
                                f"context, step, ts, reward) values (?, ?, ?, ?, ?, ?, ?, null)",
                                [p.intervention_id, p.run_id, p.variant, p.error_class, p.context, p.step, p.ts])
                for key in (p.context, class_key(p.error_class)):
                    self.db.execute(f"insert into [{ARMS}] (context, variant, error_class, pulls, updated) values "
                                    f"(?, ?, ?, 1, ?) on conflict (context, variant) do update set "
                                    f"pulls = pulls + 1, updated = excluded.updated",
                                    [key, p.variant, p.error_class, now])
            for v in variants:
                self.db.execute(f"insert or replace into [{VARIANTS}] (variant, error_class, domain, style, source, "
                                f"text) values (?, ?, ?, ?, ?, ?)",
                                [v.variant_id, v.error_class, v.domain, v.style, v.source, v.text])

    def reward_run(self, run_id: str, reward: int) -> list[Pull]:
        """Give every pull of ``run_id`` this reward (1 success, 0 failure). A pull that already has
        another reward (the outcome was corrected) has the old one taken back first. Returns the
        pulls whose reward changed."""
        if self.persistent:
            changed: list[Pull] = self._retry_missing(self._reward_db, run_id, reward)
            return changed
        changed = []
        with self._mem_lock:
            for p in [p for p in self.pulls.values() if p.run_id == run_id and p.reward != reward]:
                self._apply(p, p.reward, reward)
                p.reward = reward
                changed.append(p)
        return changed

    def _apply(self, p: Pull, old: int | None, new: int) -> None:
        for key in (p.context, class_key(p.error_class)):
            arm = self.arm(key, p.variant, p.error_class)
            if old == 1:
                arm.successes -= 1
            elif old == 0:
                arm.failures -= 1
            if new == 1:
                arm.successes += 1
            else:
                arm.failures += 1

    def _reward_db(self, run_id: str, reward: int) -> list[Pull]:
        now = time.time()
        changed: list[Pull] = []
        with self._transaction():
            cur = self.db.execute(f"select intervention_id, variant, error_class, context, step, ts, reward from "
                                  f"[{PULLS}] where run_id = ? and (reward is null or reward != ?)", [run_id, reward])
            for iid, vid, cls, ctx, step, ts, old in cur.fetchall():
                p = Pull(iid, run_id, vid, cls, ctx, int(step or 0), float(ts or 0), old)
                ds = (1 if reward == 1 else 0) - (1 if old == 1 else 0)
                df = (1 if reward == 0 else 0) - (1 if old == 0 else 0)
                for key in (ctx, class_key(cls)):
                    self.db.execute(f"insert into [{ARMS}] (context, variant, error_class, successes, failures, updated) "
                                    f"values (?, ?, ?, ?, ?, ?) on conflict (context, variant) do update set "
                                    f"successes = successes + ?, failures = failures + ?, updated = ?",
                                    [key, vid, cls, max(ds, 0), max(df, 0), now, ds, df, now])
                self.db.execute(f"update [{PULLS}] set reward = ? where intervention_id = ?", [reward, iid])
                p.reward = reward
                changed.append(p)
        with self._mem_lock:
            for p in changed:
                mem = self.pulls.get(p.intervention_id)
                if mem is not None:
                    mem.reward = reward
        if changed:
            self.load()  # other processes may have rewarded too: take their counts
        return changed

    def disable(self, variant: str, error_class: str, reason: str) -> None:
        arm = self.arm(class_key(error_class), variant, error_class)
        arm.disabled, arm.disabled_reason = True, reason
        if self.persistent:
            with self._transaction():
                self.db.execute(f"insert into [{ARMS}] (context, variant, error_class, disabled, disabled_reason, "
                                f"updated) values (?, ?, ?, 1, ?, ?) on conflict (context, variant) do update set "
                                f"disabled = 1, disabled_reason = excluded.disabled_reason, updated = excluded.updated",
                                [class_key(error_class), variant, error_class, reason, time.time()])

    def disabled(self, error_class: str) -> set[str]:
        key = class_key(error_class)
        with self._mem_lock:
            return {vid for (ctx, vid), arm in self.arms.items() if ctx == key and arm.disabled}


def read_report(db: Any) -> list[dict[str, Any]]:
    """Every arm with its posterior mean and 95% interval (for ``immunity interventions``)."""
    names = set(db.table_names())
    if ARMS not in names:
        return []
    texts: dict[str, dict[str, Any]] = {}
    if VARIANTS in names:
        for vid, _cls, domain, style, source, text in db.execute(
                f"select variant, error_class, domain, style, source, text from [{VARIANTS}]").fetchall():
            texts[vid] = {"style": style, "source": source, "text": text, "variant_domain": domain}
    out = []
    rows = db.execute(f"select context, variant, error_class, successes, failures, pulls, disabled, disabled_reason "
                      f"from [{ARMS}] order by error_class, context, variant").fetchall()
    for ctx, vid, cls, s, f, n, dis, reason in rows:
        s, f, n = _valid_count(s, "success count"), _valid_count(f, "failure count"), _valid_count(n, "pull count")
        mean, lo, hi = beta_interval(s, f)
        parts = parse_context(ctx)
        out.append({"error_class": cls, "variant": vid, "level": "class" if "|" not in ctx else "context",
                    "context": ctx, "domain": parts.get("domain"), "position": parts.get("pos"),
                    "framework": parts.get("framework"), "pulls": n, "rewarded": s + f, "successes": s,
                    "failures": f, "mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)],
                    "disabled": bool(dis), "disabled_reason": reason, **texts.get(vid, {})})
    return out
