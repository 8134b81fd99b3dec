"""Built-in plugin: the ``patterns`` verifier, installed packs, and the learning commands
(``learn``, ``pack build|inspect|verify|install|merge|list``, ``score``, ``eval``, ``explain``)."""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pluggy

from immunity.errors import ImmunityError, PackError

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl
def immunity_register_verifiers(register: Any) -> None:
    from immunity.learning.matcher import PatternsVerifier

    register("patterns", PatternsVerifier)


@hookimpl
def immunity_register_pattern_packs(register: Any) -> None:
    from immunity.learning.packs import installed_packs

    for name, path in installed_packs().items():
        register(name, str(path))


# ------------------------------------------------------------------------------------------ helpers
def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _read(paths: tuple[str, ...], fmt: str, store: str | None, domain: str | None, *,
          mapping: bool = True) -> list[Any]:
    from immunity.learning.data import read_runs

    if not paths and not store:
        raise click.UsageError("give trace files (with --format) or --store")
    try:
        items = read_runs(list(paths), fmt, store=store, domain=domain, on_problem=lambda m: _err(f"warning: {m}"),
                          mapping=mapping)
    except (ValueError, FileNotFoundError, ImmunityError) as exc:
        raise click.ClickException(str(exc)) from None
    if not items:
        raise click.ClickException("no runs could be read from the input")
    return items


def _cfg(target_far: float, folds: int, min_similarity: float, seed: int, model: str = "logistic",
         sequence_k: int = 5) -> Any:
    from immunity.learning.learn import LearnConfig

    if not 0 < target_far < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--target-far")
    if folds < 2:
        raise click.BadParameter("must be at least 2", param_hint="--folds")
    if not -1.0 <= min_similarity <= 1.0:  # also refuses nan
        raise click.BadParameter("must be between -1 and 1", param_hint="--min-similarity")
    if model in ("trees", "auto"):
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise click.ClickException(f"--model {model} needs scikit-learn: pip install 'immunity[learn]'") from None
    return LearnConfig(target_far=target_far, folds=folds, min_similarity=min_similarity, seed=seed, model=model,
                       sequence_k=sequence_k)


def _input_options(f: Any) -> Any:
    f = click.option("--domain", default=None, help="Domain of runs that do not name one.")(f)
    f = click.option("--store", "store", default=None, help="Read runs from this immunity store (a SQLite path or postgresql://...).")(f)
    f = click.option("--format", "fmt", default="auto", show_default=True,
                     help="Trace format (tau-bench, mini-swe-agent, who-and-when, chat, immunity, ...).")(f)
    return click.argument("paths", nargs=-1, type=click.Path(exists=True))(f)


def _learn_options(f: Any) -> Any:
    f = click.option("--seed", default=0, show_default=True, help="Seed of the fold assignment.")(f)
    f = click.option("--min-similarity", default=0.8, show_default=True, type=click.FloatRange(-1.0, 1.0),
                     help="Cosine similarity a step needs to match a pattern.")(f)
    f = click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 100),
                     help="Cross-validation folds (split by task).")(f)
    f = click.option("--target-far", default=0.05, show_default=True,
                     help="Target false-alarm rate on successful runs for the threshold.")(f)
    f = click.option("--split", type=click.Choice(["task", "repo", "source", "agent"]), default="task",
                     show_default=True, help="Group runs by task, by repository (SWE-bench style ids), by source "
                                             "(leave-one-source-out) or by agent/model, for every split.")(f)
    f = click.option("--model", type=click.Choice(["logistic", "trees", "auto"]), default="logistic",
                     show_default=True, help="Risk model: logistic, gradient-boosted trees (needs the `learn` "
                                             "extra), or auto (the lower cross-validated log loss).")(f)
    f = click.option("--jobs", "-j", default=None, type=click.IntRange(1, 256),
                     help="Worker processes for the feature pass (default: the cores available). The result "
                          "does not depend on it.")(f)
    f = click.option("--sequence-k", default=5, show_default=True, type=click.IntRange(0, 50),
                     help="Successful and failed runs of similar tasks whose action sequences the risk model "
                          "compares with a run's (0: no sequence-distance inputs).")(f)
    return click.option("--embedder", default="hashing", show_default=True, help="Embedder plugin.")(f)


