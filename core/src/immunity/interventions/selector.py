"""The ``bandit`` intervention selector (the default): the rules' choice of action, a learned
choice of wording; and, on request, an escalation ladder per error class.

**Constrained (the default).** For the first failed verdict of an event (blocking verdicts first,
then by severity) the bandit first asks the rules what to do: the ``default`` selector's decision
(:class:`immunity.defaults.policy.DefaultSelector`, with its tolerance layer) for the same verdict,
event and run. Only that decision's *kind* is kept, and the bandit never goes beyond it:

- a stop, a block or a ``warn`` (a hint held back by the tolerance layer) is carried out exactly as
  the rules decided it, text included: the bandit never stops, blocks or asks a human where the
  rules would not, and never hints where the rules hold back;
- a hint is a choice among wordings of the same strength: the rules' own wording (the variant
  ``<class>/default``, the text the ``default`` selector sends) and the class's hint variants (see
  :mod:`immunity.interventions.variants`; the verifier's own hint *is* the rules' wording here).
  Wordings that would repeat the last hint are left out.
- **Cold start.** Until the class has ``warmup`` (5) rewarded pulls in the store (over all its
  variants and contexts), the rules' wording is chosen: the intervention is the ``default``
  selector's, kind and text. After that, Thompson sampling picks among them as in *Wording* below
  (evolved candidates included, on their traffic share), the rules' wording competing on equal terms. ``only`` (a restriction to given variants, as ``immunity replay
  --variant`` sets) skips the cold start: the variants were asked for by name.

Retries, fallbacks and rollbacks are decided by the recover hook, never by a selector.

**Escalating** (``Config.options["bandit"] = {"escalate": True}``, or any ``ladder`` option; also
switches on the ``loops`` verifier). The selector decides how hard, which words and whether at all:

1. **Ladder.** The class's ladder (``Config.options["ladder"]``, merged over :data:`DEFAULT_LADDER`)
   gives the kind for the n-th time this class fires in the run (counted once per step; the last
   rung repeats). A class that has not fired for more than ``ladder_reset`` steps (5) starts again
   from the first rung: escalation is for a problem that persists, and a loop the agent broke out
   of long ago says nothing about a new one. The verdict sets a floor: a critical verdict stops, a blocking one blocks a
   pending tool call. ``block`` and ``ask_human`` only apply before a tool call; elsewhere they
   become a hint (there is nothing to block, and adapters ask humans before actions).
2. **Wording.** For a hint, the variants of the class (see :mod:`immunity.interventions.variants`)
   compete: each is scored by a draw from its Beta posterior in the context (domain, class,
   step-position bucket, framework), borrowing from the class-level arm while the context has
   few rewarded pulls; the best draw wins. Variants auto-disabled for low efficacy are skipped.
   Evolved variants still on trial (``candidate``, see :mod:`immunity.interventions.evolution`)
   are offered only on a ``traffic`` share of hints (10%); retired and unapproved ones never.
3. **Tolerance.** At most ``Config.max_interventions`` hints per run, ``Config.cooldown_steps``
   between two, and never the same hint (text or variant) twice in a row; a hint that would break
   one of these becomes ``warn`` (recorded only). Blocks, human questions and stops are not
   held back: they are about safety, not about the model's attention.

When a run ends (or its outcome is set later), every hint the bandit chose in it is rewarded with
the outcome (success 1, failure 0; unknown: no update) on its context and class arms.

Options (``Config.options``): ``seed`` (deterministic draws), ``ladder`` ({class: [kinds]}, ``"*"`` for
every other class), ``variants`` (user variants), ``bandit`` = {``escalate`` (False), ``warmup`` (5 rewarded
pulls of a class before its wording is learned), ``min_context_pulls`` (10), ``borrow`` (10), ``ladder_reset`` (5 steps), ``disable_after`` (30 rewarded pulls), ``disable_below`` (posterior mean 0.15), ``only``
(variant ids to restrict to)}, ``evolution`` = {``traffic`` (0.10), ``min_trials`` (20 rewarded pulls before a
candidate is judged), ``confidence`` (0.95)}.

After the rewards of a run, each candidate of the classes rewarded is compared with the class's
incumbent: promoted when its posterior beats the incumbent's with probability >= ``confidence``,
retired when it is below with that probability.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from immunity import taxonomy as tx
from immunity.defaults.policy import DefaultSelector
from immunity.errors import PluginError
from immunity.interventions.bandit import (
    PULLS,
    BanditStore,
    Pull,
    class_key,
    context_key,
    position_bucket,
    thompson_pick,
)
from immunity.interventions.evolution import Evolution
from immunity.interventions.variants import Variant, VariantCatalog, default_variant, render, verifier_variant
from immunity.models import (
    Event,
    EventKind,
    Intervention,
    InterventionKind,
    Outcome,
    Run,
    Severity,
    Verdict,
    now,
)
from immunity.state import RunState

log = logging.getLogger("immunity.interventions")

PLUGIN = "immunity.interventions"

#: Escalation per class: the n-th firing of the class in a run uses the n-th kind (the last repeats).
DEFAULT_LADDER: dict[str, list[str]] = {
    tx.LOOP: ["hint", "block", "stop"],
    tx.NO_PROGRESS: ["warn", "hint", "hint", "stop"],
    tx.REPEATED_TOOL_ERROR: ["hint", "hint", "block", "stop"],
    tx.DEPENDENCY_CASCADE: ["block"],
    tx.UNSAFE_ACTION: ["block", "ask_human", "stop"],
    tx.POLICY_VIOLATION: ["hint", "block", "ask_human"],
    tx.RUNAWAY_COST: ["hint", "block", "stop"],
    tx.CLEANUP_SPIRAL: ["hint", "hint", "stop"],
    "*": ["hint"],
}

_ORDER = [InterventionKind.WARN, InterventionKind.HINT, InterventionKind.BLOCK, InterventionKind.ASK_HUMAN,
          InterventionKind.STOP]
_LADDER_KINDS = {k.value for k in _ORDER}


def _rank(kind: InterventionKind) -> int:
    return _ORDER.index(kind)


def parse_ladder(spec: Any) -> dict[str, list[InterventionKind]]:
    """``DEFAULT_LADDER`` with ``spec`` ({class: [kind, ...]}) merged over it; raises on an unknown kind."""
    merged: dict[str, list[str]] = {**DEFAULT_LADDER, **dict(spec or {})}
    out: dict[str, list[InterventionKind]] = {}
    for cls, kinds in merged.items():
        if isinstance(kinds, str):
            kinds = [kinds]
        bad = [k for k in kinds if k not in _LADDER_KINDS]
        if bad or not kinds:
            raise ValueError(f"ladder[{cls!r}]: {bad or 'empty'}; use a list of {sorted(_LADDER_KINDS)}")
        out[cls] = [InterventionKind(k) for k in kinds]
    return out


def escalates(config: Any) -> bool:
    """Whether the ``bandit`` selector of ``config`` runs its escalation ladder (``bandit={"escalate":
    True}``, or a ``ladder`` option) instead of keeping to the rules' choice of action."""
    options = getattr(config, "options", None) or {}
    flag = (options.get("bandit") or {}).get("escalate") if isinstance(options.get("bandit"), dict) else None
    return bool(flag) if flag is not None else options.get("ladder") is not None


