"""Prototype (issue 15): where does the outcome become visible, and do two untried inputs rank
runs better than chance?

A. Step-text nearest neighbours. Each step's text (tool, arguments, the agent's or customer's
   words, the tool output or error; the first 600 and last 200 characters) is embedded with the
   hashing embedder and with the packaged static encoder. A step is scored by its k = 10 nearest
   steps in a bank of training steps (at most 4,096, sampled uniformly with seed 0), from runs of
   OTHER groups only: the similarity-weighted share of those steps that come from failed runs
   (weights max(cos, 0)). A prefix's score is the running mean of its steps' scores (primary);
   the running max and the last step's score are reported as secondary figures.
B. Population-relative counters. Cumulative errors, repeated calls (same tool and arguments as an
   earlier step), tool calls, output characters and the agent's own characters after k steps, each
   as its mid-rank percentile among a population's runs at the same step index (a run that ended
   carries its final value), plus the share of the population that had ended before step k. The
   population is unlabelled: the training runs of the same source inside one source; the
   held-out source's own runs (the other half of its tasks) when leaving a source out. A logistic
   model (L2 1.0, each run weighted equally) fits these 6 inputs; "A+B" adds A's running mean
   (hashing), computed for training runs with their own group's steps masked.

Every setting above was fixed before any figure was seen. Outcomes are read only to fit on the
training folds and to compute the figures. Folds are the project's (``assign_folds``, 5 folds,
seed 0), so the current pack's held-out scores (``immunity eval --cv --scores-out``) line up.

Usage: uv run python bench/learning/step_text_neighbours.py TAU SWE [--scores-tau F --scores-swe F]
       [--out docs/results/step-text-neighbours]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from collections import defaultdict
from typing import Any

import numpy as np
from immunity.learning.data import group_of, outcome_label, read_runs, task_key
from immunity.learning.evaluate import auroc, bootstrap_auroc, wilson
from immunity.learning.learn import assign_folds, baseline_threshold, unlabelled_threshold

KS = (5, 10, 20, 30)
K_NEIGHBOURS = 10
BANK = 4096
HEAD, TAIL = 600, 200
L2 = 1.0
B_NAMES = ("errors", "repeats", "tool_calls", "output_chars", "own_chars", "share_ended")


def step_text(s: Any) -> str:
    args = json.dumps(s.arguments, sort_keys=True, default=str)[:300] if s.arguments else ""
    out = s.error or s.result or ""
    t = " ".join(x for x in (s.tool or "", args, s.text or "", out) if x)
    return t if len(t) <= HEAD + TAIL else t[:HEAD] + " " + t[-TAIL:]


def counters(steps: list[Any]) -> np.ndarray:
    """(n, 5) cumulative counters, each updated in O(1) per step."""
    seen: set[str] = set()
    c = np.zeros(5)
    rows = []
    for s in steps:
        c[0] += 1.0 if s.failed else 0.0
        if s.tool:
            key = s.tool + "\x00" + json.dumps(s.arguments, sort_keys=True, default=str)
            c[1] += 1.0 if key in seen else 0.0
            seen.add(key)
            c[2] += 1.0
        c[3] += len(s.error or s.result or "")
        c[4] += len(s.text or "") if s.agent != "user" else 0.0
        rows.append(c.copy())
    return np.asarray(rows).reshape(len(steps), 5)


class Run:
    def __init__(self, it: Any, split: str, src: str) -> None:
        self.id = it.run.run_id
        self.y = outcome_label(it.run)
        self.group = group_of(it.run, split)
        self.task = task_key(it.run)
        self.source = src
        self.n = len(it.steps)
        self.texts = [step_text(s) for s in it.steps]
        self.cnt = counters(it.steps)
        self.emb: dict[str, np.ndarray] = {}


def embed_all(runs: list[Run], name: str, cache: str) -> None:
    path = f"{cache}-{name}.npy"
    if os.path.exists(path):
        m = np.load(path, allow_pickle=False)
    else:
        if name == "hashing":
            from immunity.vectors import HashingEmbedder

            e: Any = HashingEmbedder()
        else:
            from immunity_static import StaticEmbedder

            e = StaticEmbedder()
        texts = [t for r in runs for t in r.texts]
        m = np.concatenate([e.embed(texts[i:i + 2048]) for i in range(0, len(texts), 2048)]).astype(np.float32)
        np.save(path, m)
    i = 0
    for r in runs:
        r.emb[name] = m[i:i + r.n]
        i += r.n


# ------------------------------------------------------------------------------------------ A
SEED = 0


def make_bank(train: list[Run], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vecs = np.concatenate([r.emb[name] for r in train])
    ys = np.concatenate([np.full(r.n, r.y, float) for r in train])
    grp = np.concatenate([np.full(r.n, hash(r.group)) for r in train])
    if len(vecs) > BANK:
        pick = np.sort(np.random.default_rng(SEED).choice(len(vecs), BANK, replace=False))
        vecs, ys, grp = vecs[pick], ys[pick], grp[pick]
    return vecs, ys, grp


def knn_scores(run: Run, bank: tuple[np.ndarray, np.ndarray, np.ndarray], name: str, mask_own: bool) -> np.ndarray:
    """(n, 3): running mean, running max, last step of the per-step failed share."""
    vecs, ys, grp = bank
    sims = run.emb[name] @ vecs.T
    if mask_own:
        sims[:, grp == hash(run.group)] = -np.inf
    k = min(K_NEIGHBOURS, sims.shape[1])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(sims, top, axis=1)
    w = np.where(np.isfinite(s), np.maximum(s, 0.0), 0.0)
    tot = w.sum(axis=1)
    share = np.where(tot > 0, (w * ys[top]).sum(axis=1) / np.where(tot > 0, tot, 1.0), float(ys.mean()))
    mean = np.cumsum(share) / np.arange(1, run.n + 1)
    return np.stack([mean, np.maximum.accumulate(share), share], axis=1)


# ------------------------------------------------------------------------------------------ B
def population(pop: list[Run], kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(kmax, N, 5) sorted counter values at each step index, and the run lengths."""
    vals = np.zeros((kmax, len(pop), 5))
    for j, r in enumerate(pop):
        idx = np.minimum(np.arange(kmax), r.n - 1)
        vals[:, j, :] = r.cnt[idx]
    return np.sort(vals, axis=1), np.asarray([r.n for r in pop])