def _write_json(obj: Any, path: str | None) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if path:
        Path(path).write_text(text + "\n", encoding="utf-8")
    else:
        click.echo(text)


def _stem(path: str) -> str:
    return Path(path).name.split(".")[0]


def _domain_path(out: str, domain: str | None) -> str:
    """``packs/dev.json`` -> ``packs/dev-support.json`` (``.json.gz`` kept); a pack directory
    ``packs/dev`` -> ``packs/dev-support``."""
    p = Path(out)
    stem, _dot, suffix = p.name.partition(".")
    return str(p.with_name(f"{stem}-{domain or 'generic'}" + (f".{suffix}" if suffix else "")))


def _build(shared: dict[str, Any]) -> Any:
    from immunity.learning.pipeline import build_pack

    runs, emb = shared["collected"]
    return build_pack(runs, emb, shared["cfg"], **shared["options"])


def _pack_job(collected: tuple[list[Any], Any], cfg: Any, out: str, name: str | None, domain: str | None, *,
              paths: tuple[str, ...], store: str | None, split: str, pack_version: str,
              jobs: int | None) -> dict[str, Any]:
    """What :func:`_build` learns a pack from (here or in a process of its own)."""
    from immunity.learning.parallel import default_jobs

    return {"collected": collected, "cfg": cfg,
            "options": {"name": name or _stem(out), "version": pack_version, "domain": domain,
                        "sources": list(paths) + ([store] if store else []), "split": split,
                        "jobs": jobs or default_jobs()}}


def _learn_one(items: list[Any], domain: str | None, out: str, name: str | None, cfg: Any, *, paths: tuple[str, ...],
               store: str | None, embedder: str, split: str, pack_version: str, jobs: int | None,
               target_far: float, collected: tuple[list[Any], Any] | None = None,
               built: Callable[[], Any] | None = None) -> None:
    """Learn one pack and write it; ``built`` waits for a pack already being learned elsewhere
    (see :func:`_learn_files`)."""
    from immunity.learning.data import collect
    from immunity.learning.packs import save_pack
    from immunity.learning.parallel import default_jobs

    try:
        if collected is None:
            _err(f"collecting the features of {len(items)} runs" + (f" of domain {domain}" if domain else ""))
            collected = collect(items, split=split, embedder_spec={"plugin": embedder}, domain=domain,
                                jobs=jobs or default_jobs(), on_problem=lambda m: _err(f"warning: {m}"))
        else:
            _err(f"learning the pack of domain {domain} from {len(items)} runs")
        if built is None:
            built = functools.partial(_build, _pack_job(collected, cfg, out, name, domain, paths=paths, store=store,
                                                        split=split, pack_version=pack_version, jobs=jobs))
        pack, warnings = built()
    except (ValueError, ImmunityError) as exc:
        raise click.ClickException(f"domain {domain}: {exc}" if domain else str(exc)) from None
    for w in warnings:
        _err(f"WARNING: {w}")
    digest = save_pack(pack, out)
    t = pack.training
    inner = pack.metrics.get("inner_cv", {})
    click.echo(f"wrote {out}: {len(pack.patterns)} patterns from {t['failed_runs']} failed and "
               f"{t['successful_runs']} successful runs ({t['unknown_outcome_runs']} with no outcome, used for "
               f"features only); threshold {pack.threshold:.4f} for a {target_far:.0%} false-alarm target "
               f"(cross-validated, {inner.get('folds')} folds by {split}): recall before the end "
               f"{inner.get('inner_cv_recall_before_end')}, false-alarm rate "
               f"{inner.get('inner_cv_false_alarm_rate')}; {digest}")


def _per_domain_packs(domains: list[str | None], out: str, name: str | None) -> list[tuple[str | None, str, str]]:
    """(domain, path, pack name) of each domain's pack when the input has several domains: a pack
    learned across domains learns "this domain = failure", and a threshold calibrated on one domain
    does not hold on another."""
    _err(f"the input has {len(domains)} domains: writing one pack per domain (--all-domains for one "
         f"pack learned on them all)")
    return [(d, _domain_path(out, d), f"{name or _stem(out)}-{d or 'generic'}") for d in sorted(domains, key=str)]