def last_output(state: RunState) -> str | None:
    """The last thing the model said (or, failing that, the last tool result) in the run."""
    for step in reversed(state.steps):
        if step.tool is None and step.text and not step.data.get("blocked"):
            return step.text
    for step in reversed(state.steps):
        if step.result and not step.failed:
            return f"{step.tool} returned: {step.result}"
    return None


def stop_answer(state: RunState, reason: str, limit: int = 1500, *, last: str | None = None) -> str:
    """A final answer for a run immunity stops: why it stopped, and the best result it had
    (``last``, or the model's last message, or the last successful tool result)."""
    last = last or last_output(state)
    text = f"I stopped before finishing this task: {reason}."
    if last:
        last = " ".join(last.split())
        text += f" The last result I had: {last[:limit]}{'...' if len(last) > limit else ''}"
    else:
        text += " I had no result to give yet."
    return text


#: ``state.extras`` key: (the text the bandit sent, the rules' text for the same hint)
_REWORDED = "interventions.reworded"


class _RulesView:
    """A run's state as the rules alone would have left it: the same, except that the last hint is
    the rules' wording of a hint the bandit reworded (so the rules' "never the same hint twice in a
    row" holds back exactly what it would have held back without the bandit)."""

    def __init__(self, state: RunState):
        self._state = state
        sent, rules_text = state.extras.get(_REWORDED) or (None, None)
        self.last_hint = rules_text if sent is not None and state.last_hint == sent else state.last_hint

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


