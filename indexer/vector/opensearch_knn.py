"""Item vectors in an OpenSearch cluster: a ``knn_vector`` field (k-NN plugin, faiss engine, HNSW,
inner product) behind the same :class:`VectorIndex` interface as in-process FAISS.

Prefer in-process FAISS (the default) while the vectors fit one machine's RAM or GPU memory: it is
an order of magnitude faster per query and uses the GPU. Use this backend when they do not (see
docs/scale-out.md): the cluster shards the HNSW graphs across nodes.

Each vector is a document ``{"label": int, "vec": [...]}`` with ``_id = str(label)``, so writing a
label again overwrites it (a WAL replayed after a restart adds no duplicates). Writes go through
the same bulk path as the lexical backend (chunks, retries with backoff, per-document refusals),
and a refusal is an error here: a vector must never be silently missing. During a build the index
has bulk-load settings (refresh off, no replicas); it is refreshed once before it is first read,
and :meth:`OpenSearchKnnIndex.publish` turns refresh and replicas on.

Masks (filters and deleted rows): when few labels are allowed (up to 10,000) they are sent as a
``terms`` filter inside the k-NN query, which the faiss engine applies while searching (exact search
for small allowed sets, OpenSearch >= 2.9). Otherwise the query asks for more neighbours than k
and keeps the allowed ones, widening until k are found or every vector has been considered.

OpenSearch reports inner-product similarity as a score (faiss: ``ip + 1`` when ip > 0, else
``1 / (1 - ip)``); :func:`score_to_ip` turns it back into the inner product FAISS returns.

The generation's directory keeps a descriptor (``opensearch_knn.json``) naming the physical index
and, like the FAISS backend, the raw float32 vectors (``vectors.npy``, memory-mapped, and
``labels.npy``): the re-ranker, the fusion model and cold-start CF read item vectors through
:meth:`OpenSearchKnnIndex.vectors_for` on every query, which must not cost a round trip (and the
mapping keeps vectors out of ``_source``, so the cluster could not return them before 3.7).
Vectors added live (WAL upserts) are kept in memory next to that map.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from indexer.lexical.opensearch_index import (
    ClusterUnavailableError,
    Connection,
    OpenSearchConfig,
    generation_of,
    owner_of,
)
from indexer.vector.base import VectorIndex
from indexer.vector.faiss_index import VectorStore  # raw vectors + label table, shared with FAISS
from shopsearch.errors import (
    ConfigError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidQueryError,
    ItemNotFoundError,
    ShopSearchError,
)

log = logging.getLogger(__name__)

#: File a generation's vector directory holds instead of FAISS files.
KNN_DESCRIPTOR = "opensearch_knn.json"
KNN_MAPPING_VERSION = 1
FIELD = "vec"
# The k-NN plugin's largest k / size.
MAX_K = 10_000
# Allowed sets up to this size are sent as a filter inside the k-NN query.
FILTER_MAX_LABELS = 10_000
# HNSW parameters of new indexes (the descriptor records those of each index).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 256
HNSW_EF_SEARCH = 256


def score_to_ip(score: float) -> float:
    """Invert the faiss engine's innerproduct score transform."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


def knn_mapping(dim: int, m: int, ef_construction: int, owner: str) -> dict[str, Any]:
    return {
        "dynamic": "strict",
        # the graph and doc values hold the vector; a JSON copy in _source would double the disk
        "_source": {"excludes": [FIELD]},
        "_meta": {"shopsearch": {"knn_mapping_version": KNN_MAPPING_VERSION, "owner": owner}},
        "properties": {
            "label": {"type": "long"},
            FIELD: {
                "type": "knn_vector",
                "dimension": dim,
                "method": {
                    "name": "hnsw",
                    "space_type": "innerproduct",
                    "engine": "faiss",
                    "parameters": {"m": m, "ef_construction": ef_construction},
                },
            },
        },
    }


