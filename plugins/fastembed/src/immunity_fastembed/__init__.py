"""immunity-fastembed: neural text embeddings through fastembed (ONNX Runtime, CPU, no PyTorch).

Registers the embedder ``"fastembed"``, a wrapper around ``fastembed.TextEmbedding``. fastembed is
imported when an embedder is built, never when this plugin is loaded, so installing the plugin
costs nothing until it is used.

Usage::

    from immunity.plugins import get_plugin_manager
    from immunity.vectors import get_embedder

    emb = get_embedder(get_plugin_manager(), "fastembed", model_name="BAAI/bge-small-en-v1.5")
    emb.embed(["tool error: file not found"])      # (1, 384) float32, unit rows
    emb.name                                       # "fastembed-BAAI/bge-small-en-v1.5-d384"

A model fastembed does not list (your own export) is loaded from a local directory holding
``model.onnx``, ``tokenizer.json``, ``tokenizer_config.json`` (and usually ``config.json`` and
``special_tokens_map.json``)::

    get_embedder(pm, "fastembed", model_name="acme/support-minilm", specific_model_path="/models/minilm",
                 pooling="mean")

Embedding a text through a transformer costs milliseconds: use it to build pattern packs and to
embed free text off the per-step path; the per-step signature features stay with the hashing
embedder (see ``immunity.vectors``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
from immunity.vectors import l2_normalise

hookimpl = pluggy.HookimplMarker("immunity")

__all__ = ["FastEmbedEmbedder", "hookimpl"]

_POOLINGS = ("mean", "cls", "last_token", "disabled")


class FastEmbedEmbedder:
    """An :class:`immunity.vectors.Embedder` backed by ``fastembed.TextEmbedding``.

    :param model_name: a model fastembed lists (``TextEmbedding.list_supported_models()``), or
        the name you give a local model together with ``specific_model_path`` and ``pooling``.
    :param specific_model_path: a local directory with the model files; fastembed loads it as is,
        with no download.
    :param cache_dir: where fastembed keeps downloaded models (default: fastembed's own,
        ``FASTEMBED_CACHE_PATH`` or a temp directory).
    :param threads: ONNX Runtime threads for one session (default: ONNX Runtime's).
    :param batch_size: texts per ONNX run (default 64).
    :param local_files_only: never download; fail if the model is not in ``cache_dir``. Also on
        when ``HF_HUB_OFFLINE=1``.
    :param pooling: for a model fastembed does not list: ``"mean"``, ``"cls"``, ``"last_token"``
        or ``"disabled"`` (the model already outputs one vector per text).
    :param normalization: for such a model, whether fastembed normalises its output (this class
        L2-normalises every row either way).
    :param dimension: for such a model, its vector length (default: ``hidden_size`` from the
        directory's ``config.json``).
    :param model_file: for such a model, the ONNX file inside the directory (default ``model.onnx``).
    :param output_name: for such a model, the ONNX output to read (default: the first).
    """

    def __init__(self, model_name: str = "BAAI/bge-small-en-v1.5", specific_model_path: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None, batch_size: int = 64,
                 local_files_only: bool = False, pooling: str | None = None, normalization: bool = True,
                 dimension: int | None = None, model_file: str = "model.onnx", output_name: str | None = None) -> None:
        try:
            from fastembed import TextEmbedding
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the 'fastembed' embedder needs the fastembed package: "
                              "pip install immunity-fastembed") from exc

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model_name = model_name
        self.batch_size = int(batch_size)
        path = os.fspath(specific_model_path) if specific_model_path is not None else None
        known = {m["model"].lower() for m in TextEmbedding.list_supported_models()}
        custom = model_name.lower() not in known or _is_our_custom_model(model_name)
        suffix = ""
        if custom:
            if path is None or pooling is None:
                raise ValueError(
                    f"fastembed does not know the model {model_name!r}: to load a local model pass "
                    f"specific_model_path=<directory with {model_file} and tokenizer.json> and "
                    f"pooling= one of {', '.join(_POOLINGS)}"
                )
            pooling_key = pooling.lower()
            if pooling_key not in _POOLINGS:
                raise ValueError(f"pooling must be one of {', '.join(_POOLINGS)}, got {pooling!r}")
            dim = int(dimension) if dimension is not None else _hidden_size(Path(path))
            _register_custom_model(model_name, pooling_key, normalization, dim, model_file, output_name)
            suffix = f"-{pooling_key}" + ("" if normalization else "-raw")
        elif pooling is not None or dimension is not None:
            raise ValueError(f"{model_name!r} is a model fastembed knows: its pooling and dimension are fixed, "
                             f"do not pass pooling= or dimension=")

        kwargs: dict[str, Any] = {"local_files_only": bool(local_files_only)}
        if path is not None:
            kwargs["specific_model_path"] = path
        try:
            self._model = TextEmbedding(model_name=model_name,
                                        cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                                        threads=threads, **kwargs)
        except Exception as exc:
            where = f"from {path}" if path else ("from the local cache only" if local_files_only or
                                                  _offline() else "(downloading it if it is not cached)")
            exc.add_note(f"immunity-fastembed: could not load model {model_name!r} {where}")
            raise
        self.dimension = int(self._model.embedding_size)
        self.name = f"fastembed-{model_name}{suffix}-d{self.dimension}"

    def __repr__(self) -> str:
        return f"FastEmbedEmbedder(name={self.name!r})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed each text: an ``(len(texts), dimension)`` float32 array, rows L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not a single string")
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        rows = list(self._model.embed(texts, batch_size=self.batch_size))
        out = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        if out.shape[1] != self.dimension:
            raise ValueError(f"model {self.model_name!r} returned vectors of length {out.shape[1]}, "
                             f"expected {self.dimension}")
        return l2_normalise(out)


#: custom models this plugin registered with fastembed in this process: name -> settings
_CUSTOM: dict[str, tuple[str, bool, int, str, str | None]] = {}


def _is_our_custom_model(model_name: str) -> bool:
    return model_name.lower() in _CUSTOM


def _register_custom_model(model_name: str, pooling: str, normalization: bool, dim: int, model_file: str,
                           output_name: str | None) -> None:
    """Tell fastembed how to load and pool a model it does not list (once per process and name)."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    settings = (pooling, bool(normalization), dim, model_file, output_name)
    previous = _CUSTOM.get(model_name.lower())
    if previous is not None:
        if previous != settings:
            raise ValueError(f"model {model_name!r} is already registered with fastembed in this process with "
                             f"other settings {previous}; give the model another name")
        return
    TextEmbedding.add_custom_model(
        model=model_name,
        pooling=PoolingType[pooling.upper()],
        normalization=bool(normalization),
        sources=ModelSource(hf=model_name),
        dim=dim,
        model_file=model_file,
        output_name=output_name,
    )
    _CUSTOM[model_name.lower()] = settings


def _hidden_size(directory: Path) -> int:
    config = directory / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        return int(data["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the model's dimension from {config} ('hidden_size'); "
                         f"pass dimension=") from exc


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@hookimpl
def immunity_register_embedders(register: Any) -> None:
    register("fastembed", FastEmbedEmbedder)
