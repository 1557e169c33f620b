"""Vector indexes: one interface (:class:`VectorIndex`), FAISS on CPU or GPU behind it.

Build with :func:`make_vector_index`, reopen with :func:`load_vector_index`; both pick the CPU
or GPU class from ``device`` (``"auto"``: GPU when faiss sees one).
"""

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

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "FaissCpuIndex",
    "FaissGpuIndex",
    "FaissIndexBase",
    "VectorIndex",
    "choose_kind",
    "gpu_count",
    "load_vector_index",
    "make_vector_index",
]