class OpenSearchKnnIndex(VectorIndex):
    """HNSW inner-product search over one physical index of the cluster (one generation and modality).

    ``create=True`` creates the physical index ``name`` with bulk-load settings. One that already
    exists is refused when another ``owner`` (index directory) made it; one of the same owner is a
    leftover of an abandoned build and is replaced, or with ``reuse=True`` opened as it is (a live
    index another process of the same directory created a moment ago).
    """

    kind = "hnsw"
    device = "cpu"  # the cluster's CPUs

    def __init__(
        self,
        config: OpenSearchConfig,
        name: str,
        dim: int,
        *,
        create: bool = False,
        reuse: bool = False,
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = HNSW_EF_SEARCH,
        owner: str = "",
    ) -> None:
        if dim < 1:
            raise ConfigError(f"vector dimension must be >= 1, got {dim}")
        self.config, self.name, self.dim = config, name, int(dim)
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
        self._conn = Connection(config)
        self._building = False
        self._unrefreshed = False  # writes made with refresh off that no refresh has covered yet
        # raw vectors: those saved with the generation (memory-mapped) and those added since
        self._base: VectorStore | None = None
        self._live = VectorStore(self.dim)
        # True when the local vectors are all the index holds (created here, or loaded with them)
        self._local_complete = False
        try:
            self._conn.check_cluster()
            if create:
                self._local_complete = self._create(owner, reuse=reuse)
            else:
                self._open()
        except BaseException:
            self._conn.close()
            raise

    # --- opening -------------------------------------------------------------------------------

    def _owner_of(self) -> str | None:
        got = self._conn.call(
            f"reading the mapping of {self.name}", self._conn.client.indices.get_mapping, index=self.name
        )
        for body in got.values():
            meta = (body.get("mappings") or {}).get("_meta") or {}
            return str((meta.get("shopsearch") or {}).get("owner", ""))
        return None

    def _create(self, owner: str, *, reuse: bool) -> bool:
        """Create the index (True), or open the same owner's existing one when ``reuse`` (False)."""
        indices = self._conn.client.indices
        if self._conn.call(f"checking whether {self.name} exists", indices.exists, index=self.name):
            found = self._owner_of()
            if not owner or found != owner:
                who = f"index directory {found}" if found else "something other than this engine"
                raise ConfigError(
                    f"OpenSearch index {self.name} already exists and belongs to {who}; give each index "
                    "directory its own opensearch_index_prefix, or delete that index"
                )
            if reuse:
                self._open()
                return False
            log.warning("replacing %s, left over by an abandoned build", self.name)
            self._conn.call(f"deleting the leftover index {self.name}", indices.delete, index=self.name)
        body = {
            "settings": {
                "index": {
                    "knn": True,
                    "knn.algo_param.ef_search": self.ef_search,
                    "number_of_shards": self.config.shards,
                    "number_of_replicas": 0,
                    "refresh_interval": "-1",
                }
            },
            "mappings": knn_mapping(self.dim, self.m, self.ef_construction, owner),
        }
        try:
            self._conn.call(f"creating k-NN index {self.name}", indices.create, index=self.name, body=body)
        except ShopSearchError as exc:
            if isinstance(exc, ClusterUnavailableError):
                raise
            raise ConfigError(
                f"cannot create k-NN index {self.name} (is the k-NN plugin installed?): {exc.message}"
            ) from None
        self._building = True
        return True

    def _open(self) -> None:
        indices = self._conn.client.indices
        try:
            got = self._conn.call(f"reading the mapping of {self.name}", indices.get_mapping, index=self.name)
        except IndexNotFoundError:
            raise IndexNotFoundError(
                f"OpenSearch k-NN index {self.name} does not exist on {self.config.where()}: "
                "rebuild the index"
            ) from None
        ((physical, body),) = got.items()
        props = (body.get("mappings") or {}).get("properties") or {}
        field = props.get(FIELD) or {}
        if field.get("type") != "knn_vector" or int(field.get("dimension", -1)) != self.dim:
            raise IndexCorruptError(
                f"OpenSearch index {physical} has no {self.dim}-dimensional knn_vector field {FIELD!r} "
                f"(found {field or 'nothing'}); rebuild the index"
            )
        settings = self._conn.call(
            f"reading the settings of {physical}", indices.get_settings, index=physical
        )
        index_settings = (settings.get(physical) or {}).get("settings", {}).get("index", {})
        self._building = str(index_settings.get("refresh_interval", "")) == "-1"
        # never published: whatever was written may not be searchable yet
        self._unrefreshed = self._building

    # --- writes --------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Writing a label that is already stored replaces its vector (``_id`` = label)."""
        x = np.asarray(vectors, dtype=np.float32)
        ids = np.asarray(labels)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"vectors must have shape (n, {self.dim}), got {np.shape(vectors)}")
        if ids.ndim != 1 or len(ids) != len(x) or (len(ids) and not np.issubdtype(ids.dtype, np.integer)):
            raise ConfigError(f"labels must be {len(x)} integers, got shape {ids.shape} dtype {ids.dtype}")
        if len(ids) and ids.min() < 0:
            raise ConfigError(f"labels must be >= 0, got {int(ids.min())}")
        if not np.isfinite(x).all():
            row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise ConfigError(f"vector of label {int(ids[row])} contains NaN or infinity")
        if len(ids) == 0:
            return
        ops = [
            (str(int(lab)), {"label": int(lab), FIELD: vec.tolist()}) for lab, vec in zip(ids, x, strict=True)
        ]
        refused: list[str] = []

        def done(doc_id: str, ok: bool, reason: str | None) -> None:
            if not ok:
                refused.append(f"label {doc_id}: {reason}")

        # a build refreshes once, before its first read (one segment per batch would mean one HNSW
        # graph per batch to search); a live index uses the configured refresh policy
        refresh = None if self._building else self.config.refresh
        self._unrefreshed = True
        self._conn.bulk(self.name, ops, refresh=refresh, on_done=done)
        if refused:
            raise ShopSearchError(
                f"OpenSearch refused {len(refused)} of {len(ops)} vectors for {self.name}: {refused[0]}"
            )
        self._unrefreshed = self._building or (self.config.refresh == "false")
        self._live.append(np.ascontiguousarray(x), ids.astype(np.int64))

    def refresh(self) -> None:
        self._conn.call(f"refreshing {self.name}", self._conn.client.indices.refresh, index=self.name)
        self._unrefreshed = False

    def _refresh_if_needed(self) -> None:
        if self._unrefreshed and self._building:
            self.refresh()

    # --- search --------------------------------------------------------------------------------

    def _knn(self, q: np.ndarray, k: int, labels_filter: np.ndarray | None) -> dict[str, Any]:
        clause: dict[str, Any] = {"vector": q.tolist(), "k": k}
        if labels_filter is not None:
            clause["filter"] = {"terms": {"label": labels_filter.tolist()}}
        return {"size": k, "_source": False, "query": {"knn": {FIELD: clause}}}

    def _run(self, bodies: list[dict[str, Any]]) -> list[list[tuple[int, float]]]:
        msearch: list[dict[str, Any]] = []
        for body in bodies:
            msearch += [{"index": self.name}, body]
        got = self._conn.call(
            f"k-NN search on {self.name}", self._conn.client.msearch, body=msearch, retries=1
        )
        out = []
        for resp in got["responses"]:
            if "error" in resp:
                err = resp["error"]
                reason = err.get("reason") if isinstance(err, dict) else err
                raise ShopSearchError(f"OpenSearch k-NN search on {self.name} failed: {reason}")
            out.append([(int(h["_id"]), score_to_ip(float(h["_score"]))) for h in resp["hits"]["hits"]])
        return out

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(f"query vectors must have {self.dim} dimensions, got shape {np.shape(queries)}")
        if not np.isfinite(q).all():
            raise InvalidQueryError("query vector contains NaN or infinity")
        if k <= 0:
            raise InvalidQueryError(f"k must be a positive number of results, got {k}")
        self._refresh_if_needed()
        nq = len(q)
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_l = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, MAX_K)
        if allowed is None:
            results = self._run([self._knn(row, kk, None) for row in q])
        else:
            allowed = np.asarray(allowed, dtype=bool)
            labels = np.flatnonzero(allowed)
            if len(labels) == 0:
                return out_s, out_l
            if len(labels) <= FILTER_MAX_LABELS:
                results = self._run([self._knn(row, kk, labels) for row in q])
            else:
                results = [self._post_filtered(row, kk, allowed) for row in q]
        for i, hits in enumerate(results):
            for j, (label, score) in enumerate(hits[:k]):
                out_l[i, j], out_s[i, j] = label, score
        return out_s, out_l

    def _post_filtered(self, q: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        """Ask for more neighbours than k (in proportion to how much the mask hides), keep the
        allowed ones, and widen until k are found or nothing more can be asked for."""
        total = max(1, self._local_count() if self._local_complete else self.ntotal)
        share = max(float(allowed.sum()) / total, 1e-6)
        want = min(MAX_K, max(2 * k, math.ceil(2 * k / share)))
        while True:
            (hits,) = self._run([self._knn(q, want, None)])
            kept = [(lab, s) for lab, s in hits if 0 <= lab < len(allowed) and allowed[lab]]
            if len(kept) >= k or want >= min(MAX_K, total):
                return kept[:k]
            want = min(MAX_K, want * 4)

    def check_search(self, vector: np.ndarray) -> None:
        """One k-NN query for a stored vector, run by a build before it goes live: a cluster that
        stores ``knn_vector`` fields but cannot search them fails the build, not the first user."""
        try:
            _, labels = self.search(np.asarray(vector, dtype=np.float32)[None, :], 1)
        except ClusterUnavailableError:
            raise
        except ShopSearchError as exc:
            raise ConfigError(
                f"OpenSearch at {self.config.where()} stores the vectors of {self.name} but cannot run a "
                f"k-NN query on them (is the k-NN plugin installed and enabled?): {exc.message}"
            ) from None
        if labels[0, 0] < 0:
            raise ShopSearchError(f"a k-NN query on {self.name} found nothing although vectors were written")

    # --- raw vectors (re-ranker, fusion and CF features) ----------------------------------------

    def _local_count(self) -> int:
        base = self._base.n if self._base is not None else 0
        return base + self._live.n

    def contains(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``labels`` have a vector stored with this generation."""
        labels = np.asarray(labels)
        found = self._live.positions(labels) >= 0
        if self._base is not None:
            found |= self._base.positions(labels) >= 0
        return found

    def vectors_for(self, labels: np.ndarray) -> np.ndarray:
        """(len(labels), dim) float32 copy of the stored vectors, read locally (no round trip)."""
        labels = np.asarray(labels)
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        live = self._live.positions(labels)
        base = self._base.positions(labels) if self._base is not None else np.full(len(labels), -1)
        missing = (live < 0) & (base < 0)
        if missing.any():
            which = labels[missing][:5].tolist()
            raise ItemNotFoundError(f"no vector stored for label(s) {which} in {self.name}")
        if (live >= 0).any():
            out[live >= 0] = self._live.vectors[live[live >= 0]]
        use_base = live < 0
        if use_base.any() and self._base is not None:
            out[use_base] = self._base.vectors[base[use_base]]
        return out

    # --- bookkeeping ---------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Vectors in the cluster-side index."""
        self._refresh_if_needed()
        got = self._conn.call(f"counting {self.name}", self._conn.client.count, index=self.name)
        return int(got["count"])

    def _descriptor(self, count: int) -> dict[str, Any]:
        return {
            "backend": "opensearch",
            "index": self.name,
            "dim": self.dim,
            "kind": self.kind,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "mapping_version": KNN_MAPPING_VERSION,
            "count": count,
        }

    def save(self, path: Path) -> None:
        """The graph lives in the cluster; the directory records which index holds it, with the raw
        vectors (written first: the descriptor, last, is what makes the directory loadable)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        parts = [s for s in (self._base, self._live) if s is not None and s.n]
        vectors = np.concatenate([s.vectors for s in parts]) if parts else np.empty((0, self.dim), np.float32)
        labels = np.concatenate([s.labels for s in parts]) if parts else np.empty(0, np.int64)
        if len(np.unique(labels)) != len(labels):  # a label written again keeps its newest vector
            _, last = np.unique(labels[::-1], return_index=True)
            keep = np.sort(len(labels) - 1 - last)
            vectors, labels = vectors[keep], labels[keep]
        _write_npy(path / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        _write_npy(path / "labels.npy", np.ascontiguousarray(labels, dtype=np.int64))
        _write_text(path / KNN_DESCRIPTOR, json.dumps(self._descriptor(len(labels)), indent=2) + "\n")

    def write_descriptor(self, path: Path) -> None:
        """The descriptor alone, right after creation: a build that dies later still leaves what
        generation cleanup needs to find and delete this index."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _write_text(path / KNN_DESCRIPTOR, json.dumps(self._descriptor(0), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path, config: OpenSearchConfig) -> OpenSearchKnnIndex:
        path = Path(path)
        meta = read_descriptor(path)
        try:
            name, dim = str(meta["index"]), int(meta["dim"])
            m = int(meta.get("m", HNSW_M))
            ef_construction = int(meta.get("ef_construction", HNSW_EF_CONSTRUCTION))
            ef_search = int(meta.get("ef_search", HNSW_EF_SEARCH))
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"{path / KNN_DESCRIPTOR} is unreadable: {exc!r}") from None
        base = _load_raw(path, dim, meta.get("count"))
        index = cls(config, name, dim, m=m, ef_construction=ef_construction, ef_search=ef_search)
        if base is not None:
            index._base, index._local_complete = base, True
        return index

    def publish(self) -> None:
        """Live settings (refresh on, configured replicas) once the build is complete."""
        self._refresh_if_needed()
        live = {"index": {"refresh_interval": None, "number_of_replicas": self.config.replicas}}
        self._conn.call(
            f"switching {self.name} to live settings",
            self._conn.client.indices.put_settings,
            index=self.name,
            body=live,
        )
        self._building = False

    def drop(self) -> None:
        try:
            self._conn.call(f"deleting {self.name}", self._conn.client.indices.delete, index=self.name)
        except IndexNotFoundError:
            pass

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> OpenSearchKnnIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenSearchKnnIndex(name={self.name!r}, dim={self.dim})"


# ====================================================================== files
def _write_text(target: Path, text: str) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)


