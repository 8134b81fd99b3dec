"""Build a tiny transformer-shaped ONNX text model that fastembed can load from a local directory.

Tests that must not download a model use it so that fastembed's real loading path (tokenizer
files, ONNX Runtime session, pooling, normalisation) still runs, offline, in milliseconds::

    from immunity_fastembed.testing import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny")
    emb = FastEmbedEmbedder(model_name="immunity/tiny-test", specific_model_path=model_dir, pooling="mean")

The model: a WordLevel tokenizer over a small vocabulary (``[CLS] words [SEP]``, lower-cased,
split on whitespace and punctuation), then token and token-type embeddings, one dense layer with
``tanh`` and a residual connection, masked by the attention mask: ``last_hidden_state`` of shape
``(batch, sequence, hidden)``. The weights are seeded random numbers; :func:`reference_embedding`
recomputes the same pooled vectors with numpy, so a test can check what fastembed returns.

Needs the ``onnx`` package (a development dependency, not a runtime one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_VOCAB = (
    "the a an of to in on for with and or not no is was be error failed failure file files found missing "
    "permission denied timeout timed out test tests passed pass run running tool call retry again edit "
    "write read search query verify check done answer user customer refund order invoice data table row "
    "rows column schema null value key import module syntax connection refused rate limit"
).split()

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def build_tiny_model(directory: str | Path, hidden: int = 16, vocab: list[str] | None = None, seed: int = 0,
                     max_length: int = 64) -> Path:
    """Write ``model.onnx``, ``tokenizer.json``, ``tokenizer_config.json``, ``config.json`` and
    ``special_tokens_map.json`` into ``directory`` (created if needed); returns the directory."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("building the tiny test model needs the onnx package: pip install onnx") from exc
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    words = list(dict.fromkeys(w.lower() for w in (vocab or DEFAULT_VOCAB)))
    token_ids = {tok: i for i, tok in enumerate(SPECIAL + [w for w in words if w not in SPECIAL])}

    # -- tokenizer -----------------------------------------------------------------------------
    tokenizer = Tokenizer(WordLevel(vocab=token_ids, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", token_ids["[CLS]"]), ("[SEP]", token_ids["[SEP]"])],
    )
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": max_length, "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "do_lower_case": True, "padding_side": "right", "truncation_side": "right",
    }, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
    }, indent=2), encoding="utf-8")
    (out / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": hidden, "vocab_size": len(token_ids), "pad_token_id": 0,
        "max_position_embeddings": max_length, "num_hidden_layers": 1, "type_vocab_size": 2,
    }, indent=2), encoding="utf-8")

    # -- ONNX graph ----------------------------------------------------------------------------
    weights = _weights(len(token_ids), hidden, seed)
    inits = [numpy_helper.from_array(v, name=k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), name="last_axis"))
    dims = ["batch", "sequence"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [hidden])
    nodes = [
        helper.make_node("Gather", ["word_embeddings", "input_ids"], ["words"]),
        helper.make_node("Gather", ["type_embeddings", "token_type_ids"], ["types"]),
        helper.make_node("Add", ["words", "types"], ["x"]),
        helper.make_node("MatMul", ["x", "dense_w"], ["xw"]),
        helper.make_node("Add", ["xw", "dense_b"], ["xb"]),
        helper.make_node("Tanh", ["xb"], ["h"]),
        helper.make_node("Add", ["h", "x"], ["r"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["r", "mask3"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(nodes, "immunity_tiny_text_model", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="immunity-fastembed-testing")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    return out


def _weights(vocab_size: int, hidden: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "word_embeddings": rng.normal(0.0, 1.0, size=(vocab_size, hidden)).astype(np.float32),
        "type_embeddings": rng.normal(0.0, 0.1, size=(2, hidden)).astype(np.float32),
        "dense_w": rng.normal(0.0, 1.0 / np.sqrt(hidden), size=(hidden, hidden)).astype(np.float32),
        "dense_b": rng.normal(0.0, 0.1, size=(hidden,)).astype(np.float32),
    }


def reference_embedding(directory: str | Path, texts: list[str], seed: int = 0) -> np.ndarray:
    """Recompute, with numpy alone, the mean-pooled, L2-normalised vectors the tiny model gives.

    Reads the tokenizer from ``directory`` and regenerates the weights from ``seed`` (the one
    passed to :func:`build_tiny_model`).
    """
    from tokenizers import Tokenizer

    directory = Path(directory)
    config: dict[str, Any] = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    w = _weights(int(config["vocab_size"]), int(config["hidden_size"]), seed)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    rows = []
    for text in texts:
        ids = np.array(tokenizer.encode(text).ids, dtype=np.int64)
        x = w["word_embeddings"][ids] + w["type_embeddings"][0]
        r = np.tanh(x @ w["dense_w"] + w["dense_b"]) + x
        pooled = r.mean(axis=0)
        rows.append(pooled / np.linalg.norm(pooled))
    return np.asarray(rows, dtype=np.float32)
