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
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from immunity.errors import PackError
from immunity.models import FailurePattern, PatternPack

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


# ------------------------------------------------------------------------------------------ hashing
def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "content_hash"}
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
    data = _redacted(data)
    doc = {"format": FORMAT, **data, "vectors": encode_array(vectors.reshape(len(pack.patterns), pack.dimension))}
    doc["content_hash"] = content_hash(doc)
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
    stated = doc.get("content_hash")
    actual = content_hash(doc)
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
    body = {k: v for k, v in doc.items() if k not in ("format", "vectors")}
    try:
        pack = PatternPack.model_validate(body)
    except Exception as exc:
        raise PackError(f"{source}: invalid manifest or patterns: {exc}") from None
    for p, row in zip(pack.patterns, vectors, strict=True):
        p.vector = [float(x) for x in row]
    for m in (pack.model or {}).get("members", []):
        tasks = m.get("tasks") or {}
        if tasks.get("vectors") is not None:
            tv = decode_array(tasks["vectors"], f"{source}: task vectors")
            if tv.shape[0] and tv.shape[1] != dim:
                raise PackError(f"{source}: task vectors have dimension {tv.shape[1]} but the manifest says {dim}")
            if tv.shape[0] != len(tasks.get("runs", [])):
                raise PackError(f"{source}: {tv.shape[0]} task vectors for {len(tasks.get('runs', []))} tasks")
    return pack


def _read_json(path: Path) -> Any:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return json.load(fh)
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError(f"no pack file at {path}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise PackError(f"{path}: cannot be read as JSON ({exc})") from None


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


def install_pack(path: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None) -> Path:
    """Verify a pack and copy it into the packs directory; returns the installed path."""
    pack = load_pack(path)
    dest_dir = Path(directory) if directory else packs_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".json.gz" if str(path).endswith(".gz") else ".json"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{pack.name}-{pack.version}")
    dest = dest_dir / f"{safe}{suffix}"
    shutil.copyfile(path, dest)
    return dest


def installed_packs(directory: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Installed packs by name (a later version of the same name wins), read from the manifests."""
    d = Path(directory) if directory else packs_dir()
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    if not d.is_dir():
        return {}
    for f in sorted(d.iterdir()):
        if not f.name.endswith(PACK_SUFFIXES):
            continue
        try:
            doc = _read_json(f)
        except PackError:
            continue
        name, version = doc.get("name"), str(doc.get("version", "0"))
        if not isinstance(name, str):
            continue
        key = tuple(int(x) if x.isdigit() else 0 for x in version.split("."))
        if name not in found or key >= found[name][0]:
            found[name] = (key, f)
    return {n: p for n, (_, p) in found.items()}


def resolve_pack(ref: Any, registry: dict[str, Any] | None = None) -> PatternPack:
    """A pack from a :class:`PatternPack`, a path, or the name of an installed or registered pack."""
    if isinstance(ref, PatternPack):
        return ref
    text = str(ref)
    if os.path.exists(text):
        return load_pack(text)
    if registry and text in registry:
        return resolve_pack(registry[text], None)
    raise PackError(f"no pattern pack {text!r}: not a file, and no installed pack has that name "
                    f"(known: {sorted(registry or {}) or 'none'})")


def new_pattern(**kw: Any) -> FailurePattern:
    return FailurePattern(**kw)
