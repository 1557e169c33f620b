"""Vector indexes: one interface (:class:`VectorIndex`), FAISS on CPU or GPU behind it, or the
k-NN plugin of an OpenSearch cluster (``vector_backend = "opensearch"``).

Build FAISS with :func:`make_vector_index` and reopen it with :func:`load_vector_index`; both pick
the CPU or GPU class from ``device`` (``"auto"``: GPU when faiss sees one). A generation's vector
directory is reopened with :func:`open_vector_index`, which goes by what the directory holds (an
OpenSearch descriptor or FAISS files), never by the current settings: an index keeps the backend it
was built with. :func:`create_opensearch_vector_index` and :func:`drop_vector_index` are the
cluster-side counterparts of creating and deleting that directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from indexer.vector.base import VectorIndex
from indexer.vector.faiss_index import (
    FORMAT_VERSION,
    KINDS,
    FaissCpuIndex,
    FaissGpuIndex,
    FaissIndexBase,
    choose_kind,
    gpu_count,
    load_vector_index,
    make_vector_index,
)

if TYPE_CHECKING:
    from indexer.vector.opensearch_knn import OpenSearchKnnIndex
    from shopsearch.settings import Settings

BACKENDS: tuple[str, ...] = ("faiss", "opensearch")
# opensearch_knn.KNN_DESCRIPTOR, spelled out so that FAISS users never import the cluster client
_KNN_DESCRIPTOR = "opensearch_knn.json"

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "KINDS",
    "FaissCpuIndex",
    "FaissGpuIndex",
    "FaissIndexBase",
    "VectorIndex",
    "check_vector_backend",
    "choose_kind",
    "create_opensearch_vector_index",
    "drop_vector_index",
    "gpu_count",
    "load_vector_index",
    "make_vector_index",
    "open_vector_index",
    "vector_backend_of",
]


def vector_backend_of(path: Path) -> str:
    """'opensearch' when ``path`` holds a k-NN descriptor, else 'faiss'."""
    return "opensearch" if (Path(path) / _KNN_DESCRIPTOR).is_file() else "faiss"


def open_vector_index(path: Path, *, device: str = "auto", settings: Settings | None = None) -> VectorIndex:
    """Reopen a generation's vector directory with the backend that wrote it. The cluster
    connection of an OpenSearch one comes from ``settings`` (default: the environment).

    Raises IndexNotFoundError when the directory holds no index, IndexCorruptError when it holds
    something unreadable, ClusterUnavailableError when its cluster cannot be reached."""
    if vector_backend_of(path) == "opensearch":
        from indexer.lexical.opensearch_index import OpenSearchConfig
        from indexer.vector.opensearch_knn import OpenSearchKnnIndex

        config = OpenSearchConfig.from_settings(settings or _default_settings())
        return OpenSearchKnnIndex.load(Path(path), config)
    return load_vector_index(path, device=device)


def create_opensearch_vector_index(
    path: Path, dim: int, *, settings: Settings | None = None, live: bool = False
) -> OpenSearchKnnIndex:
    """A new k-NN index for the generation directory ``path`` belongs to (named
    ``PREFIX-gen-N-MODALITY``), its descriptor written at once; see
    :func:`indexer.vector.opensearch_knn.create_knn_index`."""
    from indexer.lexical.opensearch_index import OpenSearchConfig
    from indexer.vector.opensearch_knn import create_knn_index

    config = OpenSearchConfig.from_settings(settings or _default_settings())
    return create_knn_index(Path(path), config, dim, live=live)


def check_vector_backend(settings: Settings) -> None:
    """Before a build encodes anything: the configured vector backend can be used (FAISS always;
    OpenSearch: the cluster answers and does not lack the k-NN plugin)."""
    if settings.vector_backend != "opensearch":
        return
    from indexer.lexical.opensearch_index import OpenSearchConfig
    from indexer.vector.opensearch_knn import check_knn_cluster

    check_knn_cluster(OpenSearchConfig.from_settings(settings))


def drop_vector_index(path: Path, settings: Settings | None = None) -> None:
    """Free what a doomed generation's vector directory holds outside it (OpenSearch: its k-NN
    index). Best effort, never raises: the caller removes the directory either way."""
    if vector_backend_of(path) != "opensearch":
        return
    from indexer.lexical.opensearch_index import OpenSearchConfig
    from indexer.vector.opensearch_knn import drop_knn_index

    try:
        config = OpenSearchConfig.from_settings(settings or _default_settings())
    except Exception:  # noqa: BLE001 - best effort by contract
        return
    drop_knn_index(Path(path), config)


def _default_settings() -> Settings:
    from shopsearch.settings import load_settings

    return load_settings()