def _write_npy(target: Path, array: np.ndarray) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, target)


def read_descriptor(path: Path) -> dict[str, Any]:
    descriptor = Path(path) / KNN_DESCRIPTOR
    try:
        meta = json.loads(descriptor.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexNotFoundError(f"no OpenSearch vector index descriptor at {descriptor}") from None
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{descriptor} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or "index" not in meta or "dim" not in meta:
        raise IndexCorruptError(f"{descriptor} names no index and dimension")
    return meta


def _load_raw(path: Path, dim: int, count: Any) -> VectorStore | None:
    """The raw vectors saved with a descriptor (None for a descriptor written without them)."""
    vec_file, lab_file = path / "vectors.npy", path / "labels.npy"
    if not vec_file.is_file() and not lab_file.is_file():
        return None
    try:
        vectors = np.load(vec_file, mmap_mode="r", allow_pickle=False)
        labels = np.load(lab_file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise IndexCorruptError(f"raw vectors in {path} are unreadable: {exc}") from None
    n = len(labels)
    if (
        vectors.dtype != np.float32
        or vectors.shape != (n, dim)
        or labels.dtype != np.int64
        or labels.ndim != 1
        or (count is not None and int(count) != n)
    ):
        raise IndexCorruptError(
            f"raw vectors in {path} do not match {KNN_DESCRIPTOR}: {vectors.dtype} {vectors.shape} vectors, "
            f"{labels.dtype} {labels.shape} labels, {count} expected of dimension {dim}"
        )
    if n and labels.min() < 0:
        raise IndexCorruptError(f"{lab_file}: negative labels")
    return VectorStore(dim, vectors, labels)


# ====================================================================== the index directory
def knn_index_name(path: Path, config: OpenSearchConfig) -> str:
    """'INDEX/generations/gen-000007.tmp/text' -> 'PREFIX-gen-000007-text' (next to the lexical
    index PREFIX-gen-000007 of the same generation; the name survives the directory's rename)."""
    return f"{config.index_prefix}-{generation_of(Path(path))}-{Path(path).name}"


def create_knn_index(
    path: Path,
    config: OpenSearchConfig,
    dim: int,
    *,
    live: bool = False,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    ef_search: int = HNSW_EF_SEARCH,
) -> OpenSearchKnnIndex:
    """Create the k-NN index of a generation's modality directory and write its descriptor there.

    A build (``live=False``) gets bulk-load settings until :meth:`OpenSearchKnnIndex.publish`. A
    live generation that gains a modality (``live=True``, a WAL upsert with the first image) gets
    an index that is searchable at once, or the one another process of the same index directory
    already made for it."""
    path = Path(path)
    if live and (path / KNN_DESCRIPTOR).is_file():
        return OpenSearchKnnIndex.load(path, config)
    index = OpenSearchKnnIndex(
        config,
        knn_index_name(path, config),
        dim,
        create=True,
        reuse=live,
        m=m,
        ef_construction=ef_construction,
        ef_search=ef_search,
        owner=owner_of(path),
    )
    try:
        if live and index._building:
            index.publish()
        index.write_descriptor(path)
    except BaseException:
        index.close()
        raise
    return index


def drop_knn_index(path: Path, config: OpenSearchConfig) -> bool:
    """Delete the physical index a (doomed) generation's descriptor names. Best effort: returns
    False and logs why when it cannot (the directory is removed by the caller either way)."""
    try:
        name = str(read_descriptor(Path(path))["index"])
    except ShopSearchError:
        return False
    try:
        conn = Connection(config)
    except ShopSearchError as exc:
        log.warning("could not delete the OpenSearch k-NN index of %s: %s", path, exc.message)
        return False
    try:
        conn.call(f"deleting {name}", conn.client.indices.delete, index=name, retries=1)
    except IndexNotFoundError:
        return True
    except ShopSearchError as exc:
        log.warning("could not delete the OpenSearch k-NN index of %s: %s", path, exc.message)
        return False
    finally:
        conn.close()
    return True


def check_knn_cluster(config: OpenSearchConfig) -> None:
    """Fail a build before it encodes anything when the cluster is unreachable
    (ClusterUnavailableError) or says it has no k-NN plugin (ConfigError). A cluster that will not
    list its plugins (no monitor rights, a serverless endpoint) passes; the k-NN query each build
    runs before going live (:meth:`OpenSearchKnnIndex.check_search`) still catches it."""
    conn = Connection(config)
    try:
        conn.check_cluster()
        try:
            plugins = conn.call(
                "listing the cluster's plugins", conn.client.cat.plugins, params={"format": "json"}, retries=1
            )
        except ClusterUnavailableError:
            raise
        except ShopSearchError as exc:
            log.info(
                "cannot list the plugins of %s (%s); the build's k-NN query decides",
                config.where(),
                exc.message,
            )
            return
        if not isinstance(plugins, list):
            return
        names = sorted({str(p.get("component", "")) for p in plugins if isinstance(p, dict)})
        if not any("knn" in name for name in names):
            listed = ", ".join(names) or "none"
            raise ConfigError(
                f"OpenSearch at {config.where()} has no k-NN plugin (plugins: {listed}); "
                "install opensearch-knn or use vector_backend='faiss'"
            )
    finally:
        conn.close()
