"""Pattern packs: a versioned, data-only file format for failure patterns and their risk model.

A pack is one JSON document (optionally gzip-compressed, ``.json.gz``)::

    {
      "format": "immunity-pattern-pack",
      "format_version": 1,
      "name": "...", "version": "...", "domain": "...", "created_with": "immunity 0.1.0",
      "embedder": "hashing", "dimension": 256, "threshold": 0.41,
      "training": {...}, "metrics": {...}, "provenance": {...},
      "patterns": [ {FailurePattern without its vector}, ... ],
      "interventions": {"loop": ["..."], ...},
      "model": {"kind": "logistic-v1", "members": [...]},
      "vectors": {"dtype": "float32", "shape": [n_patterns, dimension], "base64": "..."},
      "content_hash": "sha256:..."
    }

Nothing in it is code: numbers, strings and little-endian float32 arrays in base64. The content
hash is the SHA-256 of the canonical JSON of everything else, so a changed byte is refused.
Loading refuses, with a message naming the problem: a wrong hash, an unknown format version, a
vector block whose dimension differs from the manifest's, a vector count that differs from the
pattern count, and (at match time) an embedder other than the one the pack was built with.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from immunity.errors import PackError
from immunity.learning.signing import signer_of
from immunity.models import FailurePattern, PatternPack

log = logging.getLogger("immunity.packs")

FORMAT = "immunity-pattern-pack"
SUPPORTED_VERSIONS = (1,)
PACK_SUFFIXES = (".json", ".json.gz")

__all__ = [
    "FORMAT",
    "SUPPORTED_VERSIONS",
    "check_embedder",
    "decode_array",
    "encode_array",
    "install_pack",
    "installed_packs",
    "load_pack",
    "merge_packs",
    "pack_document",
    "packs_dir",
    "pattern_matrix",
    "resolve_pack",
    "save_pack",
    "verify_document",
]


# ------------------------------------------------------------------------------------------ arrays
def encode_array(arr: np.ndarray) -> dict[str, Any]:
    """A float32 matrix as a data-only JSON block (little-endian, base64)."""
    a = np.ascontiguousarray(np.asarray(arr, dtype="<f4"))
    if a.ndim == 1:
        a = a.reshape(1, -1) if a.size else a.reshape(0, 0)
    return {"dtype": "float32", "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(block: Any, what: str = "vectors") -> np.ndarray:
    if not isinstance(block, dict) or block.get("dtype") != "float32" or "base64" not in block:
        raise PackError(f"{what}: expected a float32 block with 'shape' and 'base64'")
    shape = block.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(x, int) and x >= 0 for x in shape)):
        raise PackError(f"{what}: 'shape' must be [rows, columns], got {shape!r}")
    try:
        raw = base64.b64decode(block["base64"], validate=True)
    except (ValueError, TypeError) as exc:
        raise PackError(f"{what}: the base64 data is corrupt ({exc})") from None
    if len(raw) != shape[0] * shape[1] * 4:
        raise PackError(f"{what}: {len(raw)} bytes do not hold a {shape[0]}x{shape[1]} float32 matrix")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def pattern_matrix(pack: PatternPack) -> np.ndarray:
    """The patterns' vectors as an (n, dimension) float32 matrix."""
    if not pack.patterns:
        return np.zeros((0, pack.dimension), dtype=np.float32)
    return np.asarray([p.vector for p in pack.patterns], dtype=np.float32).reshape(len(pack.patterns), -1)


# ------------------------------------------------------------------------------------------ validation
#: Caps on what a pack may hold (a pack is data from elsewhere: bounded before it is used).
MAX_PACK_BYTES = 64 * 2**20
MAX_PATTERNS = 100_000
MAX_NAME = 128
MAX_TEXT = 4000
MAX_DIMENSION = 65_536
MAX_DEPTH = 32
#: Fields that must be real numbers (not strings, not booleans, finite) where they appear.
_NUMBERS = frozenset({"threshold", "dimension", "format_version", "weight", "position", "support", "min_similarity",
                      "top_k", "base_rate", "strength", "k", "intercept", "baseline_steps_threshold"})
_NUMBER_LISTS = frozenset({"mean", "scale", "coef", "runs", "failures"})


def _short(exc: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _check_numbers(obj: dict[str, Any], where: str) -> None:
    for key, value in obj.items():
        if key in _NUMBERS and value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise PackError(f"{where}: {key!r} must be a finite number, got {_short(repr(value), 60)}")
        elif key in _NUMBER_LISTS and value is not None:
            if not isinstance(value, list) or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in value):
                raise PackError(f"{where}: {key!r} must be a list of finite numbers")