class BanditSelector:
    """The ``bandit`` selector (``Runtime(selector="bandit")``)."""

    def __init__(self, config: Any, store: Any = None, *, runtime: Any = None):
        self.config = config
        #: the runtime that built this selector (its plugin manager resolves pack names)
        self.runtime = runtime
        options = dict(getattr(config, "options", None) or {})
        self.options = options
        bandit_opts = dict(options.get("bandit") or {})
        self.min_context_pulls = int(bandit_opts.get("min_context_pulls", 10))
        self.borrow = float(bandit_opts.get("borrow", 10.0))
        self.disable_after = int(bandit_opts.get("disable_after", 30))
        self.disable_below = float(bandit_opts.get("disable_below", 0.15))
        self.only = set(bandit_opts.get("only") or [])
        self.escalate = escalates(config)
        self.warmup = int(bandit_opts.get("warmup", 5))
        #: the rules' decision, which the constrained selector never goes beyond
        self.rules = DefaultSelector(config, store)
        self.ladder = parse_ladder(options.get("ladder"))
        self.ladder_reset = int(bandit_opts.get("ladder_reset", 5))
        self.rng = random.Random(options.get("seed"))
        self.store = store
        self.bandit = BanditStore(store)
        self.catalog: VariantCatalog | None = None
        self.evolution = Evolution(options.get("evolution"), store)
        self._loaded = False
        self._lock = threading.RLock()
        self._pending: dict[str, list[tuple[Pull, Variant]]] = {}
        self._pulls_table: bool | None = None
        self.errors: list[str] = []

    # ------------------------------------------------------------------ fail-open
    def _fail(self, run: Run | None, where: str, exc: BaseException) -> None:
        """Record a problem with the bandit's store or catalogue and go on in memory."""
        msg = f"{type(exc).__name__}: {exc}"
        self.errors.append(f"{where}: {msg}")
        log.warning("immunity intervention bandit failed in %s (run %s): %s; going on without persistence", where,
                    run.run_id if run else "-", msg)
        if run is not None:
            errs = run.metadata.setdefault("plugin_errors", [])
            if len(errs) < 50:
                errs.append({"plugin": PLUGIN, "hook": f"bandit.{where}", "error": msg})
        if self.store is not None:
            try:
                self.store.save("plugin_errors", {"run_id": run.run_id if run else None, "plugin": PLUGIN,
                                                  "hook": f"bandit.{where}", "error": msg, "ts": now()})
            except Exception as inner:  # pragma: no cover - the store is the thing that is broken
                log.warning("could not record the bandit error either: %s", inner)
        if getattr(self.config, "fail_closed", False):
            raise PluginError(PLUGIN, f"bandit.{where}: {msg}") from exc

    def _ensure_loaded(self, run: Run | None) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            self.catalog = VariantCatalog.build(self.config, self._packs(run))
        except Exception as exc:
            self.catalog = VariantCatalog.build(None, ())
            self._fail(run, "variants", exc)
        try:
            self.bandit.load()
        except Exception as exc:
            self.bandit.broken = f"{type(exc).__name__}: {exc}"
            self._fail(run, "load", exc)
        try:
            self.catalog.extend(self.evolution.load())
        except Exception as exc:
            self.evolution.lineage.db = None  # go on with the hand-written variants only
            self._fail(run, "evolution", exc)

    def _packs(self, run: Run | None) -> list[Any]:
        refs = list(getattr(self.config, "packs", None) or [])
        if not refs:
            return []
        from immunity.learning.packs import installed_packs, resolve_pack

        packs = []
        registry: dict[str, Any] | None = None
        for ref in refs:
            try:
                try:
                    packs.append(resolve_pack(ref, dict(installed_packs())))
                except Exception:
                    if registry is None:
                        registry = self._pack_registry()
                    packs.append(resolve_pack(ref, registry))
            except Exception as exc:
                self._fail(run, "packs", exc)
        return packs

    def _pack_registry(self) -> dict[str, Any]:
        pm = getattr(self.runtime, "pm", None)
        if pm is None:  # built by hand, outside a runtime
            from immunity.plugins import get_plugin_manager

            pm = get_plugin_manager()
        registry: dict[str, Any] = pm.registry("pattern_packs")
        return registry

    # ------------------------------------------------------------------ ladder
    def _level(self, cls: str, event: Event, state: RunState) -> int:
        """Count this firing of ``cls`` (once per step) and return its 0-based rung."""
        fired: dict[str, list[int]] = state.extras.setdefault("interventions.ladder", {})
        # a pending tool call is the next step; any other event is about the last one
        index = state.n_steps if event.kind in (EventKind.TOOL_START, EventKind.MODEL_START) else state.n_steps - 1
        count, last = fired.get(cls, [0, -1])
        if last != index:
            if last >= 0 and index - last > self.ladder_reset:
                count = 0  # the class went quiet for a while: this is a new episode, not the same one going on
            count, last = count + 1, index
            fired[cls] = [count, last]
        return max(0, count - 1)

    def ladder_kind(self, cls: str, level: int) -> InterventionKind:
        rungs = self.ladder.get(cls) or self.ladder["*"]
        return rungs[min(level, len(rungs) - 1)]

    # ------------------------------------------------------------------ select
    def select(self, verdicts: list[Verdict], event: Event, run: Run, state: RunState) -> Intervention | None:
        if not self.escalate:
            return self._constrained(verdicts, event, run, state)
        v = verdicts[0]
        cls = v.error_class or tx.TOOL_ERROR
        with self._lock:
            self._ensure_loaded(run)
            level = self._level(cls, event, state)
            kind = self.ladder_kind(cls, level)
            floor = InterventionKind.WARN
            if v.severity == Severity.CRITICAL:
                floor = InterventionKind.STOP
            elif v.block:
                floor = InterventionKind.BLOCK
            if _rank(floor) > _rank(kind):
                kind = floor
            at_tool = event.kind == EventKind.TOOL_START
            if kind in (InterventionKind.BLOCK, InterventionKind.ASK_HUMAN) and not at_tool:
                kind = InterventionKind.HINT
            source = f"bandit:ladder[{cls}][{level}]"
            tool = event.tool or (state.last_step.tool if state.last_step else None)
            error = event.error or (state.last_step.error if state.last_step else None)
            base: dict[str, Any] = dict(error_class=cls, verdict_plugin=v.plugin, pattern_id=(v.evidence or {}).get("pattern_id"),
                        source=source)

            if kind == InterventionKind.STOP:
                reason = v.message or tx.hint(cls)
                return Intervention(kind=kind, text=stop_answer(state, f"{reason} ({cls})"), variant="stop", **base)
            if kind == InterventionKind.ASK_HUMAN:
                question = f"[immunity] {v.message or cls}. Should {tool or 'this action'} run?"
                if v.hint:
                    question += f" ({v.hint})"
                return Intervention(kind=kind, text=question, variant="ask_human", **base)
            if kind == InterventionKind.BLOCK:
                text = v.hint or render(self._fallback_variant(cls), v, tool=tool, error=error)
                return Intervention(kind=kind, text=text, variant="block", **base)
            if kind == InterventionKind.WARN:
                return Intervention(kind=kind, text=v.hint or v.message or cls, variant="ladder-warn", **base)
            return self._hint(v, cls, run, state, tool, error, base)

    # ------------------------------------------------------------------ constrained
    def _constrained(self, verdicts: list[Verdict], event: Event, run: Run, state: RunState) -> Intervention | None:
        """The rules' decision; for a hint, the wording the bandit picks among those of the class."""
        rules = self.rules.select(verdicts, event, run, _RulesView(state))  # type: ignore[arg-type]
        if rules is None or rules.kind != InterventionKind.HINT:
            return rules  # stop, block, held back: exactly as the rules decided
        v = verdicts[0]
        cls = v.error_class or tx.TOOL_ERROR
        rules_id = default_variant(cls).variant_id
        with self._lock:
            self._ensure_loaded(run)
            tool = event.tool or (state.last_step.tool if state.last_step else None)
            error = event.error or (state.last_step.error if state.last_step else None)
            cands = self._candidates(v, cls, run, constrained=True)
            texts = {c.variant_id: rules.text if c.variant_id == rules_id else render(c, v, tool=tool, error=error)
                     for c in cands}
            fresh = [c.variant_id for c in cands if texts[c.variant_id] != state.last_hint]
            restricted = bool(self.only) and any(c.variant_id in self.only for c in cands)
            evidence = self._class_evidence(cls)
            if not restricted and evidence < self.warmup:
                pool, why = [rules_id], f"cold start, {evidence} of {self.warmup} rewarded pulls"
            else:
                established, trying = self.evolution.split(fresh)
                pool = self.evolution.choose_pool(established, trying, self.rng) or fresh
                why = "learned wording"
            if not pool:  # every wording asked for would repeat the last hint: the rules' own one
                pool, why = [rules_id], "the rules' wording"
            position = position_bucket(state.n_steps)
            ctx = context_key(run.domain, cls, position, run.framework)
            vid = pool[0]
            if len(pool) > 1:
                try:
                    vid, _draw = thompson_pick(pool, self.bandit.arms, ctx, class_key(cls), self.rng,
                                               min_context_pulls=self.min_context_pulls, borrow=self.borrow)
                except Exception as exc:  # pragma: no cover - defensive: a broken arm table must not stop the hint
                    self._fail(run, "sample", exc)
            variant = next((c for c in cands if c.variant_id == vid), None) or default_variant(cls)
            text = texts.get(vid) or rules.text
            iv = Intervention(kind=InterventionKind.HINT, text=text, variant=vid, error_class=rules.error_class,
                              verdict_plugin=rules.verdict_plugin, pattern_id=rules.pattern_id,
                              source=f"bandit:{why}")
            state.extras["interventions.last_variant"] = vid
            state.extras[_REWORDED] = (text, rules.text)
            pull = Pull(iv.intervention_id, run.run_id, vid, cls, ctx, state.n_steps)
            self._pending.setdefault(run.run_id, []).append((pull, variant))
            return iv

    def _class_evidence(self, cls: str) -> int:
        """Rewarded pulls of ``cls`` over all its variants (class-level arms)."""
        key = class_key(cls)
        return sum(arm.rewarded for (ctx, _vid), arm in list(self.bandit.arms.items()) if ctx == key)

    def _fallback_variant(self, cls: str) -> Variant:
        assert self.catalog is not None
        return self.catalog.for_class(cls, None)[0]

    def _candidates(self, v: Verdict, cls: str, run: Run, *, constrained: bool = False) -> list[Variant]:
        assert self.catalog is not None
        cands = self.catalog.for_class(cls, run.domain)
        if constrained:
            cands.insert(0, default_variant(cls))  # the rules' wording (the verifier's hint when it has one)
        elif v.hint:
            cands.append(verifier_variant(cls))
        if self.only:
            restricted = [c for c in cands if c.variant_id in self.only]
            cands = restricted or cands
        hidden = self.evolution.hidden()
        cands = [c for c in cands if c.variant_id not in hidden]
        disabled = self.bandit.disabled(cls)
        enabled = [c for c in cands if c.variant_id not in disabled]
        return enabled or cands

    def _hint(self, v: Verdict, cls: str, run: Run, state: RunState, tool: str | None, error: str | None,
              base: dict[str, Any]) -> Intervention:
        cfg = self.config
        held: str | None = None
        if state.interventions >= cfg.max_interventions:
            held = f"cap of {cfg.max_interventions} interventions per run reached"
        elif state.last_intervention_step is not None and \
                state.n_steps - state.last_intervention_step < cfg.cooldown_steps:
            held = f"cooldown of {cfg.cooldown_steps} step(s)"
        cands = self._candidates(v, cls, run)
        texts = {c.variant_id: render(c, v, tool=tool, error=error) for c in cands}
        last_variant = state.extras.get("interventions.last_variant")
        fresh = [c.variant_id for c in cands if texts[c.variant_id] != state.last_hint and c.variant_id != last_variant]
        pool = fresh
        if held is None and fresh:
            established, trying = self.evolution.split(fresh)
            pool = self.evolution.choose_pool(established, trying, self.rng)
        if held is None and not pool:
            held = "every variant would repeat the last hint"
        if held is not None:
            text = texts.get(last_variant or "", "") or next(iter(texts.values()))
            return Intervention(kind=InterventionKind.WARN, text=text, variant=None,
                                **{**base, "source": f"{base['source']}; held back: {held}"})
        position = position_bucket(state.n_steps)
        ctx = context_key(run.domain, cls, position, run.framework)
        try:
            vid, _draw = thompson_pick(pool, self.bandit.arms, ctx, class_key(cls), self.rng,
                                       min_context_pulls=self.min_context_pulls, borrow=self.borrow)
        except Exception as exc:  # pragma: no cover - defensive: a broken arm table must not stop the hint
            self._fail(run, "sample", exc)
            vid = pool[0]
        variant = next(c for c in cands if c.variant_id == vid)
        iv = Intervention(kind=InterventionKind.HINT, text=texts[vid], variant=vid, **base)
        state.extras["interventions.last_variant"] = vid
        pull = Pull(iv.intervention_id, run.run_id, vid, cls, ctx, state.n_steps)
        self._pending.setdefault(run.run_id, []).append((pull, variant))
        return iv

    # ------------------------------------------------------------------ learn
    def update(self, run: Run, session: Any = None) -> None:
        """Persist the run's pulls and reward them with its outcome (called when a run ends and when
        its outcome is set later). Never raises unless fail-closed."""
        with self._lock:
            reward = {Outcome.SUCCESS: 1, Outcome.FAILURE: 0}.get(run.outcome)
            if run.run_id not in self._pending and (reward is None or not self._loaded and not self._has_pulls()):
                # nothing chosen in this run here, and nothing to reward (no outcome, or no pulls in the
                # store): the store is not touched, so a run end costs nothing when the bandit chose nothing
                return
            self._ensure_loaded(run)
            pending = self._pending.pop(run.run_id, [])
            pulls = [p for p, _ in pending]
            variants = list({v.variant_id: v for _, v in pending}.values())
            try:
                self.bandit.record_pulls(pulls, variants)
                changed = self.bandit.reward_run(run.run_id, reward) if reward is not None else []
            except Exception as exc:
                self.bandit.broken = f"{type(exc).__name__}: {exc}"
                self._fail(run, "update", exc)
                changed = self.bandit.reward_run(run.run_id, reward) if reward is not None else []
            for vid, cls in sorted({(p.variant, p.error_class) for p in changed}):
                try:
                    self._maybe_disable(vid, cls)
                except Exception as exc:
                    self._fail(run, "disable", exc)
            for cls in sorted({p.error_class for p in changed}):
                try:
                    self.evolution.judge(cls, self.bandit.arms)
                except Exception as exc:
                    self._fail(run, "evolution", exc)

    def _has_pulls(self) -> bool:
        """Whether the store has the bandit's pulls table (a run resumed from another process may have
        pulls there). Asked once per selector: a store that had none when this process first looked
        gets pulls only through this selector (which then loads), and the question is not put to the
        database at every run end (with a database server, that would wait on it on the user's thread)."""
        if self._pulls_table is None:
            db = getattr(self.store, "db", None)
            try:
                self._pulls_table = db is not None and PULLS in db.table_names()
            except Exception:  # a broken store: let the full path record the error
                return True
        return self._pulls_table

    def _maybe_disable(self, vid: str, cls: str) -> None:
        arm = self.bandit.arms.get((class_key(cls), vid))
        if arm is None or arm.disabled or arm.rewarded < self.disable_after or arm.mean >= self.disable_below:
            return
        assert self.catalog is not None
        pool = {v.variant_id for v in self.catalog.variants.values() if v.error_class == cls}
        pool |= {v.variant_id for v in self.catalog.for_class(cls, None)}
        pool |= {other for (ctx, other) in self.bandit.arms if ctx == class_key(cls)}
        if not pool - self.bandit.disabled(cls) - {vid}:
            return  # never disable the last enabled variant of a class
        reason = (f"posterior mean {arm.mean:.3f} below {self.disable_below} after {arm.rewarded} rewarded pulls "
                  f"({arm.successes} successes)")
        self.bandit.disable(vid, cls, reason)
        log.info("intervention variant %s disabled: %s", vid, reason)