def percentiles(run: Run, pop: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    srt, lens = pop
    kmax, n_pop = srt.shape[0], srt.shape[1]
    out = np.zeros((run.n, 6))
    for i in range(run.n):
        ki = min(i, kmax - 1)
        for c in range(5):
            col = srt[ki, :, c]
            lo = np.searchsorted(col, run.cnt[i, c], "left")
            hi = np.searchsorted(col, run.cnt[i, c], "right")
            out[i, c] = (lo + 0.5 * (hi - lo)) / n_pop
        out[i, 5] = float((lens < i + 1).sum()) / n_pop
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    beta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], L2)
    reg[-1] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ beta))
        g = z.T @ (w * (p - y)) + reg * beta
        h = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(reg) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(h, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return mu, sd, beta


def predict(model: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    mu, sd, beta = model
    return 1 / (1 + np.exp(-(np.hstack([(x - mu) / sd, np.ones((len(x), 1))]) @ beta)))


def fit_b_and_ab(train: list[Any], test: list[Any], fb: dict[str, Any], fa: dict[str, Any],
                 risks: dict[str, Any]) -> None:
    """Fit B (percentiles) and A+B on the training runs and score the test runs with both."""
    mb = fit_rows(train, fb)
    mab = fit_rows(train, {i: np.hstack([fb[i], fa[i]]) for i in fb})
    for r in test:
        risks["B percentiles (logistic)"][r.id] = predict(mb, fb[r.id])
        risks["A+B (logistic)"][r.id] = predict(mab, np.hstack([fb[r.id], fa[r.id]]))

def fit_rows(runs: list[Run], feats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lab = [r for r in runs if r.y is not None]
    x = np.concatenate([feats[r.id] for r in lab])
    y = np.concatenate([np.full(r.n, r.y, float) for r in lab])
    w = np.concatenate([np.full(r.n, 1.0 / r.n) for r in lab])
    return fit_logistic(x, y, w / w.mean())


# ------------------------------------------------------------------------------------------ figures
def auc_at(runs: list[Run], risk: dict[str, np.ndarray], k: int, alive: bool = True) -> dict[str, Any]:
    items = [(r.group, int(r.y), float(risk[r.id][min(k, r.n) - 1])) for r in runs
             if r.y is not None and r.id in risk and (r.n >= k or not alive)]
    ys = np.asarray([y for _, y, _ in items])
    ss = np.asarray([s for _, _, s in items])
    a = auroc(ss[ys == 1], ss[ys == 0]) if len(items) else None
    ci = bootstrap_auroc(items, 1000, 0) if a is not None else None
    return {"value": None if a is None else round(a, 4), "ci95": ci, "f": int((ys == 1).sum()),
            "s": int((ys == 0).sum())}


def paired_difference(runs: list[Run], a: dict[str, np.ndarray], b: dict[str, np.ndarray], k: int,
                      reps: int = 1000) -> tuple[float, tuple[float, float]]:
    """AUROC(a) - AUROC(b) among runs alive at step k, with a 95% bootstrap interval resampling groups
    (both scores on the same resampled runs)."""
    items = [(r.group, int(r.y), float(a[r.id][k - 1]), float(b[r.id][k - 1])) for r in runs
             if r.y is not None and r.n >= k and r.id in a and r.id in b]
    by: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by[it[0]].append(i)
    keys = list(by)
    y = np.asarray([it[1] for it in items])
    sa = np.asarray([it[2] for it in items])
    sb = np.asarray([it[3] for it in items])

    def diff(idx: np.ndarray) -> float | None:
        ya, pa, pb = y[idx], sa[idx], sb[idx]
        x1, x2 = auroc(pa[ya == 1], pa[ya == 0]), auroc(pb[ya == 1], pb[ya == 0])
        return None if x1 is None or x2 is None else x1 - x2

    point = diff(np.arange(len(items)))
    rng = np.random.default_rng(0)
    vals = []
    for _ in range(reps):
        pick = rng.integers(0, len(keys), len(keys))
        d = diff(np.asarray([i for g in pick for i in by[keys[g]]]))
        if d is not None:
            vals.append(d)
    return round(point or 0.0, 4), (round(float(np.percentile(vals, 2.5)), 4), round(float(np.percentile(vals, 97.5)), 4))


def fmt_auc(a: dict[str, Any]) -> str:
    if a["value"] is None:
        return "-"
    ci = a["ci95"]
    return f"{a['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{a['value']:.3f}"


def within_source(runs: list[Run], score_file: str | None, label: str, log: list[str], res: dict[str, Any]) -> None:
    groups = [r.group for r in runs]
    fold = assign_folds(groups, 5, SEED)
    risks: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for j in range(5):
        train = [r for r, f in zip(runs, fold, strict=True) if f != j and r.y is not None]
        test = [r for r, f in zip(runs, fold, strict=True) if f == j]
        for emb in ("hashing", "static"):
            bank = make_bank(train, emb)
            for r in test:
                sc = knn_scores(r, bank, emb, False)
                risks[f"A {emb} mean"][r.id] = sc[:, 0]
                risks[f"A {emb} max"][r.id] = sc[:, 1]
                risks[f"A {emb} last"][r.id] = sc[:, 2]
        pop = population(train, 200)
        fb = {r.id: percentiles(r, pop) for r in train + test}
        bank = make_bank(train, "hashing")
        fa = {r.id: knn_scores(r, bank, "hashing", True)[:, :1] for r in train}
        fa.update({r.id: risks["A hashing mean"][r.id][:, None] for r in test})
        fit_b_and_ab(train, test, fb, fa, risks)
    if score_file:
        cur = read_scores(score_file)
        risks["current pack (eval --cv)"] = cur
        bad = [r.id for r in runs if r.id in cur and len(cur[r.id]) != r.n]
        if bad:
            log.append(f"  note: {len(bad)} runs have a different step count in the pack's scores")
    out: dict[str, Any] = {}
    head = f"{'AUROC alive at step k':34s}" + "".join(f"{'k=' + str(k):>26s}" for k in KS)
    log += [f"\n{label}: {len(runs)} runs ({sum(r.y == 1 for r in runs)} failed), {len(set(groups))} groups",
            head]
    alive = [(sum(1 for r in runs if r.n >= k and r.y == 1), sum(1 for r in runs if r.n >= k and r.y == 0)) for k in KS]
    counts = "".join(f"{f'f={nf} s={ns}':>26s}" for nf, ns in alive)
    log.append(f"{'runs alive':34s}{counts}")
    log.append(f"{'steps so far (alive: constant)':34s}" + "".join(f"{'0.500':>26s}" for _ in KS))
    steps = {r.id: np.arange(1, r.n + 1, dtype=float) for r in runs}
    row = {str(k): auc_at(runs, steps, k, alive=False) for k in KS}
    out["steps so far, all runs (min(n, k))"] = row
    log.append(f"{'steps so far, all runs min(n,k)':34s}" + "".join(f"{fmt_auc(row[str(k)]):>26s}" for k in KS))
    for name, risk in risks.items():
        row = {str(k): auc_at(runs, risk, k) for k in KS}
        out[name] = row
        log.append(f"{name:34s}" + "".join(f"{fmt_auc(row[str(k)]):>26s}" for k in KS))
    ref = "current pack (eval --cv)"
    if ref in risks:
        for name in ("A hashing mean", "A static mean", "B percentiles (logistic)", "A+B (logistic)"):
            d = {str(k): paired_difference(runs, risks[name], risks[ref], k) for k in (5, 10)}
            out[f"{name} minus current pack"] = d
            log.append(f"  paired AUROC difference, {name} minus current pack: "
                       + "; ".join(f"step {k} {v[0]:+.3f} [{v[1][0]:+.3f}, {v[1][1]:+.3f}]" for k, v in d.items()))
    res[label] = out


# ------------------------------------------------------------------------------------------ leave one source out
def halves(runs: list[Run]) -> list[int]:
    return assign_folds([r.task for r in runs], 2, 0)


def alarm_figures(runs: list[Run], risk: dict[str, np.ndarray], target: float) -> dict[str, Any]:
    """Each half of the held-out source alarms at the threshold set without labels on the other
    half; the steps-so-far baseline is calibrated the same way on the other half's lengths."""
    h = halves(runs)
    caught = fa = nf = ns = bc = bfa = 0
    for j in (0, 1):
        part = [r for r, x in zip(runs, h, strict=True) if x == j]
        other = [r for r, x in zip(runs, h, strict=True) if x != j]
        t = unlabelled_threshold([float(risk[r.id].max()) for r in other], target)
        b = baseline_threshold([r.n for r in other], target) or 10**9
        for r in part:
            first = np.flatnonzero(risk[r.id] >= t)
            f = int(first[0]) if len(first) else None
            bf = b - 1 if r.n >= b else None
            if r.y == 1:
                nf += 1
                caught += f is not None and f <= r.n - 2
                bc += bf is not None and bf <= r.n - 2
            elif r.y == 0:
                ns += 1
                fa += f is not None
                bfa += bf is not None
    return {"recall_before_end": [caught, nf, wilson(caught, nf)], "false_alarm_rate": [fa, ns, wilson(fa, ns)],
            "baseline_recall_before_end": [bc, nf, wilson(bc, nf)],
            "baseline_false_alarm_rate": [bfa, ns, wilson(bfa, ns)]}


def read_scores(path: str) -> dict[str, np.ndarray]:
    cur: dict[str, list[float]] = defaultdict(list)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            cur[row["run_id"]].append(float(row["risk"]))
    return {k: np.asarray(v) for k, v in cur.items()}


def leave_source_out(sources: dict[str, list[Run]], log: list[str], res: dict[str, Any],
                     scores: str | None = None) -> None:
    log.append("\nleave-one-source-out (learn on one source, score the other; thresholds and B's population "
               "from the held-out source without labels, each half of its tasks calibrating the other)")
    out: dict[str, Any] = {}
    for test_name, test in sources.items():
        train = [r for n, rs in sources.items() if n != test_name for r in rs if r.y is not None]
        risks: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        pop_train = population(train, 200)
        fb = {r.id: percentiles(r, pop_train) for r in train}
        h = halves(test)
        for j in (0, 1):
            pop = population([r for r, x in zip(test, h, strict=True) if x != j], 200)
            fb.update({r.id: percentiles(r, pop) for r, x in zip(test, h, strict=True) if x == j})
        bank_h = make_bank(train, "hashing")
        fa = {r.id: knn_scores(r, bank_h, "hashing", True)[:, :1] for r in train}
        for emb in ("hashing", "static"):
            bank = make_bank(train, emb)
            for r in test:
                risks[f"A {emb} mean"][r.id] = knn_scores(r, bank, emb, False)[:, 0]
        fa.update({r.id: risks["A hashing mean"][r.id][:, None] for r in test})
        fit_b_and_ab(train, test, fb, fa, risks)
        if scores:
            cur = read_scores(scores)
            risks["current pack (eval --cv)"] = {r.id: cur[r.id] for r in test}
        per: dict[str, Any] = {}
        for name, risk in risks.items():
            per[name] = {"auroc_alive_10": auc_at(test, risk, 10),
                         **{f"target_{t}": alarm_figures(test, risk, t) for t in (0.05, 0.10)}}
        out[test_name] = per
    res["leave_one_source_out"] = out
    names = list(next(iter(out.values())))
    for t in ("0.05", "0.1"):
        log.append(f"target false-alarm rate {t} (unlabelled calibration):")
        for name in names:
            parts = []
            tot = np.zeros(4, int)
            for src, per in out.items():
                f = per[name][f"target_{float(t)}"]
                parts.append(f"{src}: recall {f['recall_before_end'][0]}/{f['recall_before_end'][1]}, "
                             f"FA {f['false_alarm_rate'][0]}/{f['false_alarm_rate'][1]}, "
                             f"AUROC@10 {fmt_auc(per[name]['auroc_alive_10'])}")
                tot += [f["recall_before_end"][0], f["recall_before_end"][1], f["false_alarm_rate"][0],
                        f["false_alarm_rate"][1]]
            log.append(f"  {name:26s} pooled recall {tot[0] / tot[1]:.3f} ({tot[0]}/{tot[1]}) "
                       f"{wilson(int(tot[0]), int(tot[1]))}, FA {tot[2] / tot[3]:.3f} ({tot[2]}/{tot[3]}) "
                       f"{wilson(int(tot[2]), int(tot[3]))}; " + "; ".join(parts))
        tot = np.zeros(4, int)
        for per in out.values():
            f = per[names[0]][f"target_{float(t)}"]
            tot += [f["baseline_recall_before_end"][0], f["baseline_recall_before_end"][1],
                    f["baseline_false_alarm_rate"][0], f["baseline_false_alarm_rate"][1]]
        log.append(f"  {'steps so far':26s} pooled recall {tot[0] / tot[1]:.3f} ({tot[0]}/{tot[1]}) "
                   f"{wilson(int(tot[0]), int(tot[1]))}, FA {tot[2] / tot[3]:.3f} ({tot[2]}/{tot[3]}) "
                   f"{wilson(int(tot[2]), int(tot[3]))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tau")
    ap.add_argument("swe")
    ap.add_argument("--scores-tau")
    ap.add_argument("--scores-swe")
    ap.add_argument("--scores-loso", help="eval --cv TAU SWE --split source --scores-out output")
    ap.add_argument("--cache", default="/tmp/step-text-neighbours")
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=0, help="seed of the folds and of the bank's sample (a stability check)")
    ap.add_argument("--bank", type=int, default=4096, help="training steps kept (a sensitivity check)")
    ap.add_argument("--within-only", action="store_true", help="tau-bench and SWE-bench by instance only")
    a = ap.parse_args()
    global SEED, BANK
    SEED, BANK = a.seed, a.bank
    t0, c0 = time.time(), time.process_time()
    log = [f"settings: k={K_NEIGHBOURS}, bank <= {BANK} steps (seed 0), text head {HEAD} + tail {TAIL} chars, "
           f"logistic L2 {L2}, seed {SEED}; load average at start {os.getloadavg()[0]:.2f}"]
    data = {"tau-bench": read_runs([a.tau], "tau-bench"), "swe-bench": read_runs([a.swe], "mini-swe-agent")}
    res: dict[str, Any] = {}
    sets = {"tau-bench": [Run(it, "task", "tau-bench") for it in data["tau-bench"]],
            "swe-bench": [Run(it, "task", "swe-bench") for it in data["swe-bench"]]}
    for name, runs in sets.items():
        for emb in ("hashing", "static"):
            embed_all(runs, emb, f"{a.cache}-{name}")
    within_source(sets["tau-bench"], a.scores_tau, "tau-bench, 5 folds by task", log, res)
    within_source(sets["swe-bench"], a.scores_swe, "SWE-bench, 5 folds by instance", log, res)
    if a.within_only:
        print("\n".join(log))
        return
    repo = [Run(it, "repo", "swe-bench") for it in data["swe-bench"]]
    for r, s in zip(repo, sets["swe-bench"], strict=True):
        r.emb = s.emb
    within_source(repo, None, "SWE-bench, 5 folds by repository", log, res)
    leave_source_out(sets, log, res, a.scores_loso)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    log.append(f"\nwall {time.time() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s (max RSS {ru.ru_maxrss // 1024} MB), "
               f"load average at end {os.getloadavg()[0]:.2f}")
    text = "\n".join(log)
    print(text)
    if a.out:
        with open(a.out + ".txt", "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        with open(a.out + ".json", "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x)


if __name__ == "__main__":
    main()
