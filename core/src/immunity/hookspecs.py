"""Every hook immunity calls, in one place, grouped by phase.

Conventions (the same as pytest's and llm's):

- Hooks are always called with keyword arguments; an implementation may accept any subset of them.
- The same argument name always means the same type: ``event`` is an :class:`~immunity.models.Event`,
  ``step`` a :class:`~immunity.models.Step` (or ``None`` when the event does not complete a step),
  ``run`` a :class:`~immunity.models.Run`, ``state`` the run's :class:`~immunity.state.RunState`,
  ``config`` the :class:`~immunity.config.Config`, ``session`` the run's
  :class:`~immunity.runtime.RunSession`, ``register`` a callback.
- Every hook is called through pluggy's own call path (``wrapper=True`` implementations,
  ``firstresult`` and ``IMMUNITY_TRACE_PLUGINS`` work as in pytest) with each implementation
  isolated the same way, lifecycle and registration hooks included: whatever it raises (any
  exception but ``KeyboardInterrupt`` / ``SystemExit``) is logged and recorded (on the run, in the
  store's ``plugin_errors``, on its ``immunity plugins`` line for lifecycle and registration hooks)
  and the call goes on as if it had returned ``None`` (unless fail-closed was chosen). A result of
  the wrong type is reported and dropped, so a decision hook asks the next implementation.
- Deadlines and budget: a plugin's per-event hook call (observe, observe_step, map_action,
  verify, intervene, recover) is charged its wall time minus garbage-collection pauses against
  ``Config.step_budget_ms``. Plugins run on a worker thread and are abandoned for the call when
  they overrun it (configure / unconfigure / registration hooks: ``Config.hook_timeout_ms``);
  after ``Config.max_overruns`` overruns a plugin is skipped for the rest of the runtime's life
  (``run.metadata["skipped_plugins"]``, ``immunity runs show``). Core's built-ins, plugins that set
  ``immunity_inline = True`` (on the plugin or a hook function) and plugins that carry their own
  timeout (``immunity_budget_exempt = True``) are called on the caller's thread; built-ins are
  never skipped. A plugin on a worker thread should not call the session's methods that take its
  lock (``add_hint``, ``checkpoint``): return a verdict or an intervention instead.
- Dispatch: an implementation may declare what it handles, on the hook function or on the plugin
  object: ``immunity_kinds`` (event kinds: a call that passes an ``event`` of another kind skips
  it) and ``immunity_domains`` (run domains: a call that passes a ``run`` of another domain, or of
  none, skips it). An implementation that declares nothing gets every call. The implementations
  called per (hook, kind, domain) are worked out once (pluggy's ``subset_hook_caller``), so a
  declaration saves the call, not just the work inside it; wrappers and tracing see what is called.
  A plugin switched off by its configuration may say so with ``immunity_active(config) -> bool``
  on the plugin object: a runtime asks once, after ``immunity_configure``, and leaves a plugin
  that answers no out of its per-event hook calls (one whose check raises counts as active).
  When only core's built-ins remain for a per-event call (no wrapper, no other plugin, no
  tracing), they are called directly in pluggy's order, through the same guards.
- Decision hooks (intervene, recover, map_action) stop at the first non-``None`` result. Core's own
  defaults are ``trylast``, so an installed plugin wins.
- Order per event (guaranteed): ``immunity_observe`` -> ``immunity_observe_step`` (when the event
  completes a step) -> ``immunity_verify`` -> ``immunity_intervene`` (when a verdict failed) ->
  ``immunity_recover`` (when the event is an error or a failed tool result). So a verifier may rely
  on what its own observe hooks recorded for the same event.
- Registration hooks receive ``register(name, obj)``; registering a name another plugin already
  registered raises :class:`~immunity.errors.PluginCollisionError` naming both plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from immunity.config import Config
    from immunity.domain import ActionMapping, Domain
    from immunity.models import Event, Intervention, Recovery, Run, Step, Verdict
    from immunity.runtime import RunSession
    from immunity.slo import Alert
    from immunity.state import RunState

hookspec = pluggy.HookspecMarker("immunity")

# ---------------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------------


@hookspec
def immunity_configure(config: Config) -> None:
    """Called once when a runtime is created, after every plugin is registered.

    :param config: the runtime's configuration; plugins may read their own options from
        ``config.options``.
    :returns: nothing.
    """


@hookspec
def immunity_unconfigure(config: Config) -> None:
    """Called once when a runtime is closed, before the store is flushed and closed.

    :param config: the same configuration object ``immunity_configure`` received.
    :returns: nothing.
    """


# ---------------------------------------------------------------------------------------------
# Observe
# ---------------------------------------------------------------------------------------------


@hookspec
def immunity_observe(event: Event, run: Run, state: RunState, session: RunSession) -> None:
    """Called for every event of every run, before verification. Broadcast.

    :param event: the event as the adapter translated it.
    :param run: the run it belongs to (``run.steps``, tokens and cost so far are up to date).
    :param state: the run's incremental signals, already updated with this event.
    :param session: the run's :class:`~immunity.runtime.RunSession` (its ``runtime``, store, checkpoints).
    :returns: nothing; return values are ignored.
    """


@hookspec
def immunity_observe_step(step: Step, run: Run, state: RunState, session: RunSession) -> None:
    """Called when an event completes a step (a tool call with its result, a message, a handoff,
    a final answer), after the step's action type is mapped. Broadcast.

    :param step: the completed step, with ``action_type`` set by the domain.
    :param run: the run.
    :param state: the run's signals, already updated with this step.
    :param session: the run's :class:`~immunity.runtime.RunSession`.
    :returns: nothing.
    """


@hookspec(firstresult=True)
def immunity_map_action(tool: str | None, arguments: dict[str, Any] | None, text: str | None,
                        run: Run, domain: Domain | None) -> ActionMapping | None:
    """Map a native action to a universal action type. Stops at the first non-``None`` result.

    Core's default (``trylast``) asks the run's domain (see ``immunity_register_domains``) and
    falls back to a name-and-argument heuristic.

    :param tool: the tool's name, or ``None`` for a plain model message.
    :param arguments: the tool's arguments (a dict), or ``None``.
    :param text: the message text for a model message, or ``None``.
    :param run: the run (``run.domain`` names its domain).
    :param domain: the run's :class:`~immunity.domain.Domain` if one is registered under
        ``run.domain``, else ``None``.
    :returns: an :class:`~immunity.domain.ActionMapping` or ``None`` to let the next plugin decide.
    """


# ---------------------------------------------------------------------------------------------
# Verify
# ---------------------------------------------------------------------------------------------


@hookspec
def immunity_verify(event: Event, step: Step | None, run: Run, state: RunState,
                    session: RunSession) -> Verdict | list[Verdict] | None:
    """Check an event. Broadcast: every implementation's verdicts are collected.

    Called on ``tool_start`` (arguments, before the tool runs: a verdict with ``block=True``
    stops it), on ``tool_end`` (the result), on ``model_end`` (the model's output) and on
    ``final_answer``.

    :param event: the event to check.
    :param step: for ``tool_start`` the step about to happen (mapped, not yet in ``state``), for
        events that complete a step that step, otherwise ``None``.
    :param run: the run.
    :param state: the run's signals so far.
    :param session: the run's :class:`~immunity.runtime.RunSession`.
    :returns: a :class:`~immunity.models.Verdict`, a list of them, or ``None`` (nothing to say).
        Returning anything else is reported as a plugin error and ignored.
    """


# ---------------------------------------------------------------------------------------------
# Intervene
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def immunity_intervene(verdicts: list[Verdict], event: Event, run: Run, state: RunState,
                       session: RunSession) -> Intervention | None:
    """Decide what to do about failed verdicts. Stops at the first non-``None`` result.

    Called only when at least one verdict is not ok. Core's default policy (``trylast``) turns
    a blocking verdict into a block, a critical one into a stop, and the rest into a hint for the
    next model call, through the configured intervention selector and its tolerance limits.

    :param verdicts: the failed verdicts for this event, most severe first.
    :param event: the event they are about.
    :param run: the run.
    :param state: the run's signals.
    :param session: the run's :class:`~immunity.runtime.RunSession`.
    :returns: an :class:`~immunity.models.Intervention` or ``None`` (do nothing).
    """


@hookspec
def immunity_propose_variants(error_class: str, examples: list[str], n: int, config: Config) -> list[str] | None:
    """Propose new hint wordings for ``error_class`` (an LLM plugin's job). Broadcast: every
    implementation's list is collected. Called offline only, by ``immunity interventions evolve``,
    never on the per-step path.

    What comes back is untrusted text: it is sanitised (redacted, clipped, rejected when it holds a
    ``<tool-output>`` delimiter, a link, code, a role marker, credentials or an action outside a
    hint's purpose; see :func:`immunity.interventions.evolution.sanitize_proposal`) and stored as
    ``proposed``, reaching no prompt until approved.

    :param error_class: the taxonomy class the hints are for.
    :param examples: the class's hand-written hint templates (placeholders ``{tool}``, ``{error}``,
        ``{message}``, ``{class_hint}`` may be used in proposals).
    :param n: how many proposals are wanted.
    :param config: the runtime configuration (a plugin reads its model settings from its options).
    :returns: a list of hint texts, or ``None``.
    """


# ---------------------------------------------------------------------------------------------
# Recover
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def immunity_recover(event: Event, verdicts: list[Verdict], run: Run, state: RunState,
                     session: RunSession) -> Recovery | None:
    """Decide how to recover from an error (a failed tool call, a failed model call, a step that
    failed verification). Stops at the first non-``None`` result.

    Core's default (``trylast``) retries with a typed hint and aborts when the run's circuit
    breaker opens (too many failed steps in a row).

    :param event: the failing event (``event.error`` says what went wrong).
    :param verdicts: failed verdicts about it, if any.
    :param run: the run.
    :param state: the run's signals.
    :param session: the run's :class:`~immunity.runtime.RunSession`.
    :returns: a :class:`~immunity.models.Recovery` or ``None``.
    """


# ---------------------------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------------------------


@hookspec
def immunity_deliver_alert(alert: Alert, delivery: dict[str, Any]) -> str | None:
    """Deliver a burn-rate alert that just started firing (see :mod:`immunity.slo`). Broadcast:
    every implementation is called, each isolated (one failing delivery does not stop the others);
    an alert that keeps firing is delivered once.

    Core's built-in (``trylast``) logs the alert and, when ``delivery["webhook"]`` is set, POSTs it
    as JSON there. Add chat, paging or ticket deliveries in a plugin.

    :param alert: the :class:`~immunity.slo.Alert` (SLO, severity, windows, burn rates, bad runs,
        message).
    :param delivery: the ``[alerts]`` table of the SLO file (``webhook``, ``timeout_s`` and any
        option a delivery plugin reads).
    :returns: a short status string recorded with the alert, or ``None``.
    """


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


@hookspec
def immunity_register_adapters(register: Any) -> None:
    """Register framework adapters: ``register(name, adapter_class)``.

    An adapter class has ``framework`` (the distribution it instruments), ``supported`` (a version
    specifier), ``matches(obj) -> bool`` and ``instrument(runtime, target)`` /
    ``uninstrument()``. See :class:`immunity.adapter.Adapter`.
    """


@hookspec
def immunity_register_domains(register: Any) -> None:
    """Register domains: ``register(name, domain)`` where ``domain`` is an
    :class:`immunity.domain.Domain` (an action-mapping table plus checks)."""


@hookspec
def immunity_register_pattern_packs(register: Any) -> None:
    """Register pattern packs shipped by a plugin: ``register(name, path_or_pack)`` where the value
    is a path to a pack file or a :class:`~immunity.models.PatternPack`."""


@hookspec
def immunity_register_embedders(register: Any) -> None:
    """Register embedders: ``register(name, factory)``; ``factory(**options)`` returns an object
    with ``name`` (naming whatever changes its vectors), ``dimension`` and ``embed(texts: list[str])``
    returning an ``(n, dimension)`` float32 numpy array whose rows have length 1 (see
    :mod:`immunity.vectors`). Core's is ``hashing``."""


@hookspec
def immunity_register_vector_indexes(register: Any) -> None:
    """Register vector indexes: ``register(name, factory)``; ``factory(dimension, **options)``
    returns an object with ``name``, ``add(ids, vectors)``, ``search(vector, k) -> list[(id,
    similarity)]`` (cosine, best first) and ``__len__``. Core's is ``brute``; ``immunity-hnswlib``
    adds ``hnswlib``."""


@hookspec
def immunity_register_stores(register: Any) -> None:
    """Register stores: ``register(scheme, factory)``; ``factory(location)`` returns a store
    (see :class:`immunity.store.Store`). ``sqlite`` is core's default, also used for plain paths."""


@hookspec
def immunity_register_verifiers(register: Any) -> None:
    """Register named verifiers that the configuration can switch on: ``register(name, factory)``;
    ``factory(config)`` (or ``factory(config, runtime=...)`` if it takes ``runtime``) returns an
    object with ``verify(event, step, run, state)`` returning verdicts. Core's ``rules`` verifier is on by default; others only when named in
    ``Config.verifiers``."""


@hookspec
def immunity_register_selectors(register: Any) -> None:
    """Register intervention selectors: ``register(name, factory)``; ``factory(config, store)``
    (plus ``runtime=`` if it takes it) returns an object with ``select(verdicts, event, run, state) -> Intervention | None`` and
    ``update(run)`` (called when a run ends with an outcome)."""


@hookspec
def immunity_register_importers(register: Any) -> None:
    """Register trace importers: ``register(format_name, importer)`` where ``importer`` has
    ``detect(path, head) -> bool`` and ``read(path) -> iterator of ImportedRun | ImportProblem``."""


@hookspec
def immunity_register_bench_drivers(register: Any) -> None:
    """Register benchmark drivers: ``register(name, driver_class)``. A driver class subclasses
    :class:`immunity.bench.drivers.Driver`: ``name``, ``available() -> bool`` (is the framework
    installed) and ``run(task, tools, agent, runtime=None, real=False) -> RunResult``, which builds
    the framework's agent around a scripted model, protects it with ``runtime`` when given, runs
    it once and never raises. ``immunity bench closed-loop``, the chaos fleet and
    ``bench/bench_overhead.py`` run every registered driver; each adapter registers its own, so
    core imports no adapter."""


@hookspec
def immunity_register_commands(cli: click.Group) -> None:
    """Add commands to the ``immunity`` command line: ``@cli.command()`` on the given group."""


# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------


@hookspec
def immunity_register_redaction_patterns(register: Any) -> None:
    """Register secret detectors: ``register(name, regex)`` where ``regex`` is a pattern string
    (or a compiled ``re.Pattern``) matching text to mask before anything is stored, exported, quoted
    in a hint or written into a pack. Every registered pattern is folded with the built-in
    detectors into one compiled expression (see :mod:`immunity.redact`), so a pattern costs no
    extra pass; a match becomes ``[REDACTED:plugin_<name>]``. Registration runs once per runtime,
    never per event."""