def _walk(obj: Any, where: str, depth: int = 0) -> None:
    """Every float finite, nesting bounded, every text bounded."""
    if depth > MAX_DEPTH:
        raise PackError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise PackError(f"{where}: holds a non-finite number ({obj!r}); every number must be finite")
    elif isinstance(obj, dict):
        for v in obj.values():
            _walk(v, where, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, where, depth + 1)


def check_document(doc: dict[str, Any], *, source: str = "pack") -> None:
    """Types, caps and finiteness of a pack document, before anything else reads it: names and
    versions short text, numbers real and finite (``"-inf"`` as a string is refused, not parsed),
    at most :data:`MAX_PATTERNS` patterns, hint texts at most :data:`MAX_TEXT` characters."""
    for key in ("name", "version"):
        value = doc.get(key)
        if key == "name" or value is not None:
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
                raise PackError(f"{source}: {key!r} must be a text of 1 to {MAX_NAME} characters")
            if any(ord(c) < 32 for c in value):
                raise PackError(f"{source}: {key!r} holds control characters")
    _check_numbers(doc, source)
    dim = doc.get("dimension")
    if isinstance(dim, int) and not 0 <= dim <= MAX_DIMENSION:
        raise PackError(f"{source}: dimension {dim} is outside 0..{MAX_DIMENSION}")
    patterns = doc.get("patterns")
    if patterns is not None and not isinstance(patterns, list):
        raise PackError(f"{source}: 'patterns' must be a list")
    if len(patterns or []) > MAX_PATTERNS:
        raise PackError(f"{source}: {len(patterns or [])} patterns; at most {MAX_PATTERNS} are accepted")
    for i, p in enumerate(patterns or []):
        if not isinstance(p, dict):
            raise PackError(f"{source}: pattern {i} is not an object")
        _check_numbers(p, f"{source}: pattern {i}")
        for key in ("intervention", "description"):
            if isinstance(p.get(key), str) and len(p[key]) > MAX_TEXT:
                raise PackError(f"{source}: pattern {i}: {key} longer than {MAX_TEXT} characters")
    ivs = doc.get("interventions")
    if ivs is not None:
        if not isinstance(ivs, dict) or not all(isinstance(v, list) and all(isinstance(t, str) and len(t) <= MAX_TEXT
                                                                            for t in v) for v in ivs.values()):
            raise PackError(f"{source}: 'interventions' must map classes to lists of texts of at most {MAX_TEXT} "
                            "characters")
    model = doc.get("model")
    if model is not None and not isinstance(model, dict):
        raise PackError(f"{source}: 'model' must be an object")
    members = (model or {}).get("members") or []
    if not isinstance(members, list):
        raise PackError(f"{source}: 'model.members' must be a list")
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise PackError(f"{source}: model member {i} is not an object")
        _check_numbers(m, f"{source}: model member {i}")
        for part in ("tasks", "logistic"):
            if m.get(part) is not None and not isinstance(m[part], dict):
                raise PackError(f"{source}: model member {i}: {part!r} must be an object")
            if isinstance(m.get(part), dict):
                _check_numbers(m[part], f"{source}: model member {i} {part}")
        ids = m.get("pattern_ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(x, str) for x in ids)):
            raise PackError(f"{source}: model member {i}: 'pattern_ids' must be a list of texts")
    _walk({k: v for k, v in doc.items() if k != "vectors"}, source)


# ------------------------------------------------------------------------------------------ hashing
def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k not in ("content_hash", "signature")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def content_hash(doc: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()


# ------------------------------------------------------------------------------------------ (de)serialise
def pack_document(pack: PatternPack) -> dict[str, Any]:
    """The JSON document of a pack, with its content hash."""
    data = pack.model_dump(mode="json")
    vectors = pattern_matrix(pack)
    if pack.patterns and vectors.shape[1] != pack.dimension:
        raise PackError(f"pattern vectors have dimension {vectors.shape[1]}, the manifest says {pack.dimension}")
    for p in data["patterns"]:
        p["vector"] = []
    data.pop("content_hash", None)
    signature = data.pop("signature", None)
    data = _redacted(data)
    doc = {"format": FORMAT, **data, "vectors": encode_array(vectors.reshape(len(pack.patterns), pack.dimension))}
    doc["content_hash"] = content_hash(doc)
    if signature and doc["content_hash"] == pack.content_hash:  # unchanged: the signature still holds
        doc["signature"] = signature
    return doc


def _redacted(data: dict[str, Any]) -> dict[str, Any]:
    """The pack's text with secrets masked (examples, descriptions, hints, task ids, provenance);
    vector blocks are data, not text, and are left as they are."""
    from immunity.redact import default_redactor

    held: list[tuple[dict[str, Any], Any]] = []
    for m in (data.get("model") or {}).get("members", []) or []:
        tasks = m.get("tasks") if isinstance(m, dict) else None
        if isinstance(tasks, dict) and "vectors" in tasks:
            held.append((tasks, tasks.pop("vectors")))
    out = default_redactor().value(data)
    for tasks, block in held:
        tasks["vectors"] = block
    # the original dicts got their blocks back; the redacted copy needs them too
    for m_out, m_in in zip((out.get("model") or {}).get("members", []) or [],
                           (data.get("model") or {}).get("members", []) or [], strict=False):
        if isinstance(m_out, dict) and isinstance(m_out.get("tasks"), dict) and isinstance(m_in, dict):
            if "vectors" in (m_in.get("tasks") or {}):
                m_out["tasks"]["vectors"] = m_in["tasks"]["vectors"]
    return dict(out)


def verify_document(doc: Any, *, source: str = "pack") -> PatternPack:
    """Check a pack document and return the pack; raises :class:`PackError` with a clear message."""
    if not isinstance(doc, dict):
        raise PackError(f"{source}: not a pattern pack (expected a JSON object)")
    if doc.get("format") != FORMAT:
        raise PackError(f"{source}: not a pattern pack (format is {doc.get('format')!r}, expected {FORMAT!r})")
    version = doc.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise PackError(f"{source}: unknown pack format version {version!r}; this immunity reads version(s) "
                        f"{', '.join(map(str, SUPPORTED_VERSIONS))} (upgrade immunity or rebuild the pack)")
    check_document(doc, source=source)
    stated = doc.get("content_hash")
    try:
        actual = content_hash(doc)
    except (ValueError, TypeError, RecursionError) as exc:
        raise PackError(f"{source}: cannot be hashed ({exc})") from None
    if stated != actual:
        raise PackError(f"{source}: content hash mismatch (the file says {stated!r}, its content hashes to "
                        f"{actual!r}); the pack was modified or damaged, refusing to load it")
    vectors = decode_array(doc.get("vectors"), f"{source}: vectors")
    patterns = doc.get("patterns") or []
    dim = doc.get("dimension")
    if vectors.shape[0] != len(patterns):
        raise PackError(f"{source}: {vectors.shape[0]} vectors for {len(patterns)} patterns; the counts must match")
    if patterns and vectors.shape[1] != dim:
        raise PackError(f"{source}: vectors have dimension {vectors.shape[1]} but the manifest says {dim}")
    signer = signer_of(doc, source=source)
    body = {k: v for k, v in doc.items() if k not in ("format", "vectors")}
    try:
        pack = PatternPack.model_validate(body)
    except Exception as exc:
        raise PackError(f"{source}: invalid manifest or patterns: {_short(exc)}") from None
    for p, row in zip(pack.patterns, vectors, strict=True):
        p.vector = [float(x) for x in row]
    try:
        _check_task_vectors(pack, dim, source)
    except PackError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise PackError(f"{source}: the risk model is malformed ({_short(exc)})") from None
    pack._origin, pack._signer = "file", signer
    return pack


def _check_task_vectors(pack: PatternPack, dim: Any, source: str) -> None:
    for m in (pack.model or {}).get("members", []):
        tasks = m.get("tasks") or {}
        if tasks.get("vectors") is not None:
            tv = decode_array(tasks["vectors"], f"{source}: task vectors")
            if tv.shape[0] and tv.shape[1] != dim:
                raise PackError(f"{source}: task vectors have dimension {tv.shape[1]} but the manifest says {dim}")
            if tv.shape[0] != len(tasks.get("runs", [])):
                raise PackError(f"{source}: {tv.shape[0]} task vectors for {len(tasks.get('runs', []))} tasks")


def _read_json(path: Path) -> Any:
    try:
        if not path.is_file():
            raise PackError(f"no pack file at {path}" if not path.exists() else f"{path}: not a regular file")
        opener: Any = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            data = fh.read(MAX_PACK_BYTES + 1)
        if len(data) > MAX_PACK_BYTES:
            raise PackError(f"{path}: larger than {MAX_PACK_BYTES:,} bytes, refusing to load it")
        return json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise PackError(f"no pack file at {path}") from None
    except RecursionError:
        raise PackError(f"{path}: nested too deeply to be a pack") from None
    except (OSError, ValueError, EOFError) as exc:
        raise PackError(f"{path}: cannot be read as JSON ({_short(exc)})") from None


_CACHE: dict[tuple[str, float, int], PatternPack] = {}


def load_pack(path: str | os.PathLike[str]) -> PatternPack:
    """Load and verify a pack file (cached per path and modification time)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise PackError(f"no pack file at {p}") from None
    key = (str(p.resolve()), st.st_mtime, st.st_size)
    if key not in _CACHE:
        _CACHE[key] = verify_document(_read_json(p), source=str(p))
    return _CACHE[key].model_copy(deep=True)


def save_pack(pack: PatternPack, path: str | os.PathLike[str]) -> str:
    """Write a pack (``.json`` or ``.json.gz``); returns its content hash."""
    doc = pack_document(pack)
    p = Path(path)
    check_document(doc, source=str(p))  # never write a pack that would be refused at load
    p.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, sort_keys=True, indent=1, allow_nan=False)
    if p.name.endswith(".gz"):
        with gzip.open(p, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        p.write_text(text, encoding="utf-8")
    pack.content_hash = doc["content_hash"]
    return str(doc["content_hash"])


# ------------------------------------------------------------------------------------------ checks
def check_embedder(pack: PatternPack, embedder: Any) -> None:
    """Refuse an embedder other than the one the pack was built with."""
    name = getattr(embedder, "name", None)
    dim = int(getattr(embedder, "dimension", 0) or 0)
    if pack.embedder and name != pack.embedder:
        raise PackError(f"pack {pack.name!r} was built with embedder {pack.embedder!r} (dimension {pack.dimension}); "
                        f"it cannot be matched with embedder {name!r} (dimension {dim}). Use {pack.embedder!r} or "
                        f"rebuild the pack with {name!r}.")
    if dim != pack.dimension:
        raise PackError(f"pack {pack.name!r} has dimension {pack.dimension} but embedder {name!r} produces {dim}; "
                        "rebuild the pack with this embedder")


# ------------------------------------------------------------------------------------------ merging
def merge_packs(first: PatternPack, *others: PatternPack, name: str | None = None) -> PatternPack:
    """Merge packs built with the same embedder. Each pack keeps its own risk model and threshold
    (a merged pack alarms when any member does); patterns are pooled and de-duplicated by id."""
    out = first.model_copy(deep=True)
    members = list((out.model or {}).get("members", []))
    seen = {p.pattern_id for p in out.patterns}
    names = [first.name]
    for other in others:
        if (other.embedder, other.dimension) != (out.embedder, out.dimension):
            raise PackError(f"cannot merge pack {other.name!r} (embedder {other.embedder!r}, dimension "
                            f"{other.dimension}) into {out.name!r} (embedder {out.embedder!r}, dimension "
                            f"{out.dimension}): the embedders differ")
        names.append(other.name)
        for p in other.patterns:
            if p.pattern_id not in seen:
                out.patterns.append(p.model_copy(deep=True))
                seen.add(p.pattern_id)
        for cls, texts in other.interventions.items():
            have = out.interventions.setdefault(cls, [])
            have.extend(t for t in texts if t not in have)
        members.extend(copy.deepcopy((other.model or {}).get("members", [])))
    out.name = name or "+".join(names)
    out.model = {"kind": (first.model or {}).get("kind", "logistic-v1"), "members": members}
    if len(members) > 1:
        out.threshold = None  # each member alarms at its own threshold
    if out.domain != first.domain or any(o.domain != first.domain for o in others):
        out.domain = None
    out.training = {"merged": [first.training, *[o.training for o in others]]}
    out.metrics = {"merged": [first.metrics, *[o.metrics for o in others]]}
    out.provenance = {"merged_from": [{"name": p.name, "version": p.version, "content_hash": p.content_hash}
                                      for p in (first, *others)]}
    out.content_hash = None
    out.signature = None
    sources = (first, *others)
    if any(p._origin == "file" for p in sources):  # as trusted as the least trusted part
        signers = {p._signer for p in sources if p._origin == "file"}
        out._origin, out._signer = "file", (signers.pop() if len(signers) == 1 else None)
    elif any(p._origin == "plugin" for p in sources):
        out._origin = "plugin"
    return out


# ------------------------------------------------------------------------------------------ installing
def packs_dir() -> Path:
    """Where ``immunity pack install`` puts packs: ``$IMMUNITY_PACKS_DIR``, else
    ``$XDG_DATA_HOME/immunity/packs``, else ``~/.local/share/immunity/packs``."""
    env = os.environ.get("IMMUNITY_PACKS_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "immunity" / "packs"


def _hash_of_file(path: Path) -> str | None:
    try:
        return load_pack(path).content_hash
    except PackError:
        return None


def _signer_of_file(path: Path) -> str | None:
    try:
        return load_pack(path)._signer
    except PackError:
        return None


def install_pack(path: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None) -> Path:
    """Verify a pack and copy it into the packs directory; returns the installed path.

    A pack whose name is already installed replaces it (another version, or the same version with
    other content) only when both are signed by the same key: an unsigned pack named like an
    installed one, or one signed by someone else, is refused, so nobody can shadow a pack by
    calling theirs ``version 999``."""
    pack = load_pack(path)
    dest_dir = Path(directory) if directory else packs_dir()
    existing = installed_packs(dest_dir).get(pack.name) if dest_dir.is_dir() else None
    if existing is not None and _hash_of_file(existing) != pack.content_hash:
        old_signer = _signer_of_file(existing)
        if old_signer is None or pack._signer != old_signer:
            raise PackError(f"a pack named {pack.name!r} is already installed ({existing}); another pack of that name "
                            "replaces it only when both are signed by the same key "
                            f"({'the installed one is unsigned' if old_signer is None else 'the keys differ'}"
                            f"{'' if pack._signer else ', and this one is unsigned'}). Remove the installed file "
                            "first if you mean to replace it.")
        if existing.resolve() != Path(path).resolve() and existing.name != _install_name(pack, path):
            existing.unlink()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PackError(f"cannot create the packs directory {dest_dir}: {exc.strerror or exc}") from None
    dest = dest_dir / _install_name(pack, path)
    try:
        shutil.copyfile(path, dest)
    except OSError as exc:
        raise PackError(f"cannot install into {dest_dir}: {exc.strerror or exc}") from None
    return dest


def _install_name(pack: PatternPack, path: str | os.PathLike[str]) -> str:
    suffix = ".json.gz" if str(path).endswith(".gz") else ".json"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{pack.name}-{pack.version}")[:200]
    return f"{safe}{suffix}"


def installed_packs(directory: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Installed packs by name (a later version of the same name wins), read from the manifests."""
    d = Path(directory) if directory else packs_dir()
    by_name: dict[str, list[tuple[tuple[int, ...], float, Path]]] = {}
    if not d.is_dir():
        return {}
    for f in sorted(d.iterdir()):
        if not f.name.endswith(PACK_SUFFIXES) or not f.is_file():
            continue
        try:
            doc = _read_json(f)
        except PackError:
            continue
        if not isinstance(doc, dict):
            continue
        name, version = doc.get("name"), str(doc.get("version", "0"))[:64]
        if not isinstance(name, str):
            continue
        key = tuple(int(x) if x.isdigit() and len(x) < 10 else 0 for x in version.split("."))
        by_name.setdefault(name, []).append((key, f.stat().st_mtime, f))
    found: dict[str, Path] = {}
    for name, files in by_name.items():
        if len(files) == 1:
            found[name] = files[0][2]
            continue
        # several files claim one name: the highest version wins only when every one of them is
        # signed by the same key; otherwise the first installed stays (no shadowing by version)
        signers = {_signer_of_file(f) for _, _, f in files}
        if len(signers) == 1 and None not in signers:
            found[name] = max(files)[2]
        else:
            first = min(files, key=lambda t: (t[1], str(t[2])))[2]
            log.warning("packs named %r in %s are not all signed by one key; using the first installed, %s",
                        name, d, first.name)
            found[name] = first
    return found


def resolve_pack(ref: Any, registry: dict[str, Any] | None = None) -> PatternPack:
    """A pack from a :class:`PatternPack`, a path, or the name of an installed or registered pack."""
    if isinstance(ref, PatternPack):
        return ref
    text = str(ref)
    if os.path.exists(text):
        return load_pack(text)
    if registry and text in registry:
        value = registry[text]
        pack = resolve_pack(value, None)
        if pack._origin == "file" and not _inside(Path(str(value)), packs_dir()):
            pack._origin = "plugin"  # a file an installed plugin ships: as trusted as the plugin's code
        return pack
    shown = text if len(text) <= 200 else text[:200] + "..."
    raise PackError(f"no pattern pack {shown!r}: not a file, and no installed pack has that name "
                    f"(known: {sorted(registry or {}) or 'none'})")


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except (ValueError, OSError):
        return False
    return True


def new_pattern(**kw: Any) -> FailurePattern:
    return FailurePattern(**kw)
