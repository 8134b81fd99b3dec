"""The plugin hooks every domain package needs, in one place.

A domain package registers its :class:`~immunity.domain.Domain` and its pattern packs, copies its
options (``Config.options[<domain name>]``) into the per-run memo its checks read when a run of
that domain starts, and keeps that memo up to date after each completed step. Core calls the
hooks of one event in the order observe -> observe_step -> verify, so the memo is current when
the domain's checks run.

::

    from immunity.domain_plugin import make_domain_plugin

    PLUGIN = make_domain_plugin(DOMAIN, packs={"coding-basics": PACK}, memo=checks.memo, track=checks.track)
    # the package module is the registered plugin: re-export the hooks at module level
    immunity_register_domains = PLUGIN.immunity_register_domains
    immunity_register_pattern_packs = PLUGIN.immunity_register_pattern_packs
    immunity_observe = PLUGIN.immunity_observe
    immunity_observe_step = PLUGIN.immunity_observe_step

The object can also be registered as a plugin by itself (``Runtime(plugins=[PLUGIN])``) when the
domain does not come from an installed package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any

import pluggy

from immunity.domain import Domain
from immunity.models import Event, EventKind, Run, Step
from immunity.state import RunState

hookimpl = pluggy.HookimplMarker("immunity")

#: ``memo(state) -> dict``: the domain's per-run memo (created on first use); its ``"opts"`` key
#: receives the run's options.
Memo = Callable[[RunState], dict[str, Any]]
#: ``track(step, run, state)``: fold one completed step of a run of this domain into the memo.
Track = Callable[[Step, Run, RunState], None]
#: ``on_event(event, run, state)``: anything else the domain reads from the events of its runs.
OnEvent = Callable[[Event, Run, RunState], None]


def _inline(fn: Any) -> Any:
    """Core's own per-event hook code (O(1), never blocks): called on the caller's thread, with
    no deadline thread hop (see :mod:`immunity.hookcall`); the step budget still measures it."""
    fn.immunity_inline = True
    return fn


class DomainPlugin:
    """The hooks of one domain; built by :func:`make_domain_plugin`. Every hook other than the
    registrations only acts on runs of this domain."""

    def __init__(self, domain: Domain, *, packs: Mapping[str, str | PathLike[str]] | None = None,
                 memo: Memo | None = None, track: Track | None = None, on_event: OnEvent | None = None,
                 options_key: str | None = None):
        self.domain = domain
        self.name = domain.name
        #: the per-event hooks are called for runs of this domain only (see ``PluginManager.call``)
        self.immunity_domains = frozenset({domain.name})
        self.packs = {name: str(path) for name, path in (packs or {}).items()}
        self.memo = memo
        self.track = track
        self.on_event = on_event
        self.options_key = options_key or domain.name

    def options(self, session: Any) -> dict[str, Any]:
        """This domain's options in the runtime's configuration (``{}`` when none are set)."""
        opts = session.runtime.config.options.get(self.options_key) if session is not None else None
        return dict(opts or {})

    @hookimpl
    def immunity_register_domains(self, register: Any) -> None:
        register(self.name, self.domain)

    @hookimpl
    def immunity_register_pattern_packs(self, register: Any) -> None:
        for name, path in self.packs.items():
            register(name, path)

    @hookimpl
    @_inline
    def immunity_observe(self, event: Event, run: Run, state: RunState, session: Any) -> None:
        """Read the options once, when a run of this domain starts; pass events on to ``on_event``."""
        if run.domain != self.name:
            return
        if self.memo is not None and (event.kind == EventKind.RUN_START or "opts" not in self.memo(state)):
            # at the start of a run, or on the first event of a run resumed in another process
            self.memo(state)["opts"] = self.options(session)
        if self.on_event is not None:
            self.on_event(event, run, state)

    @hookimpl
    @_inline
    def immunity_observe_step(self, step: Step, run: Run, state: RunState, session: Any) -> None:
        """Keep the per-run memo the checks read (O(1) per step)."""
        if run.domain == self.name and self.track is not None:
            self.track(step, run, state)


def make_domain_plugin(domain: Domain, *, packs: Mapping[str, str | PathLike[str]] | None = None,
                       memo: Memo | None = None, track: Track | None = None, on_event: OnEvent | None = None,
                       options_key: str | None = None) -> DomainPlugin:
    """The plugin hooks of ``domain``.

    :param packs: pattern packs to register, by name (data files; nothing is loaded until used).
    :param memo: the domain's per-run memo; when given, ``memo(state)["opts"]`` receives a copy
        of ``Config.options[options_key]`` when a run of this domain starts.
    :param track: called with every completed step of a run of this domain.
    :param on_event: called with every event of a run of this domain (after the options are read).
    :param options_key: the key of the options in ``Config.options`` (default: the domain's name).
    """
    return DomainPlugin(domain, packs=packs, memo=memo, track=track, on_event=on_event, options_key=options_key)