def _learn_files(paths: tuple[str, ...], fmt: str, domain: str | None, all_domains: bool, cfg: Any, *, out: str,
                 name: str | None, embedder: str, split: str, pack_version: str, jobs: int | None,
                 target_far: float) -> None:
    """``learn`` from trace files: one pass of worker processes reads them and computes the
    features (:func:`~immunity.learning.data.read_features`), then a pack per domain (or one)."""
    from immunity.learning.data import read_features
    from immunity.learning.parallel import default_jobs, in_background, jobs_for

    if not paths:
        raise click.UsageError("give trace files (with --format) or --store")
    _err("reading the runs and collecting their features")
    try:
        feats = read_features(list(paths), fmt, domain=domain, split=split, embedder_spec={"plugin": embedder},
                              jobs=jobs or default_jobs(), on_problem=lambda m: _err(f"warning: {m}"))
    except (ValueError, FileNotFoundError, ImmunityError) as exc:
        raise click.ClickException(str(exc)) from None
    by_domain = feats.domains()
    n = len(feats.collected)
    if domain and feats.left_out:
        _err(f"--domain {domain}: learning from {n} of {n + sum(feats.left_out.values())} runs (the others are of "
             f"domains {sorted(feats.left_out)})")
    if not n:
        raise click.ClickException(f"no run of domain {domain!r} in the input" if domain and feats.left_out
                                   else "no runs could be read from the input")
    if domain or all_domains or len(by_domain) == 1:
        # one pack: of the --domain, of the input's one domain, or of none (learned on several)
        only = domain or (next(iter(by_domain)) if len(by_domain) == 1 else None)
        groups = [(only, out, name, True)]
    else:
        groups = [(d, path, pname, False) for d, path, pname in _per_domain_packs(list(by_domain), out, name)]
    # with several packs, a small one (learned in one process; see ``jobs_for``) is learned in a
    # process of its own while the others are learned: the large packs leave a core idle between
    # their parallel parts. The packs are the same as one after the other.
    n_jobs = jobs or default_jobs()
    steps: Counter[str | None] = Counter()
    for c in feats.collected:
        steps[c.domain] += len(c.actions)
    background: dict[str | None, tuple[Any, Callable[[], Any]]] = {}
    for dom, path, pname, every in groups:  # the small packs started first, then the large ones learned
        if len(groups) > 1 and n_jobs > 1 and jobs_for(steps.get(dom, 0), n_jobs) == 1:
            collected = feats.embedded(dom, every_domain=every)
            background[dom] = (collected, in_background(_build, _pack_job(
                collected, cfg, path, pname, dom, paths=paths, store=None, split=split, pack_version=pack_version,
                jobs=jobs)))
    for dom, path, pname, every in groups:
        collected, built = background.get(dom) or (feats.embedded(dom, every_domain=every), None)
        _learn_one(collected[0], dom, path, pname, cfg, paths=paths, store=None, embedder=embedder,
                   split=split, pack_version=pack_version, jobs=jobs, target_far=target_far, collected=collected,
                   built=built)


