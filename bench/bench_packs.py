"""A large pattern pack: RSS and time to load it, one line each.

    python bench/bench_packs.py [--patterns 100000] [--format dir|json] [--match] [--repeat 5]
    python bench/bench_packs.py --pack DIR [--match] [--repeat 5]     # an existing pack directory

The pack is synthetic but shaped like a learned one (``immunity learn``): each pattern has a
description, predicates (action type, signal minimums, a step range), up to ten example run ids,
the metadata learning writes, a weight, a 256-float vector from the hashing embedder (a prototype
signature's vector plus noise), and one logistic risk model over every pattern. The pack is
written once (``--format dir``: a pack directory with ``pack.json`` and a memory-mapped
``vectors.npy``; ``json``: the single-file format, vectors as base64), then a fresh process loads
it and prints its RSS before and after ``load_pack`` and the wall time of the load (verification
of the content hash and of the vectors' digest included). ``--match`` also makes the matcher ready
(``PackMatcher`` with the hnswlib index when installed, else brute force: the saved index of the
directory when it has one, ``immunity pack index DIR``, else built) and times that.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")

ACTIONS = ["SEARCH", "EDIT", "EXECUTE", "VERIFY", "PLAN", "RESPOND"]
CLASSES = ["loop", "no_progress", "repeated_tool_error", "premature_done", "wrong_tool", "misread_output"]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(n: int, path: Path) -> None:
    import numpy as np
    from immunity.learning.model import (
        MODEL_INPUTS,
        Logistic,
        Member,
        PatternTable,
        TaskPrior,
        member_to_dict,
    )
    from immunity.learning.packs import attach_vectors, save_pack
    from immunity.models import FailurePattern, PatternPack
    from immunity.vectors import HashingEmbedder, l2_normalise

    rng = np.random.default_rng(0)
    emb = HashingEmbedder()
    protos = [emb.embed_features({f"act:{ACTIONS[i % 6]}": 1.0, f"tool:t{i}": 1.0, f"err:e{i % 17}": 1.0,
                                  "failed": 1.0, f"streak{i % 4}": 1.0}) for i in range(max(n // 100, 1))]
    which = rng.integers(0, len(protos), size=n)
    vecs = l2_normalise(np.asarray(protos, np.float32)[which]
                         + rng.normal(0, 0.05, size=(n, emb.dimension)).astype(np.float32))
    pats = []
    for i in range(n):
        cls, act = CLASSES[i % 6], ACTIONS[int(which[i]) % 6]
        pats.append(FailurePattern(
            pattern_id=f"fp_{i:07d}_{int(which[i]):05d}", error_class=cls, domain="coding",
            description=f"{cls} at a {act} step (around step {i % 40}); matched {i % 9}/120 other failed and "
                        f"{i % 5}/300 successful training runs",
            predicates={"action_type": act, "min": {"identical_streak": 2 + i % 3, "last_failed": 1},
                        "steps": [i % 20, i % 20 + 45]},
            position=float(i % 40), support=3 + i % 7, weight=round(0.5 + (i % 50) / 10, 6),
            examples=[f"run-{(i * 7 + k) % 5000:05d}-{k}" for k in range(1 + i % 10)],
            intervention=f"[immunity] hint for {cls}",
            metadata={"failed_hits": i % 9, "failed_runs": 120, "success_hits": i % 5, "success_runs": 300,
                      "likelihood_ratio": round(1.5 + (i % 13) / 7, 4), "found_by": {"divergence": 2, "error": 1}}))
    n_in = len(MODEL_INPUTS)
    coef = np.zeros(n_in)
    coef[MODEL_INPUTS.index("pattern_weight_now")] = 1.0
    member = Member(name="synthetic", threshold=0.5,
                    table=PatternTable(ids=[p.pattern_id for p in pats], vectors=vecs,
                                       weights=np.asarray([p.weight for p in pats]),
                                       classes=[p.error_class for p in pats], predicates=[p.predicates for p in pats],
                                       min_similarity=0.5),
                    logistic=Logistic(np.zeros(n_in), np.ones(n_in), coef, -3.0),
                    prior=TaskPrior(np.zeros((0, emb.dimension), np.float32), np.zeros(0), np.zeros(0), [], 0.5))
    pack = PatternPack(name="big", version="1.0.0", domain="coding", created_with="bench", embedder=emb.name,
                       dimension=emb.dimension, threshold=0.5, patterns=pats,
                       interventions={c: [f"[immunity] hint for {c}"] for c in CLASSES},
                       model={"kind": "logistic-v1", "embedder": {"plugin": "hashing"}, "signature": "features",
                              "members": [member_to_dict(member)]})
    attach_vectors(pack, vecs)
    save_pack(pack, path)


def measure(path: str, match: bool) -> None:
    import gc

    import numpy as np
    from immunity.learning.packs import load_pack, pattern_matrix

    gc.collect()
    before = rss_mb()
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    pack = load_pack(path)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    after = rss_mb()
    vec = pattern_matrix(pack)
    kind = "memory-mapped" if isinstance(vec, np.memmap) or isinstance(getattr(vec, "base", None), np.memmap) \
        else "in memory"
    print(f"pack of {len(pack.patterns):,} patterns ({Path(path).name}, vectors {kind}): load {dt:.2f} s wall, {cpu:.2f} s CPU "
          f"(all threads; load average {load:.1f} on {os.cpu_count()} CPUs); "
          f"RSS {before:.0f} MB before -> {after:.0f} MB after loading (+{after - before:.0f} MB)")
    if match:
        from immunity.learning.matcher import PackMatcher
        from immunity.plugins import get_plugin_manager

        os.environ.pop("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", None)
        pm = get_plugin_manager()
        index = "hnswlib" if "hnswlib" in pm.registry("vector_indexes") else "brute"
        t0 = time.perf_counter()
        m = PackMatcher([pack], pm, index=index, wait=True)
        dt = time.perf_counter() - t0
        gc.collect()
        print(f"matcher over {len(pack.patterns):,} patterns (index {index}, {m.index_source}): ready in {dt:.2f} s; "
              f"RSS {rss_mb():.0f} MB with the pack and the index; members {len(m.members)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", type=int, default=100_000)
    ap.add_argument("--format", default="dir", choices=["dir", "json"])
    ap.add_argument("--match", action="store_true")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--keep", help="write the pack here and keep it")
    ap.add_argument("--pack", help="measure this existing pack directory instead of writing one")
    ap.add_argument("--repeat", type=int, default=1, help="measure in this many fresh processes")
    a = ap.parse_args()
    if a.measure:
        measure(a.measure, a.match)
        return
    if a.pack:
        for _ in range(a.repeat):
            subprocess.run([sys.executable, __file__, "--measure", a.pack] + (["--match"] if a.match else []), check=True)
        return
    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp()) / ("big" if a.format == "dir" else "big.json")
    t0 = time.perf_counter()
    build(a.patterns, out)
    print(f"wrote a pack of {a.patterns:,} patterns to {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    cmd = [sys.executable, __file__, "--measure", str(out)] + (["--match"] if a.match else [])
    for _ in range(a.repeat):
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
