"""Item vectors in an OpenSearch cluster: a ``knn_vector`` field (k-NN plugin, faiss engine, HNSW,
inner product) behind the same :class:`VectorIndex` interface as in-process FAISS.

Prefer in-process FAISS (the default) while the vectors fit one machine's RAM or GPU memory: it is
an order of magnitude faster per query and uses the GPU. Use this backend when they do not (see
docs/scale-out.md): the cluster shards the HNSW graphs across nodes.

Each vector is a document ``{"label": int, "vec": [...]}`` with ``_id = str(label)``. Writes go
through the same bulk path as the lexical backend (chunks, retries with backoff, per-document
refusals), and a refusal is an error here: a vector must never be silently missing.

Masks (filters and deleted rows): when few labels are allowed (up to 10,000) they are sent as a
``terms`` filter inside the k-NN query, which the faiss engine applies while searching (exact search
for small allowed sets, OpenSearch >= 2.9). Otherwise the query asks for more neighbours than k
and keeps the allowed ones, widening until k are found or every vector has been considered.

OpenSearch reports inner-product similarity as a score (faiss: ``ip + 1`` when ip > 0, else
``1 / (1 - ip)``); :func:`score_to_ip` turns it back into the inner product FAISS returns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from indexer.lexical.opensearch_index import Connection, OpenSearchConfig
from indexer.vector.base import VectorIndex
from shopsearch.errors import (
    ConfigError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidQueryError,
    ShopSearchError,
)

#: File a generation's vector directory holds instead of FAISS files.
KNN_DESCRIPTOR = "opensearch_knn.json"
KNN_MAPPING_VERSION = 1
FIELD = "vec"
# The k-NN plugin's largest k / size.
MAX_K = 10_000
# Allowed sets up to this size are sent as a filter inside the k-NN query.
FILTER_MAX_LABELS = 10_000


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
    """HNSW inner-product search over one physical index of the cluster (one generation and modality)."""

    kind = "hnsw"
    device = "cpu"  # the cluster's CPUs

    def __init__(
        self,
        config: OpenSearchConfig,
        name: str,
        dim: int,
        *,
        create: bool = False,
        m: int = 32,
        ef_construction: int = 256,
        ef_search: int = 256,
        owner: str = "",
    ) -> None:
        if dim < 1:
            raise ConfigError(f"vector dimension must be >= 1, got {dim}")
        self.config, self.name, self.dim = config, name, int(dim)
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
        self._conn = Connection(config)
        self._building = False
        try:
            self._conn.check_cluster()
            if create:
                self._create(owner)
            else:
                self._open()
        except BaseException:
            self._conn.close()
            raise

    # --- opening -------------------------------------------------------------------------------

    def _create(self, owner: str) -> None:
        indices = self._conn.client.indices
        if self._conn.call(f"checking whether {self.name} exists", indices.exists, index=self.name):
            raise ConfigError(
                f"OpenSearch index {self.name} already exists; give each index directory its own "
                "opensearch_index_prefix, or delete that index"
            )
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
            raise ConfigError(
                f"cannot create k-NN index {self.name} (is the k-NN plugin installed?): {exc.message}"
            ) from None
        self._building = True

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

    # --- writes --------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
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
        ops = [
            (str(int(lab)), {"label": int(lab), FIELD: vec.tolist()}) for lab, vec in zip(ids, x, strict=True)
        ]
        refused: list[str] = []

        def done(doc_id: str, ok: bool, reason: str | None) -> None:
            if not ok:
                refused.append(f"label {doc_id}: {reason}")

        refresh = None if self._building else self.config.refresh
        self._conn.bulk(self.name, ops, refresh=refresh, on_done=done)
        if refused:
            raise ShopSearchError(
                f"OpenSearch refused {len(refused)} of {len(ops)} vectors for {self.name}: {refused[0]}"
            )
        if self._building:
            self._conn.call(f"refreshing {self.name}", self._conn.client.indices.refresh, index=self.name)

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
        total = max(1, self.ntotal)
        share = max(float(allowed.sum()) / total, 1e-6)
        want = min(MAX_K, max(2 * k, math.ceil(2 * k / share)))
        while True:
            (hits,) = self._run([self._knn(q, want, None)])
            kept = [(lab, s) for lab, s in hits if 0 <= lab < len(allowed) and allowed[lab]]
            if len(kept) >= k or want >= min(MAX_K, total):
                return kept[:k]
            want = min(MAX_K, want * 4)

    # --- bookkeeping ---------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        got = self._conn.call(f"counting {self.name}", self._conn.client.count, index=self.name)
        return int(got["count"])

    def save(self, path: Path) -> None:
        """The vectors live in the cluster; the directory records which index holds them."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "backend": "opensearch",
            "index": self.name,
            "dim": self.dim,
            "kind": self.kind,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "mapping_version": KNN_MAPPING_VERSION,
        }
        (path / KNN_DESCRIPTOR).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, config: OpenSearchConfig) -> OpenSearchKnnIndex:
        descriptor = Path(path) / KNN_DESCRIPTOR
        try:
            meta = json.loads(descriptor.read_text(encoding="utf-8"))
            name, dim = str(meta["index"]), int(meta["dim"])
        except FileNotFoundError:
            raise IndexNotFoundError(f"no OpenSearch vector index descriptor at {descriptor}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"{descriptor} is unreadable: {exc}") from None
        return cls(
            config,
            name,
            dim,
            m=int(meta.get("m", 32)),
            ef_construction=int(meta.get("ef_construction", 256)),
            ef_search=int(meta.get("ef_search", 256)),
        )

    def publish(self) -> None:
        """Live settings (refresh on, configured replicas) once the build is complete."""
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
