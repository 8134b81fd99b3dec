"""immunity-static: a real sentence encoder that installs from a package, with no model download.

Registers the embedder ``"static"``. A text's vector is the mean of its tokens' rows in a static
embedding table (model2vec style): one tokenizer call and one small sum per text, microseconds,
no transformer and no network at run time. The wheel ships one such table,
``minilm-l6-static-d128``: a distillation of sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0)
to 128 dimensions (see ``model/config.json`` and ``scripts/distil_minilm.py``).

Text goes through the encoder; a step's structural signature (:meth:`embed_features`) goes through
core's hashing embedder, as with the default embedder, so patterns match as before and only the
task (its prior and its sequence references) and other free text change. Both live in one vector
space of ``dimension`` coordinates: the encoder's vector in the first ones, zero-padded, so
cosine similarities are the encoder's own.

Usage::

    emb = get_embedder(get_plugin_manager(), "static")                    # the shipped model
    emb = get_embedder(pm, "static", model_path="/models/my-static")    # embeddings.npy + tokenizer.json
    emb.name     # "static-minilm-l6-static-d128-p256+hashing-v1-d256"
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
from immunity.vectors import HashingEmbedder

hookimpl = pluggy.HookimplMarker("immunity")

__all__ = ["StaticEmbedder", "hookimpl", "MODEL_DIR"]

#: The model shipped in the wheel.
MODEL_DIR = Path(__file__).parent / "model"


class StaticEmbedder:
    """An :class:`immunity.vectors.Embedder` over a static token-embedding table.

    :param model_path: a directory with ``embeddings.npy`` (a ``vocabulary x d`` float array, no
        pickle), ``tokenizer.json`` (a Hugging Face ``tokenizers`` file whose ids index the rows)
        and optionally ``config.json`` (``name``); default: the model shipped in the wheel.
    :param dimension: the length of the vectors (at least the table's ``d``; the rest is zero),
        also the dimension of the hashed structural features (default 256, as core's default).
    :param max_tokens: tokens of a text read (its head; default 512).
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, dimension: int = 256,
                 max_tokens: int = 512) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the 'static' embedder needs the tokenizers package: pip install immunity-static") \
                from exc
        path = Path(model_path) if model_path is not None else MODEL_DIR
        table = np.load(path / "embeddings.npy", allow_pickle=False)
        if table.ndim != 2 or not np.all(np.isfinite(table)):
            raise ValueError(f"{path / 'embeddings.npy'}: expected a finite 2-d array, got shape {table.shape}")
        self.table = table.astype(np.float32)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(max_tokens))
        if self.tokenizer.get_vocab_size() > len(self.table):
            raise ValueError(f"{path}: the tokenizer has {self.tokenizer.get_vocab_size()} ids but the table "
                             f"{len(self.table)} rows")
        cfg_file = path / "config.json"
        cfg: dict[str, Any] = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
        self.model_name = str(cfg.get("name") or path.name)
        width = self.table.shape[1]
        self.dimension = int(dimension)
        if self.dimension < width:
            raise ValueError(f"dimension {self.dimension} is smaller than the model's {width}")
        self.hashing = HashingEmbedder(dimension=self.dimension)
        self.max_tokens = int(max_tokens)
        self.name = f"static-{self.model_name}-p{self.dimension}+{self.hashing.name}"
        if self.max_tokens != 512:
            self.name += f"-t{self.max_tokens}"

    def __repr__(self) -> str:
        return f"StaticEmbedder(name={self.name!r})"

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit rows (zero for a text with no known token), ``(len(texts), dimension)`` float32."""
        out = np.zeros((len(texts), self.dimension), np.float32)
        if not texts:
            return out
        width = self.table.shape[1]
        for i, enc in enumerate(self.tokenizer.encode_batch([t or "" for t in texts], add_special_tokens=False)):
            if enc.ids:
                v = self.table[np.asarray(enc.ids, dtype=np.intp)].sum(axis=0)
                n = float(np.linalg.norm(v))
                if n > 0:
                    out[i, :width] = v / n
        return out

    def embed_features(self, features: Any) -> np.ndarray:
        return self.hashing.embed_features(features)

    def embed_features_batch(self, rows: Any) -> np.ndarray:
        return self.hashing.embed_features_batch(rows)


@hookimpl
def immunity_register_embedders(register: Any) -> None:
    register("static", StaticEmbedder)