# ------------------------------------------------------------------------------------------ commands
@hookimpl
def immunity_register_commands(cli: click.Group) -> None:  # noqa: C901 - one registration function
    @cli.command()
    @_input_options
    @_learn_options
    @click.option("--out", "-o", required=True, help="Where to write the pack: a .json or .json.gz file, or any other name for a pack "
                                                      "directory (pack.json + memory-mapped vectors.npy; for large packs).")
    @click.option("--name", default=None, help="Pack name (default: the output file's stem).")
    @click.option("--version", "pack_version", default="0.1.0", show_default=True)
    @click.option("--all-domains", is_flag=True, help="Learn one pack from runs of every domain (default: one pack "
                                                         "per domain, written next to --out as NAME-DOMAIN.json).")
    def learn(paths: tuple[str, ...], fmt: str, store: str | None, domain: str | None, embedder: str, split: str,
              target_far: float, folds: int, min_similarity: float, seed: int, out: str, name: str | None,
              pack_version: str, model: str, jobs: int | None, all_domains: bool, sequence_k: int = 5) -> None:
        """Learn failure patterns and a calibrated risk model from runs with outcomes; write a pack
        (one pack per domain when the runs are of several domains, unless --all-domains)."""
        cfg = _cfg(target_far, folds, min_similarity, seed, model, sequence_k)
        if not store:  # read, mapped and featurised in the worker processes: only the features come back
            _learn_files(paths, fmt, domain, all_domains, cfg, out=out, name=name, embedder=embedder, split=split,
                         pack_version=pack_version, jobs=jobs, target_far=target_far)
            return
        items = _read(paths, fmt, store, domain, mapping=False)  # mapped in collect's workers
        if domain:
            kept = [it for it in items if (it.run.domain or domain) == domain]
            if len(kept) < len(items):
                _err(f"--domain {domain}: learning from {len(kept)} of {len(items)} runs (the others are of "
                     f"domains {sorted({str(it.run.domain) for it in items if it not in kept})})")
            if not kept:
                raise click.ClickException(f"no run of domain {domain!r} in the input")
            items = kept
        if domain or all_domains:
            groups = [(domain, items, out, name)]
        else:
            by_domain: dict[str | None, list[Any]] = {}
            for it in items:
                by_domain.setdefault(it.run.domain, []).append(it)
            if len(by_domain) == 1:
                groups = [(next(iter(by_domain)), items, out, name)]
            else:
                groups = [(d, by_domain[d], path, pname)
                          for d, path, pname in _per_domain_packs(list(by_domain), out, name)]
        collected = None
        if len(groups) > 1:  # every domain's features in one pass (the groups are the runs' own domains)
            from immunity.learning.data import collect_by_domain
            from immunity.learning.parallel import default_jobs

            _err(f"collecting the features of {len(items)} runs")
            try:
                collected = collect_by_domain(items, split=split, embedder_spec={"plugin": embedder},
                                              jobs=jobs or default_jobs(), on_problem=lambda m: _err(f"warning: {m}"))
            except (ValueError, ImmunityError) as exc:
                raise click.ClickException(str(exc)) from None
        for dom, its, path, pname in groups:
            _learn_one(its, dom, path, pname, cfg, paths=paths, store=store, embedder=embedder, split=split,
                       pack_version=pack_version, jobs=jobs, target_far=target_far,
                       collected=None if collected is None else collected[dom])

    @cli.group()
    def pack() -> None:
        """Build, inspect, verify, install and merge pattern packs."""

    @pack.command("build")
    @click.argument("spec", type=click.Path(exists=True))
    @click.option("--out", "-o", required=True)
    def pack_build(spec: str, out: str) -> None:
        """Build a pack from a hand-written JSON or YAML spec of patterns (see docs/learning.md)."""
        from immunity.learning.handwritten import build_from_spec
        from immunity.learning.packs import save_pack
        from immunity.plugins import get_plugin_manager

        try:
            p = build_from_spec(spec, get_plugin_manager())
        except (ValueError, ImmunityError) as exc:
            raise click.ClickException(str(exc)) from None
        digest = save_pack(p, out)
        click.echo(f"wrote {out}: {len(p.patterns)} patterns, embedder {p.embedder}; {digest}")

    @pack.command("inspect")
    @click.argument("path")
    @click.option("--json", "as_json", is_flag=True, help="Print the manifest and patterns as JSON.")
    def pack_inspect(path: str, as_json: bool) -> None:
        """Show a pack's manifest and patterns."""
        from immunity.learning.packs import resolve_pack
        from immunity.plugins import get_plugin_manager

        try:
            p = resolve_pack(path, get_plugin_manager().registry("pattern_packs"))
        except PackError as exc:
            raise click.ClickException(str(exc)) from None
        if as_json:
            d = p.model_dump(mode="json", exclude={"model", "patterns"})
            d["patterns"] = [pat.model_dump(mode="json", exclude={"vector"}) for pat in p.patterns]
            _write_json(d, None)
            return
        click.echo(f"{p.name} {p.version} (format {p.format_version}); domain {p.domain or '-'}; created with "
                   f"{p.created_with}")
        click.echo(f"embedder {p.embedder} (dimension {p.dimension}); threshold "
                   f"{'per member' if p.threshold is None else f'{p.threshold:.4f}'}; {p.content_hash}")
        click.echo(f"training: {json.dumps({k: v for k, v in p.training.items() if k != 'warnings'}, default=str)}")
        for w in p.training.get("warnings", []) or []:
            click.echo(f"WARNING: {w}")
        if p.metrics:
            click.echo(f"metrics: {json.dumps(p.metrics, default=str)}")
        click.echo(f"{len(p.patterns)} patterns:")
        for pat in sorted(p.patterns, key=lambda x: -x.weight):
            click.echo(f"  {pat.pattern_id}  {pat.error_class:<20} weight {pat.weight:6.3f} support {pat.support:<3} "
                       f"{pat.description}")

    @pack.command("verify")
    @click.argument("path")
    @click.option("--key", "keys", multiple=True,
                  help="A public key (base64, or a .pub / private key file) that must have signed the pack; "
                       "repeat for several. Without it an unsigned pack passes and a signed one is checked.")
    def pack_verify(path: str, keys: tuple[str, ...]) -> None:
        """Check a pack's hash, signature, format version, dimensions, counts and numbers (exit 1 if it
        is refused, or if --key is given and none of the keys signed it)."""
        from immunity.learning.packs import load_pack
        from immunity.learning.signing import read_public_key

        try:
            wanted = {read_public_key(k) for k in keys}
            p = load_pack(path)
            for _pattern in p.patterns:  # a pack directory's pattern lines are parsed when used: all of them here
                pass
        except PackError as exc:
            raise click.ClickException(f"refused: {exc}") from None
        if wanted and p._signer not in wanted:
            why = "it is unsigned" if p.signature is None else \
                "its signature cannot be checked without the 'cryptography' package" if p._signer is None else \
                f"it is signed by {p._signer}"
            raise click.ClickException(f"refused: {path} is not signed by the given key ({why})")
        signed = f"signed by {p._signer}" if p._signer else "unsigned"
        click.echo(f"ok: {p.name} {p.version}, {len(p.patterns)} patterns, embedder {p.embedder} "
                   f"(dimension {p.dimension}), {p.content_hash}, {signed}")

    @pack.command("keygen")
    @click.argument("path")
    def pack_keygen(path: str) -> None:
        """Make an ed25519 key pair for signing packs: the private key in PATH (mode 0600), the
        public key in PATH.pub and on stdout (put it in ``trusted_keys``)."""
        from immunity.learning.signing import generate_keypair

        try:
            key, pub = generate_keypair(path)
        except PackError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
        click.echo(f"private key: {key} (keep it secret); public key ({key}.pub):")
        click.echo(pub)

    @pack.command("sign")
    @click.argument("path")
    @click.option("--key", required=True, help="The private key file (from `immunity pack keygen`).")
    @click.option("--out", "-o", default=None, help="Write the signed pack here (default: sign PATH in place).")
    def pack_sign(path: str, key: str, out: str | None) -> None:
        """Sign a pack: an ed25519 signature over its content hash (the pack is verified first)."""
        import shutil

        from immunity.learning.packs import (
            PACK_SUFFIXES,
            PATTERNS_FILE,
            VECTORS_FILE,
            read_document,
            verify_document,
            write_document,
        )
        from immunity.learning.signing import load_private_key, sign_document

        try:
            private = load_private_key(key)
            doc, base = read_document(path)
            verify_document(doc, source=path, base=base)
            sign_document(doc, private)
        except PackError as exc:
            raise click.ClickException(f"refused: {exc}") from None
        dest = out or path
        if base is not None and dest.endswith(PACK_SUFFIXES):
            raise click.ClickException(f"{path} is a pack directory; sign it into a directory, not {dest}")
        try:
            if base is not None and Path(dest).resolve() != base.resolve():  # a pack directory signed elsewhere
                Path(dest).mkdir(parents=True, exist_ok=True)
                for name in (PATTERNS_FILE, VECTORS_FILE):
                    shutil.copyfile(base / name, Path(dest) / name)
            write_document(doc, dest)
        except OSError as exc:
            raise click.ClickException(f"cannot write {dest}: {exc.strerror or exc}") from None
        click.echo(f"signed {doc.get('name')} {doc.get('version')} ({doc['content_hash']}) with key "
                   f"{doc['signature']['key']}: {dest}")

    @pack.command("install")
    @click.argument("path", type=click.Path(exists=True))
    @click.option("--dir", "directory", default=None, help="Packs directory (default: $IMMUNITY_PACKS_DIR or "
                                                           "~/.local/share/immunity/packs).")
    def pack_install(path: str, directory: str | None) -> None:
        """Verify a pack and install it, so runtimes can name it in ``packs=[...]``."""
        from immunity.learning.packs import install_pack, load_pack

        try:
            p = load_pack(path)
            dest = install_pack(path, directory)
        except PackError as exc:
            raise click.ClickException(f"refused: {exc}") from None
        click.echo(f"installed {p.name} {p.version} at {dest}")

    @pack.command("index")
    @click.argument("path", type=click.Path(exists=True, file_okay=False))
    @click.option("--index", "index_name", default="hnswlib", show_default=True, help="Vector index plugin.")
    def pack_index(path: str, index_name: str) -> None:
        """Build a pack directory's vector index and save it there (e.g. index.hnsw), so that a runtime
        loads it instead of building it; it is bound to the pack's content hash."""
        import time

        from immunity.learning.matcher import build_index
        from immunity.learning.packs import load_pack, pattern_ids, pattern_matrix, save_index
        from immunity.plugins import get_plugin_manager

        t0 = time.perf_counter()
        try:
            p = load_pack(path)
            index = build_index(get_plugin_manager(), index_name, p.dimension)
            if not callable(getattr(index, "save", None)):
                raise click.ClickException(f"the {index_name} index cannot be saved (nothing to do)")
            index.add(pattern_ids(p), pattern_matrix(p))
            dest = save_index(p, index, path)
        except (PackError, ImmunityError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot write into {path}: {exc.strerror or exc}") from None
        click.echo(f"wrote {dest}: {index_name} index over {len(p.patterns)} patterns of {p.name} {p.version} "
                   f"({p.content_hash}) in {time.perf_counter() - t0:.1f} s")

    @pack.command("merge")
    @click.argument("paths", nargs=-1, required=True)
    @click.option("--out", "-o", required=True)
    @click.option("--name", default=None)
    def pack_merge(paths: tuple[str, ...], out: str, name: str | None) -> None:
        """Merge packs built with the same embedder (each keeps its own risk model and threshold)."""
        from immunity.learning.packs import merge_packs, resolve_pack, save_pack
        from immunity.plugins import get_plugin_manager

        if len(paths) < 2:
            raise click.UsageError("give at least two packs to merge")
        try:
            reg = get_plugin_manager().registry("pattern_packs")
            packs = [resolve_pack(p, reg) for p in paths]
            merged = merge_packs(*packs, name=name)
        except PackError as exc:
            raise click.ClickException(str(exc)) from None
        digest = save_pack(merged, out)
        click.echo(f"wrote {out}: {len(merged.patterns)} patterns from {len(packs)} packs; {digest}")

    @pack.command("calibrate")
    @click.argument("pack_ref", metavar="PACK")
    @_input_options
    @click.option("--out", "-o", required=True, help="Where to write the calibrated pack.")
    @click.option("--target-far", default=0.05, show_default=True,
                  help="At most this share of the given runs may alarm (their outcomes are not read).")
    def pack_calibrate(pack_ref: str, paths: tuple[str, ...], fmt: str, store: str | None, domain: str | None,
                       out: str, target_far: float) -> None:
        """Set a pack's threshold on runs of a new population without their labels (other agents,
        models or domains): the lowest at which at most --target-far of these runs alarm."""
        from immunity.learning.packs import save_pack
        from immunity.learning.pipeline import calibrate_pack

        items = _read(paths, fmt, store, domain)
        try:
            pack, info = calibrate_pack(pack_ref, items, target_far, domain=domain)
        except (ValueError, ImmunityError) as exc:
            raise click.ClickException(str(exc)) from None
        digest = save_pack(pack, out)
        before = ", ".join(f"{t:.4f}" for t in info["thresholds_before"])
        after = ", ".join(f"{t:.4f}" for t in info["thresholds"])
        click.echo(f"wrote {out}: threshold {before} -> {after}, calibrated on {info['runs']} runs (outcomes not "
                   f"read) for at most {target_far:.0%} of them alarming; {digest}")

    @pack.command("list")
    def pack_list() -> None:
        """List installed and plugin-registered packs."""
        from immunity.plugins import get_plugin_manager

        reg = get_plugin_manager().registry("pattern_packs")
        if not reg:
            click.echo("no packs installed")
        for n, v in sorted(reg.items()):
            click.echo(f"{n}: {v if isinstance(v, str) else type(v).__name__}")

    @cli.command()
    @_input_options
    @click.option("--pack", "packs", multiple=True, required=True, help="Pack file or installed pack name.")
    @click.option("--out", "-o", default=None, help="Write JSONL here (default: stdout).")
    @click.option("--index", default=None, help="Vector index plugin (default brute).")
    def score(paths: tuple[str, ...], fmt: str, store: str | None, domain: str | None, packs: tuple[str, ...],
              out: str | None, index: str | None) -> None:
        """Replay runs step by step through the runtime with the patterns verifier and write one JSON line
        per step: run_id, step, risk, alarm, patterns, action_type. The outcome is never read."""
        from immunity.learning.data import ScoringError, score_items

        items = _read(paths, fmt, store, domain)
        options = {"patterns": {"index": index, "wait": True}} if index else None
        fh = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
        n = n_in = short = 0
        try:
            for scored in score_items(items, list(packs), domain=domain, options=options):
                for s in scored.scores:
                    fh.write(json.dumps(s.row(scored.run_id)) + "\n")
                    n += 1
                n_in += scored.steps
                if scored.why_not:
                    short += 1
                    _err(f"warning: run {scored.run_id}: {scored.why_not}")
        except (ImmunityError, ScoringError) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            if out:
                fh.close()
        _err(f"scored {len(items)} runs, {n} of {n_in} imported steps"
             + (f" ({short} runs not fully scored, see the warnings above)" if short else " (every step)")
             + (f" -> {out}" if out else ""))

    @cli.command("eval")
    @_input_options
    @_learn_options
    @click.option("--cv", is_flag=True, help="Cross-validate: learn on the other folds, score each held-out fold.")
    @click.option("--pack", "packs", multiple=True, help="Evaluate this pack on the given runs (held out).")
    @click.option("--scores", "scores_path", default=None, help="Evaluate existing `immunity score` output.")
    @click.option("--out", "-o", default=None, help="Write the figures as JSON here.")
    @click.option("--scores-out", default=None, help="With --cv: write the held-out step scores (JSONL).")
    @click.option("--html", "html_path", default=None, help="Also write an HTML report with a plot.")
    @click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(10, 100_000),
                  help="Bootstrap resamples for AUROC CIs (10 to 100,000).")
    @click.option("--calibrate", type=click.Choice(["labelled", "unlabelled"]), default="labelled", show_default=True,
                  help="With --cv: the threshold of each held-out fold is the training folds' (labelled), or is set "
                       "from the held-out fold's own scores without its labels, half of its tasks calibrating the "
                       "other half (unlabelled; what `pack calibrate` does for a new population).")
    def eval_cmd(paths: tuple[str, ...], fmt: str, store: str | None, domain: str | None, embedder: str, split: str,
                 target_far: float, folds: int, min_similarity: float, seed: int, cv: bool, packs: tuple[str, ...],
                 scores_path: str | None, out: str | None, scores_out: str | None, html_path: str | None,
                 bootstrap: int, model: str, jobs: int | None, calibrate: str, sequence_k: int = 5) -> None:
        """AUROC of runs alive at steps 5/10/20, recall before failure, false-alarm rate, lead, per-class and
        explain figures with 95% CIs, next to the steps-so-far baseline."""
        from immunity.learning.evaluate import table
        from immunity.learning.packs import resolve_pack
        from immunity.learning.parallel import default_jobs
        from immunity.learning.pipeline import cross_validate, labels_for, score_rows, scores_from_rows
        from immunity.plugins import get_plugin_manager

        if sum(bool(x) for x in (cv, packs, scores_path)) != 1:
            raise click.UsageError("choose one of --cv, --pack or --scores")
        items = _read(paths, fmt, store, domain)
        try:
            if cv:
                cfg = _cfg(target_far, folds, min_similarity, seed, model, sequence_k)
                res = cross_validate(items, cfg, split=split, folds=folds, embedder_spec={"plugin": embedder},
                                     domain=domain, log=_err, jobs=jobs or default_jobs(), calibrate=calibrate)
                scores, labels = res.scores, res.labels
                if scores_out:
                    with open(scores_out, "w", encoding="utf-8") as fh:
                        for r in res.rows:
                            fh.write(json.dumps(r) + "\n")
                extra: dict[str, Any] = {"folds": res.folds, "split": split, "calibration": calibrate,
                                         "mode": "cross-validation" + (", unlabelled calibration"
                                                                       if calibrate == "unlabelled" else "")}
            else:
                baseline = None
                if packs:
                    reg = get_plugin_manager().registry("pattern_packs")
                    members = [m for p in packs for m in (resolve_pack(p, reg).model or {}).get("members", [])]
                    ts = [m.get("baseline_steps_threshold") for m in members if m.get("baseline_steps_threshold")]
                    baseline = min(ts) if ts else None
                if scores_path:
                    rows = [json.loads(line) for line in Path(scores_path).read_text(encoding="utf-8").splitlines()
                            if line.strip()]
                else:
                    rows = score_rows(items, list(packs), domain=domain)
                scores, labels = scores_from_rows(rows), labels_for(items, split, baseline)
                extra = {"mode": "held-out pack" if packs else "scores file", "split": split}
        except (ValueError, ImmunityError) as exc:
            raise click.ClickException(str(exc)) from None
        from immunity.learning.evaluate import evaluate

        result = evaluate(scores, labels, reps=bootstrap, seed=seed)
        result.update(extra)
        click.echo(table(result, title=f"immunity eval ({extra['mode']}, split by {split})"))
        if out:
            _write_json(result, out)
        if html_path:
            from immunity.report_html import eval_report

            Path(html_path).write_text(eval_report({"evaluation": result}, scores, labels, seed=seed), encoding="utf-8")

    @cli.command()
    @click.argument("run_id")
    @_input_options
    @click.option("--pack", "packs", multiple=True, help="Pack to score the run with (when no successful run "
                                                         "of the same task is available).")
    @click.option("--json", "as_json", is_flag=True)
    def explain(run_id: str, paths: tuple[str, ...], fmt: str, store: str | None, domain: str | None,
                packs: tuple[str, ...], as_json: bool) -> None:
        """The step most likely to be the decisive error of a failed run, with the evidence and the
        step where its effect showed (cause -> effect). RUN_ID ``all`` explains every failed run of the
        input (read once); with ``--json`` one JSON object a line."""
        from immunity.learning.data import outcome_label
        from immunity.learning.explain import explain_run

        items = _read(paths, fmt, store, domain)
        ids = [it.run.run_id for it in items if outcome_label(it.run) == 1] if run_id == "all" else [run_id]
        if not ids:
            raise click.ClickException("no failed run in the input to explain")
        for rid in ids:
            try:
                report = explain_run(rid, items, list(packs), domain=domain)
            except (ValueError, LookupError, ImmunityError) as exc:
                if run_id != "all":
                    raise click.ClickException(str(exc)) from None
                _err(f"warning: run {rid}: {exc}")
                continue
            if as_json:
                click.echo(json.dumps(report, default=str) if run_id == "all" else json.dumps(report, indent=2,
                                                                                            default=str))
                continue
            click.echo(f"run {report['run_id']} ({report['outcome']}, {report['steps']} steps), method: "
                       f"{report['method']}")
            click.echo(f"decisive step: {report['step']} [{report['action_type']}] {report.get('tool') or ''}; "
                       f"effect shows at step {report['effect_step']}")
            if report.get("error_class"):
                click.echo(f"class: {report['error_class']}")
            for line in report.get("evidence", []):
                click.echo(f"  - {line}")
            if report.get("snippet"):
                click.echo(f"  step content: {report['snippet']}")
