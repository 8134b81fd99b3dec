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

A large pack is a **pack directory** instead (``format_version`` 2): ``pack.json`` holds the same
manifest, but the patterns and the vectors are sidecar files named with their digests::

      "patterns": {"file": "patterns.jsonl", "sha256": "<hex digest of the file>", "count": n,
                   "pattern_id": [...], "error_class": [...], "weight": [...]},
      "vectors": {"dtype": "float32", "shape": [n_patterns, dimension], "file": "vectors.npy",
                  "sha256": "<hex digest of the whole vectors.npy file>"}

``vectors.npy`` is a plain NumPy array file (little-endian float32, C order), read with
``allow_pickle=False`` and memory-mapped, so the vectors are never parsed nor copied at load.
``patterns.jsonl`` holds one pattern per line (the fields other than the three columns above, which
matching needs for every pattern); a line is parsed and validated the first time its pattern is
used (a matched pattern's predicates, hint and description), so loading a 100K-pattern pack
neither parses nor holds 100K pattern objects. Both digests are checked at every load, and they
are part of ``pack.json`` and so of the content hash and of the signature: a changed vector or
pattern byte is refused like a changed manifest byte. ``immunity pack verify`` also parses and
validates every pattern line.

Nothing in either form is code: numbers, strings and little-endian float32 arrays. The content
hash is the SHA-256 of the canonical JSON of everything else, so a changed byte is refused.
In memory a loaded pack holds its vectors once, as one float32 matrix (:func:`pattern_matrix`);
the patterns' ``vector`` lists stay empty.
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
import mmap
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from immunity.errors import PackError
from immunity.learning.signing import signer_of
from immunity.models import FailurePattern, PatternPack

log = logging.getLogger("immunity.packs")

FORMAT = "immunity-pattern-pack"
SUPPORTED_VERSIONS = (1, 2)
#: the format version of a pack directory (``pack.json`` + ``vectors.npy``)
DIRECTORY_VERSION = 2
PACK_SUFFIXES = (".json", ".json.gz")
#: the files of a pack directory
MANIFEST_FILE = "pack.json"
VECTORS_FILE = "vectors.npy"
PATTERNS_FILE = "patterns.jsonl"
#: the pattern fields a pack directory keeps as columns in pack.json (read at load)
PATTERN_COLUMNS = ("pattern_id", "error_class", "weight")

__all__ = [
    "FORMAT",
    "SUPPORTED_VERSIONS",
    "attach_vectors",
    "check_embedder",
    "decode_array",
    "encode_array",
    "install_pack",
    "installed_packs",
    "load_pack",
    "load_saved_index",
    "merge_packs",
    "pack_directory",
    "pack_document",
    "packs_dir",
    "pattern_matrix",
    "read_document",
    "resolve_pack",
    "save_index",
    "save_pack",
    "verify_document",
    "write_document",
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


def attach_vectors(pack: PatternPack, vectors: Any) -> None:
    """Give ``pack`` its patterns' vectors as one float32 matrix (row ``i`` for ``pack.patterns[i]``),
    kept as it is (a memory-mapped matrix stays mapped). The patterns' own ``vector`` lists are
    emptied: the vectors are held once."""
    mat = np.asarray(vectors)
    if mat.dtype != np.float32:
        mat = mat.astype(np.float32)
    n = len(pack.patterns)
    if mat.ndim != 2 or mat.shape[0] != n or (n and mat.shape[1] != pack.dimension):
        raise PackError(f"pack {pack.name!r}: a {mat.shape} vector matrix for {n} patterns of dimension "
                        f"{pack.dimension}")
    pack._vectors = mat
    for i, p in enumerate(pack.patterns):
        p._vec = _Row(mat, i)
        if p.vector:
            p.vector = []


class _Row:
    """Where a loaded pattern's vector is: row ``row`` of its pack's matrix. A copy of the pattern
    (even a deep one) points at the same read-only matrix; the matrix is never copied with it."""

    __slots__ = ("matrix", "row")

    def __init__(self, matrix: np.ndarray, row: int):
        self.matrix, self.row = matrix, row

    def __copy__(self) -> _Row:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Row:
        return self


class PatternRows(Sequence[FailurePattern]):
    """The patterns of a pack directory: three columns held in memory (``ids``, ``classes``,
    ``weights``: what matching needs for every pattern) and each pattern's other fields as one line
    of the memory-mapped ``patterns.jsonl``, parsed and validated the first time the pattern is
    used. Read-only: to edit a loaded pack's patterns, take ``list(pack.patterns)``."""

    #: parsed patterns kept per instance (the matched ones, on the hot path); beyond this the
    #: oldest half is forgotten and parsed again if used again
    CACHE = 8192

    def __init__(self, ids: list[str], classes: list[str], weights: np.ndarray, bodies: Any, offsets: np.ndarray,
                 vectors: np.ndarray, source: str):
        self.ids, self.classes, self.weights = ids, classes, weights
        self._bodies, self._offsets, self._vectors, self._source = bodies, offsets, vectors, source
        self._cache: dict[int, FailurePattern] = {}

    def copy(self) -> PatternRows:
        """Another view of the same rows, with its own parsed patterns."""
        return PatternRows(self.ids, self.classes, self.weights, self._bodies, self._offsets, self._vectors,
                           self._source)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"PatternRows({len(self)} patterns from {self._source}, {len(self._cache)} parsed)"

    @overload
    def __getitem__(self, i: int) -> FailurePattern: ...

    @overload
    def __getitem__(self, i: slice) -> list[FailurePattern]: ...

    def __getitem__(self, i: int | slice) -> FailurePattern | list[FailurePattern]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self.ids)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"pattern {i} of {n}")
        p = self._cache.get(j)
        if p is None:
            p = self._parse(j)
            if len(self._cache) >= self.CACHE:
                for k in list(self._cache)[: self.CACHE // 2]:
                    del self._cache[k]
            self._cache[j] = p
        return p

    def __iter__(self) -> Iterator[FailurePattern]:
        for j in range(len(self.ids)):
            yield self[j]

    def _parse(self, j: int) -> FailurePattern:
        where = f"{self._source}: pattern {j} ({self.ids[j]})"
        raw = bytes(self._bodies[int(self._offsets[j]):int(self._offsets[j + 1])])
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise PackError(f"{where}: cannot be read as JSON ({_short(exc)})") from None
        if not isinstance(body, dict):
            raise PackError(f"{where}: not an object")
        if any(k in body for k in PATTERN_COLUMNS):
            raise PackError(f"{where}: {', '.join(k for k in PATTERN_COLUMNS if k in body)} belong in the columns "
                            f"of {MANIFEST_FILE}, not in {PATTERNS_FILE}")
        _check_pattern(body, where)
        _walk(body, where)
        body.pop("vector", None)
        body.update(pattern_id=self.ids[j], error_class=self.classes[j], weight=float(self.weights[j]))
        try:
            p = FailurePattern.model_validate(body)
        except Exception as exc:
            raise PackError(f"{where}: invalid pattern: {_short(exc)}") from None
        p._vec = _Row(self._vectors, j)
        return p


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def pattern_ids(pack: PatternPack) -> list[str]:
    """The ids of a pack's patterns in order (without parsing a pack directory's pattern lines)."""
    pats = pack.patterns
    return list(pats.ids) if isinstance(pats, PatternRows) else [p.pattern_id for p in pats]


def pattern_columns(pack: PatternPack) -> tuple[list[str], list[str], np.ndarray, Sequence[dict[str, Any]]]:
    """``(ids, classes, weights, predicates)`` of a pack's patterns in order; for a pack directory
    the predicates are a lazy sequence (a pattern line is parsed when its predicates are read)."""
    pats = pack.patterns
    if isinstance(pats, PatternRows):
        return list(pats.ids), list(pats.classes), np.asarray(pats.weights, float), _Predicates(pats, None)
    return ([p.pattern_id for p in pats], [p.error_class for p in pats], np.asarray([p.weight for p in pats], float),
            [p.predicates for p in pats])


class _Predicates(Sequence[dict[str, Any]]):
    """Rows ``rows`` (all when ``None``) of a :class:`PatternRows`' predicates, read when used."""

    def __init__(self, rows: PatternRows, which: list[int] | None):
        self._rows, self._which = rows, which

    def __len__(self) -> int:
        return len(self._rows) if self._which is None else len(self._which)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = i if self._which is None else self._which[i]
        return self._rows[row].predicates

    def select(self, which: list[int]) -> _Predicates:
        base = self._which
        return _Predicates(self._rows, which if base is None else [base[k] for k in which])


def pattern_matrix(pack: PatternPack) -> np.ndarray:
    """The patterns' vectors as an (n, dimension) float32 matrix, row ``i`` for ``pack.patterns[i]``.

    A loaded pack whose patterns are as loaded returns the matrix it holds (memory-mapped for a
    pack directory; read-only), with no copy. Otherwise each pattern gives its ``vector`` list when
    set (built by code), else its row of the matrix it was loaded with."""
    n = len(pack.patterns)
    if not n:
        return np.zeros((0, pack.dimension), dtype=np.float32)
    held = pack._vectors
    if isinstance(pack.patterns, PatternRows):
        return pack.patterns._vectors
    if held is not None and len(held) == n and all(
            not p.vector and p._vec is not None and p._vec.matrix is held and p._vec.row == i
            for i, p in enumerate(pack.patterns)):
        return held  # type: ignore[no-any-return]
    if all(p._vec is None for p in pack.patterns):
        return np.asarray([p.vector for p in pack.patterns], dtype=np.float32).reshape(n, -1)
    out = np.zeros((n, pack.dimension), dtype=np.float32)
    for i, p in enumerate(pack.patterns):
        if p.vector:
            out[i] = np.asarray(p.vector, dtype=np.float32)
        elif p._vec is not None:
            out[i] = p._vec.matrix[p._vec.row]
        else:
            raise PackError(f"pack {pack.name!r}: pattern {p.pattern_id!r} has no vector")
    return out


# ------------------------------------------------------------------------------------------ validation
#: Caps on what a pack may hold (a pack is data from elsewhere: bounded before it is used).
MAX_PACK_BYTES = 256 * 2**20
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
            if not isinstance(v, str | int):  # texts and integers need no look (a long list of ids is fast)
                _walk(v, where, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            if not isinstance(v, str | int):
                _walk(v, where, depth + 1)


def _check_pattern(p: dict[str, Any], where: str) -> None:
    _check_numbers(p, where)
    for key in ("intervention", "description"):
        if isinstance(p.get(key), str) and len(p[key]) > MAX_TEXT:
            raise PackError(f"{where}: {key} longer than {MAX_TEXT} characters")


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
    if isinstance(patterns, dict) and doc.get("format_version") == DIRECTORY_VERSION:
        _check_columns(patterns, source)
        patterns = None
    elif patterns is not None and not isinstance(patterns, list):
        raise PackError(f"{source}: 'patterns' must be a list")
    if len(patterns or []) > MAX_PATTERNS:
        raise PackError(f"{source}: {len(patterns or [])} patterns; at most {MAX_PATTERNS} are accepted")
    for i, p in enumerate(patterns or []):
        if not isinstance(p, dict):
            raise PackError(f"{source}: pattern {i} is not an object")
        _check_pattern(p, f"{source}: pattern {i}")
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
        if ids is not None and not (isinstance(ids, list) and set(map(type, ids)) <= {str}):
            raise PackError(f"{source}: model member {i}: 'pattern_ids' must be a list of texts")
    _walk({k: v for k, v in doc.items() if k != "vectors" and not (k == "patterns" and isinstance(v, dict))}, source)


def _check_columns(block: dict[str, Any], source: str) -> None:
    """The pattern block of a pack directory's manifest: the file, its digest, the count and the
    three columns, each a list of ``count`` values of the right type."""
    extra = set(block) - {"file", "sha256", "count", *PATTERN_COLUMNS}
    if extra:
        raise PackError(f"{source}: patterns: unknown keys {sorted(extra)}")
    n = block.get("count")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_PATTERNS:
        raise PackError(f"{source}: patterns: 'count' must be a number of patterns from 0 to {MAX_PATTERNS}")
    for key in PATTERN_COLUMNS:
        col = block.get(key)
        if not isinstance(col, list) or len(col) != n:
            raise PackError(f"{source}: patterns: {key!r} must be a list of {n} values")
    for key in ("pattern_id", "error_class"):  # (set(map(...)): the whole column checked at C speed)
        col = block[key]
        if n and not (set(map(type, col)) <= {str} and 0 < min(map(len, col)) and max(map(len, col)) <= 2 * MAX_NAME):
            raise PackError(f"{source}: patterns: every {key} must be a text of 1 to {2 * MAX_NAME} characters")
    w = block["weight"]
    if n and not (set(map(type, w)) <= {int, float} and bool(np.isfinite(np.asarray(w, dtype=np.float64)).all())):
        raise PackError(f"{source}: patterns: every 'weight' must be a finite number")


# ------------------------------------------------------------------------------------------ hashing
def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k not in ("content_hash", "signature")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def content_hash(doc: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()


# ------------------------------------------------------------------------------------------ (de)serialise
def pack_document(pack: PatternPack, *, vectors_block: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document of a pack, with its content hash: format version 1 with the vectors inline
    (base64), or, given the ``vectors_block`` of a written ``vectors.npy`` (:func:`save_pack` of a
    pack directory), format version 2 naming that file and its digest."""
    data = pack.model_dump(mode="json", exclude={"patterns"})
    data["patterns"] = [p.model_dump(mode="json") for p in pack.patterns]
    if vectors_block is None:
        vectors = pattern_matrix(pack)
        if pack.patterns and vectors.shape[1] != pack.dimension:
            raise PackError(f"pattern vectors have dimension {vectors.shape[1]}, the manifest says {pack.dimension}")
        block = encode_array(vectors.reshape(len(pack.patterns), pack.dimension))
        data["format_version"] = 1
    else:
        block = vectors_block
        data["format_version"] = DIRECTORY_VERSION
    for p in data["patterns"]:
        p["vector"] = []
    data.pop("content_hash", None)
    signature = data.pop("signature", None)
    data = _redacted(data)
    doc = {"format": FORMAT, **data, "vectors": block}
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


def verify_document(doc: Any, *, source: str = "pack", base: str | os.PathLike[str] | None = None) -> PatternPack:
    """Check a pack document and return the pack; raises :class:`PackError` with a clear message.
    ``base`` is the pack directory a format-2 document was read from (where its vectors file is)."""
    if not isinstance(doc, dict):
        raise PackError(f"{source}: not a pattern pack (expected a JSON object)")
    if doc.get("format") != FORMAT:
        raise PackError(f"{source}: not a pattern pack (format is {doc.get('format')!r}, expected {FORMAT!r})")
    version = doc.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise PackError(f"{source}: unknown pack format version {version!r}; this immunity reads version(s) "
                        f"{', '.join(map(str, SUPPORTED_VERSIONS))} (upgrade immunity or rebuild the pack)")
    scans: dict[str, _Scan] = {}
    if base is not None and version == DIRECTORY_VERSION:  # read the sidecars while the manifest is checked
        for name, lines in ((VECTORS_FILE, False), (PATTERNS_FILE, True)):
            if (Path(base) / name).is_file():
                scans[name] = _Scan(Path(base) / name, lines)
    try:
        return _verify(doc, source, base, version, scans)
    finally:
        for scan in scans.values():
            scan.close()


def _verify(doc: dict[str, Any], source: str, base: str | os.PathLike[str] | None, version: int,
            scans: dict[str, _Scan]) -> PatternPack:
    check_document(doc, source=source)
    stated = doc.get("content_hash")
    try:
        actual = content_hash(doc)
    except (ValueError, TypeError, RecursionError) as exc:
        raise PackError(f"{source}: cannot be hashed ({exc})") from None
    if stated != actual:
        raise PackError(f"{source}: content hash mismatch (the file says {stated!r}, its content hashes to "
                        f"{actual!r}); the pack was modified or damaged, refusing to load it")
    block = doc.get("vectors")
    if isinstance(block, dict) and "file" in block:
        if version != DIRECTORY_VERSION:
            raise PackError(f"{source}: a vectors file is only allowed in format version {DIRECTORY_VERSION}")
        if base is None:
            raise PackError(f"{source}: the vectors are in a separate file; load the pack directory, not the document")
        vectors = read_vectors_file(Path(base), block, source, scans)
    elif version == DIRECTORY_VERSION:
        raise PackError(f"{source}: format version {DIRECTORY_VERSION} keeps its vectors in {VECTORS_FILE}, "
                        "but the vector block names no file")
    else:
        vectors = decode_array(block, f"{source}: vectors")
    dim = doc.get("dimension")
    pblock = doc.get("patterns")
    rows: PatternRows | None = None
    if version == DIRECTORY_VERSION and not isinstance(pblock, dict):
        raise PackError(f"{source}: format version {DIRECTORY_VERSION} keeps its patterns in {PATTERNS_FILE}, "
                        "but the pattern block names no file")
    if isinstance(pblock, dict):
        if base is None:
            raise PackError(f"{source}: the patterns are in a separate file; load the pack directory, not the document")
        rows = read_patterns_file(Path(base), pblock, vectors, source, scans)
        count = len(rows)
    else:
        count = len(pblock or [])
    if vectors.shape[0] != count:
        raise PackError(f"{source}: {vectors.shape[0]} vectors for {count} patterns; the counts must match")
    if count and vectors.shape[1] != dim:
        raise PackError(f"{source}: vectors have dimension {vectors.shape[1]} but the manifest says {dim}")
    signer = signer_of(doc, source=source)
    body = {k: v for k, v in doc.items() if k not in ("format", "vectors")}
    if rows is not None:
        body.pop("patterns", None)
    try:
        pack = PatternPack.model_validate(body)
    except Exception as exc:
        raise PackError(f"{source}: invalid manifest or patterns: {_short(exc)}") from None
    pack._vectors = vectors
    if rows is not None:
        pack.patterns = rows  # type: ignore[assignment]  # a read-only sequence, parsed when used
    else:
        for i, p in enumerate(pack.patterns):
            p._vec = _Row(vectors, i)
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


class _Scan:
    """One pass over a sidecar file in a thread of its own: its SHA-256 (and, for the pattern
    lines, where each line ends). ``hashlib`` and NumPy release the interpreter lock while they
    work, so the two files are read while the manifest is parsed and hashed. The file stays open:
    what is mapped afterwards is the file that was hashed."""

    def __init__(self, path: Path, lines: bool):
        self.name, self.lines = path.name, lines
        self.fh: Any = None
        self.digest = ""
        self.offsets = np.zeros(1, np.int64)
        self.size = 0
        self.error: BaseException | None = None
        try:
            self.fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            self.error = exc
            self._thread: threading.Thread | None = None
            return
        self._thread = threading.Thread(target=self._run, name=f"immunity-pack-scan-{path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            h = hashlib.sha256()
            ends: list[np.ndarray] = []
            pos = 0
            buf = bytearray(2**22)  # one buffer, reused: no big allocation per chunk for malloc to keep
            view = memoryview(buf)
            while n := self.fh.readinto(buf):
                h.update(view[:n])
                if self.lines:
                    chunk = np.frombuffer(buf, dtype=np.uint8, count=n)
                    ends.append(np.flatnonzero(chunk == 10).astype(np.int64) + (pos + 1))
                pos += n
            view.release()
            self.digest, self.size = h.hexdigest(), pos
            if self.lines:
                self.offsets = np.concatenate([np.zeros(1, np.int64), *ends])
        except BaseException as exc:  # handed to the caller by result()
            self.error = exc

    def result(self) -> _Scan:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.fh is not None:
            self.fh.close()


def _scan_for(scans: dict[str, _Scan] | None, base: Path, name: str, lines: bool) -> _Scan:
    scan = (scans or {}).get(name)
    if scan is None or scan.lines != lines:
        scan = _Scan(base / name, lines)
        if scans is not None:
            scans[f"extra:{name}:{lines}"] = scan  # closed with the others
    return scan.result()


def read_vectors_file(base: Path, block: dict[str, Any], source: str,
                      scans: dict[str, _Scan] | None = None) -> np.ndarray:
    """The memory-mapped (read-only) float32 matrix of a pack directory's vectors file, after
    checking the whole file against the digest ``pack.json`` states. The digest is computed from
    the same open file that is then mapped. ``allow_pickle`` never: only a plain float32 array."""
    name, digest, shape = block.get("file"), block.get("sha256"), block.get("shape")
    if block.get("dtype") != "float32":
        raise PackError(f"{source}: vectors: expected dtype float32, got {block.get('dtype')!r}")
    if not isinstance(name, str) or name != Path(name).name or name in ("", ".", ".."):
        raise PackError(f"{source}: vectors: 'file' must be a file name inside the pack directory, got {name!r}")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise PackError(f"{source}: vectors: 'sha256' must be a hex SHA-256 digest")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(x, int) and x >= 0 for x in shape)):
        raise PackError(f"{source}: vectors: 'shape' must be [rows, columns], got {shape!r}")
    own = scans is None
    scans = {} if scans is None else scans
    try:
        scan = _scan_for(scans, base, name, False)
        fh = scan.fh
        actual = scan.digest
        if actual != digest:
            raise PackError(f"{source}: {name} does not match the digest in {MANIFEST_FILE} (sha256 {actual[:16]}... "
                            f"instead of {digest[:16]}...); the vectors were modified or damaged, refusing to "
                            "load the pack")
        fh.seek(0)
        major, minor = np.lib.format.read_magic(fh)
        if (major, minor) == (1, 0):
            arr_shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif (major, minor) == (2, 0):
            arr_shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise PackError(f"{source}: {name}: unsupported .npy version {major}.{minor}")
        if dtype != np.dtype("<f4") or fortran or list(arr_shape) != shape:
            raise PackError(f"{source}: {name} holds a {'Fortran-order ' if fortran else ''}{dtype} array of "
                            f"shape {list(arr_shape)}; {MANIFEST_FILE} says float32 {shape}")
        if shape[0] * shape[1] == 0:
            return np.zeros(shape, dtype=np.float32)
        offset = fh.tell()
        if os.fstat(fh.fileno()).st_size != offset + shape[0] * shape[1] * 4:
            raise PackError(f"{source}: {name} is not the size a {shape[0]}x{shape[1]} float32 matrix takes")
        return np.memmap(fh, dtype="<f4", mode="r", offset=offset, shape=(shape[0], shape[1]))
    except FileNotFoundError:
        raise PackError(f"{source}: the vectors file {name} is missing") from None
    except PackError:
        raise
    except (OSError, ValueError) as exc:
        raise PackError(f"{source}: {name} cannot be read as a float32 array ({_short(exc)})") from None
    finally:
        if own:
            for sc in scans.values():
                sc.close()


def read_patterns_file(base: Path, block: dict[str, Any], vectors: np.ndarray, source: str,
                       scans: dict[str, _Scan] | None = None) -> PatternRows:
    """The pattern lines of a pack directory, memory-mapped, after checking the file against the
    digest and the count ``pack.json`` states (one pass over the file: digest and line offsets)."""
    name, digest, n = block.get("file"), block.get("sha256"), int(block["count"])
    if not isinstance(name, str) or name != Path(name).name or name in ("", ".", ".."):
        raise PackError(f"{source}: patterns: 'file' must be a file name inside the pack directory, got {name!r}")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise PackError(f"{source}: patterns: 'sha256' must be a hex SHA-256 digest")
    own = scans is None
    scans = {} if scans is None else scans
    try:
        scan = _scan_for(scans, base, name, True)
        if scan.digest != digest:
            raise PackError(f"{source}: {name} does not match the digest in {MANIFEST_FILE}; the patterns were "
                            "modified or damaged, refusing to load the pack")
        offsets, pos = scan.offsets, scan.size
        if len(offsets) - 1 != n or (n and offsets[-1] != pos):
            raise PackError(f"{source}: {name} holds {len(offsets) - 1} lines for {n} patterns")
        bodies: Any = mmap.mmap(scan.fh.fileno(), 0, access=mmap.ACCESS_READ) if pos else b""
    except FileNotFoundError:
        raise PackError(f"{source}: the patterns file {name} is missing") from None
    except OSError as exc:
        raise PackError(f"{source}: {name} cannot be read ({_short(exc)})") from None
    finally:
        if own:
            for sc in scans.values():
                sc.close()
    classes = [sys.intern(c) for c in block["error_class"]]
    return PatternRows(list(block["pattern_id"]), classes, np.asarray(block["weight"], dtype=np.float64), bodies,
                       offsets, vectors, source)


def _is_pack_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_FILE).is_file()


def read_document(path: str | os.PathLike[str]) -> tuple[Any, Path | None]:
    """The parsed document of a pack file or pack directory, and the directory (``None`` for a file)."""
    p = Path(path)
    if p.is_dir():
        if not (p / MANIFEST_FILE).is_file():
            raise PackError(f"{p}: a directory without {MANIFEST_FILE} is not a pack directory")
        return _read_json(p / MANIFEST_FILE), p
    return _read_json(p), None


def write_document(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a pack document back where it came from (``pack sign``): a ``.json`` / ``.json.gz``
    file, or the ``pack.json`` of a pack directory (its vectors file is left as it is: the document
    states its digest). Written to a temporary name and renamed, so a reader never sees half."""
    p = Path(path)
    dest = p / MANIFEST_FILE if p.is_dir() else p
    if p.is_dir():
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    else:
        text = json.dumps(doc, sort_keys=True, indent=1, allow_nan=False)
    tmp = dest.with_name(dest.name + ".part")
    if dest.name.endswith(".gz"):
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest)


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


_CACHE: dict[tuple[Any, ...], PatternPack] = {}
_CACHE_MAX = 8
#: the fields of a cached pack a copy gets its own deep copy of (the patterns are copied one by one)
_DEEP_FIELDS = ("training", "metrics", "provenance", "interventions", "model", "signature")


def _copy_data(obj: Any) -> Any:
    """A deep copy of JSON-like data; a list of texts (a risk model's 100K pattern ids) is copied
    as one list, not element by element."""
    if isinstance(obj, dict):
        return {k: _copy_data(v) for k, v in obj.items()}
    if isinstance(obj, list):
        if set(map(type, obj)) <= {str, int, float, bool}:
            return list(obj)
        return [_copy_data(v) for v in obj]
    return copy.deepcopy(obj) if not isinstance(obj, str | int | float | bool | None) else obj


def _stat_key(p: Path) -> tuple[Any, ...]:
    """What identifies one version of a pack file or directory: path, size, mtime (nanoseconds)
    and inode of the file, or of each file of a pack directory."""
    files = [p / MANIFEST_FILE, p / PATTERNS_FILE, p / VECTORS_FILE] if p.is_dir() else [p]
    key: list[Any] = [str(p.resolve())]
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            key.append(None)
            continue
        key.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(key)


def load_pack(path: str | os.PathLike[str]) -> PatternPack:
    """Load and verify a pack file or pack directory.

    Verified packs are cached per path, size and modification time (of each file of a pack
    directory), so loading the same pack again is not parsed nor verified again; each call returns
    its own copy (manifest, risk model, pattern objects: changing one does not change the cache),
    sharing only the read-only vector matrix and the patterns' nested values (predicates,
    metadata, examples)."""
    p = Path(path)
    if not p.exists():
        raise PackError(f"no pack file at {p}")
    key = _stat_key(p)
    cached = _CACHE.get(key)
    if cached is None:
        doc, base = read_document(p)
        cached = verify_document(doc, source=str(p), base=base)
        cached._dir = base
        while len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = cached
    out = cached.model_copy(update={k: _copy_data(getattr(cached, k)) for k in _DEEP_FIELDS})
    if isinstance(cached.patterns, PatternRows):
        out.patterns = cached.patterns.copy()  # type: ignore[assignment]
    else:
        out.patterns = [p.model_copy() for p in cached.patterns]
    out._origin, out._signer = cached._origin, cached._signer
    out._vectors, out._dir = cached._vectors, cached._dir
    return out


def save_pack(pack: PatternPack, path: str | os.PathLike[str]) -> str:
    """Write a pack; returns its content hash. A path ending in ``.json`` or ``.json.gz`` is one
    file (format version 1, the vectors inline); any other path is a pack directory (format
    version 2: ``pack.json`` and ``vectors.npy``, the form to use for large packs)."""
    p = Path(path)
    if p.name.endswith(PACK_SUFFIXES):
        doc = pack_document(pack)
        check_document(doc, source=str(p))  # never write a pack that would be refused at load
        p.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc, sort_keys=True, indent=1, allow_nan=False)
        if p.name.endswith(".gz"):
            with gzip.open(p, "wt", encoding="utf-8") as fh:
                fh.write(text)
        else:
            p.write_text(text, encoding="utf-8")
    else:
        doc = _save_directory(pack, p)
    pack.content_hash = doc["content_hash"]
    return str(doc["content_hash"])


def _save_directory(pack: PatternPack, p: Path) -> dict[str, Any]:
    if p.exists() and not p.is_dir():
        raise PackError(f"{p} exists and is not a directory; a pack directory needs a path of its own "
                        "(or end the name in .json for a one-file pack)")
    vectors = np.ascontiguousarray(pattern_matrix(pack), dtype="<f4").reshape(len(pack.patterns), pack.dimension)
    p.mkdir(parents=True, exist_ok=True)
    vtmp, ptmp = p / (VECTORS_FILE + ".part"), p / (PATTERNS_FILE + ".part")
    with open(vtmp, "wb") as fh:
        np.lib.format.write_array(fh, vectors, allow_pickle=False)
    with open(vtmp, "rb") as fh:
        vdigest = hashlib.file_digest(fh, "sha256").hexdigest()
    vblock = {"dtype": "float32", "shape": [int(vectors.shape[0]), int(vectors.shape[1])], "file": VECTORS_FILE,
              "sha256": vdigest}
    doc = pack_document(pack, vectors_block=vblock)
    doc.pop("signature", None)
    doc.pop("content_hash")
    check_document(doc, source=str(p))  # never write a pack that would be refused at load
    pats = doc.pop("patterns")
    columns: dict[str, list[Any]] = {k: [] for k in PATTERN_COLUMNS}
    digest = hashlib.sha256()
    with open(ptmp, "wb") as fh:
        for body in pats:
            for k in PATTERN_COLUMNS:
                columns[k].append(body.pop(k))
            body.pop("vector", None)
            line = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                              allow_nan=False).encode() + b"\n"
            digest.update(line)
            fh.write(line)
    doc["patterns"] = {"file": PATTERNS_FILE, "sha256": digest.hexdigest(), "count": len(pats), **columns}
    doc["content_hash"] = content_hash(doc)
    if pack.signature and doc["content_hash"] == pack.content_hash:  # unchanged: the signature still holds
        doc["signature"] = pack.signature
    os.replace(vtmp, p / VECTORS_FILE)
    os.replace(ptmp, p / PATTERNS_FILE)
    write_document(doc, p)
    return doc


# ------------------------------------------------------------------------------------------ saved indexes
INDEX_FORMAT = "immunity-saved-index"
MAX_INDEX_META_BYTES = 64 * 2**10


def pack_directory(pack: PatternPack) -> Path | None:
    """The pack directory ``pack`` was loaded from (``None`` for a one-file pack or a pack built in
    this process)."""
    base = pack._dir
    return Path(base) if base is not None else None


def _index_paths(base: Path, index: Any) -> tuple[Path, Path] | None:
    name = getattr(index, "file_name", None)
    if not isinstance(name, str) or name != Path(name).name or not name.startswith("index."):
        return None
    return base / name, base / (name + ".json")


def _sha256_of(fh: Any) -> str:
    fh.seek(0)
    return hashlib.file_digest(fh, "sha256").hexdigest()


def save_index(pack: PatternPack, index: Any, directory: str | os.PathLike[str] | None = None) -> Path:
    """Write ``index`` (built over the pack's patterns, in pack order) into the pack directory: the
    index's own file (``index.file_name``, e.g. ``index.hnsw``, written by ``index.save``: data, not
    code) and ``<file>.json``, which binds it to this pack: the pack's content hash, dimension and
    pattern count, the index's name and parameters, and the file's SHA-256. Both are replaced
    atomically; returns the index file's path."""
    base = Path(directory) if directory is not None else pack_directory(pack)
    if base is None:
        raise PackError(f"pack {pack.name!r} was not loaded from a pack directory: nowhere to save its index")
    paths = _index_paths(base, index)
    if paths is None or not callable(getattr(index, "save", None)):
        raise PackError(f"the vector index {getattr(index, 'name', '?')!r} cannot be saved")
    if not pack.content_hash:
        raise PackError(f"pack {pack.name!r} has no content hash to bind its index to")
    path, meta_path = paths
    tmp = base / f".{path.name}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        index.save(str(tmp))
        with open(tmp, "rb") as fh:
            digest = _sha256_of(fh)
        meta = {"format": INDEX_FORMAT, "index": str(index.name), "file": path.name, "sha256": digest,
                "content_hash": pack.content_hash, "dimension": int(pack.dimension),
                "count": len(pack.patterns), "params": dict(getattr(index, "params", {}) or {})}
        mtmp = tmp.with_name(tmp.name + ".json")
        mtmp.write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        os.replace(mtmp, meta_path)
    finally:
        for t in (tmp, tmp.with_name(tmp.name + ".json")):
            if t.exists():
                t.unlink()
    return path


def load_saved_index(pack: PatternPack, index: Any) -> bool:
    """Load the pack directory's saved index into ``index`` (``index.load(path, ids, vectors)``).

    ``False`` when there is none (or the pack has no directory, or the index cannot load one);
    :class:`PackError` naming the problem when one is there but is not this pack's: another
    content hash, dimension, count, index or parameters, a file whose SHA-256 differs from the one
    recorded (modified or damaged), or one the index refuses (its sampled vectors are not the
    pack's). The digest is computed on the open file that is then loaded."""
    base = pack_directory(pack)
    paths = _index_paths(base, index) if base is not None else None
    if paths is None or not callable(getattr(index, "load", None)):
        return False
    path, meta_path = paths
    if not path.exists() and not meta_path.exists():
        return False
    where = f"{path}"
    try:
        if meta_path.stat().st_size > MAX_INDEX_META_BYTES:
            raise PackError(f"{meta_path} is too large")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError(f"{where}: {meta_path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise PackError(f"{meta_path}: unreadable ({_short(exc)})") from None
    want = {"format": INDEX_FORMAT, "index": str(getattr(index, "name", "")), "file": path.name,
            "content_hash": pack.content_hash, "dimension": int(pack.dimension), "count": len(pack.patterns),
            "params": dict(getattr(index, "params", {}) or {})}
    if not isinstance(meta, dict):
        raise PackError(f"{meta_path}: not a saved-index record")
    wrong = [k for k, v in want.items() if meta.get(k) != v]
    if wrong:
        raise PackError(f"{where} is not this pack's index ({', '.join(f'{k} {meta.get(k)!r}, expected {want[k]!r}' for k in wrong)[:400]})")
    try:
        with open(path, "rb") as fh:
            if _sha256_of(fh) != meta.get("sha256"):
                raise PackError(f"{where} does not match the digest in {meta_path.name}; modified or damaged")
            proc = Path(f"/proc/self/fd/{fh.fileno()}")
            index.load(str(proc if proc.exists() else path), pattern_ids(pack), pattern_matrix(pack))
    except PackError:
        raise
    except FileNotFoundError:
        raise PackError(f"{where} is missing") from None
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        raise PackError(f"{where} cannot be loaded ({_short(exc)})") from None
    return True


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
    # not a deep copy of the pack: that would copy a memory-mapped vector matrix into memory
    out = first.model_copy()
    out.patterns = [p.model_copy(deep=True) for p in first.patterns]
    out.interventions = copy.deepcopy(first.interventions)
    members = copy.deepcopy(list((first.model or {}).get("members", [])))
    seen = {p.pattern_id for p in out.patterns}
    names = [first.name]
    blocks = [pattern_matrix(first)]
    for other in others:
        if (other.embedder, other.dimension) != (out.embedder, out.dimension):
            raise PackError(f"cannot merge pack {other.name!r} (embedder {other.embedder!r}, dimension "
                            f"{other.dimension}) into {out.name!r} (embedder {out.embedder!r}, dimension "
                            f"{out.dimension}): the embedders differ")
        names.append(other.name)
        rows = []
        for r, p in enumerate(other.patterns):
            if p.pattern_id not in seen:
                out.patterns.append(p.model_copy(deep=True))
                seen.add(p.pattern_id)
                rows.append(r)
        if rows:
            blocks.append(pattern_matrix(other)[rows])
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
    out._vectors, out._dir = None, None  # a merged pack has no directory (nor a saved index) of its own
    attach_vectors(out, np.concatenate(blocks) if len(blocks) > 1 else blocks[0])
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
            _remove(existing)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PackError(f"cannot create the packs directory {dest_dir}: {exc.strerror or exc}") from None
    dest = dest_dir / _install_name(pack, path)
    try:
        if Path(path).is_dir():  # a pack directory: its two files, then renamed into place
            tmp = dest_dir / f".{dest.name}.part"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name in (MANIFEST_FILE, PATTERNS_FILE, VECTORS_FILE):
                shutil.copyfile(Path(path) / name, tmp / name)
            for saved in Path(path).glob("index.*"):  # a saved index (checked against the pack when used)
                if saved.is_file() and not saved.is_symlink():
                    shutil.copyfile(saved, tmp / saved.name)
            if dest.exists() and dest.resolve() != Path(path).resolve():
                _remove(dest)
            os.replace(tmp, dest)
        else:
            shutil.copyfile(path, dest)
    except OSError as exc:
        raise PackError(f"cannot install into {dest_dir}: {exc.strerror or exc}") from None
    return dest


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _install_name(pack: PatternPack, path: str | os.PathLike[str]) -> str:
    suffix = "" if Path(path).is_dir() else ".json.gz" if str(path).endswith(".gz") else ".json"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{pack.name}-{pack.version}")[:200]
    return f"{safe}{suffix}"


_HEADS: dict[tuple[Any, ...], tuple[str, str] | None] = {}


def _manifest_head(f: Path) -> tuple[str, str] | None:
    """An installed pack's name and version, parsed once per version of the file: every plugin
    manager built in a process collects the installed packs, and a large pack is not parsed again
    while its files (size, modification time, inode) are unchanged."""
    key = _stat_key(f)
    if key in _HEADS:
        return _HEADS[key]
    head: tuple[str, str] | None = None
    try:
        doc, _ = read_document(f)
    except PackError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("name"), str):
        head = (doc["name"], str(doc.get("version", "0"))[:64])
    if len(_HEADS) > 1024:
        _HEADS.clear()
    _HEADS[key] = head
    return head


def installed_packs(directory: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Installed packs by name (a later version of the same name wins), read from the manifests."""
    d = Path(directory) if directory else packs_dir()
    by_name: dict[str, list[tuple[tuple[int, ...], float, Path]]] = {}
    if not d.is_dir():
        return {}
    for f in sorted(d.iterdir()):
        if f.name.startswith("."):
            continue
        if not (f.name.endswith(PACK_SUFFIXES) and f.is_file()) and not _is_pack_dir(f):
            continue
        head = _manifest_head(f)
        if head is None:
            continue
        name, version = head
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
