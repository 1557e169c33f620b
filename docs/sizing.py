"""Print the sizing tables of docs/scale-out.md from the formulas below (no dependencies).

    python docs/sizing.py

Every number in the tables comes from these functions; change an assumption here and paste the
output again.
"""

from __future__ import annotations

import math

ITEMS = (1_000_000, 10_000_000, 100_000_000, 1_000_000_000)
DIMS = (384, 1280)  # all-MiniLM-L6-v2 text vectors; EfficientNet-Lite0 image features
HNSW_M = 32  # links per node (indexer/vector/faiss_index.py HNSW_M)
PQ_BYTES = (48, 64)  # IVF-PQ code size: m sub-quantizers x 8 bits
GPU_GB = 80  # one A100/H100 80 GB
GPU_USABLE = 0.8  # the rest is search scratch space and the CUDA context
SHARD_GB = (20, 50)  # OpenSearch's recommended shard size range
OS_REPLICAS = 1  # each shard on two nodes
BM25_BYTES_PER_ITEM = 1024  # see bm25_bytes_per_item()
GB = 1e9


def flat_bytes(d: int) -> float:
    """IndexFlatIP: the float32 vector itself."""
    return 4 * d


def hnsw_bytes(d: int, m: int = HNSW_M) -> float:
    """IndexHNSWFlat: the vector, 2M int32 links on level 0, M links on each upper level (a node
    reaches level >= l with probability M**-l, so sum_l M**-l = 1/(M-1) upper levels on average),
    plus its level (int32) and its offset into the link table (int64)."""
    return 4 * d + 2 * m * 4 + m * 4 / (m - 1) + 4 + 8


def ivfpq_bytes(code_bytes: int) -> float:
    """IndexIVFPQ: the PQ code plus its int64 id in the inverted list."""
    return code_bytes + 8


def ivf_shared_bytes(n: int, d: int, code_bytes: int) -> float:
    """Per index, not per vector: nlist ~ 4 sqrt(N) coarse centroids (float32) and the PQ
    codebooks (256 centroids of d/m floats for each of the m sub-quantizers = 256 d floats)."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    return nlist * d * 4 + 256 * d * 4


ENGINE_EXTRA_RAM = 8 + 4  # per vector, in this engine: int64 label + int32 position-table entry
# ... and the raw float32 vectors (4 d per vector), memory-mapped from vectors.npy: exact search
# over a filtered subset and IVF-PQ re-scoring read them through the page cache.


def knn_native_bytes(d: int, m: int = HNSW_M) -> float:
    """OpenSearch k-NN (faiss HNSW) native memory per vector and copy: 1.1 * (4 d + 8 M)."""
    return 1.1 * (4 * d + 8 * m)


def knn_disk_bytes(d: int, m: int = HNSW_M) -> float:
    """Segment files per vector and copy: the faiss graph file (vector + links) plus the
    knn_vector doc values (4 d); _source excludes the vector."""
    return (4 * d + 8 * m) + 4 * d


def bm25_bytes_per_item() -> float:
    """Measured: the tantivy index (no positions, no stored text) of the Icecat catalog is 316 B per
    item for 894 B of JSON per item. Lucene adds the stored _source (LZ4, about half of the JSON)
    and doc values for ids and facets: 316 + 450 + ~250 = ~1 KB per item and copy."""
    return BM25_BYTES_PER_ITEM


def shards(total_bytes: float) -> str:
    """Primary shards at 50 GB and at 20 GB per shard, at least one."""
    lo = max(1, math.ceil(total_bytes / (SHARD_GB[1] * GB)))
    hi = max(1, math.ceil(total_bytes / (SHARD_GB[0] * GB)))
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def gpus(total_bytes: float) -> int:
    return max(1, math.ceil(total_bytes / (GPU_GB * GB * GPU_USABLE)))


def human(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}" if n / size < 100 else f"{n / size:,.0f} {unit}"
    return f"{n / 1e3:,.0f} KB"


def count(n: int) -> str:
    return f"{n // 1_000_000_000}B" if n >= 1_000_000_000 else f"{n // 1_000_000}M"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def pq_cell(n: int, d: int, code_bytes: int) -> str:
    """IVF-PQ needs d divisible by m (each sub-quantizer codes d/m dimensions)."""
    if d % code_bytes:
        return f"n/a ({d}/{code_bytes} not whole)"
    return human(n * ivfpq_bytes(code_bytes) + ivf_shared_bytes(n, d, code_bytes))


def main() -> None:
    print("Bytes per vector (index structure only):\n")
    head = [
        "d",
        "flat",
        "HNSW (M=32)",
        "IVF-PQ m=48",
        "IVF-PQ m=64",
        "OpenSearch k-NN RAM",
        "raw float32 (mmap)",
    ]
    print(row(head))
    print(row(["---"] * len(head)))
    for d in DIMS:
        cells = [str(d), f"{flat_bytes(d):,.0f}", f"{hnsw_bytes(d):,.0f}"]
        cells += [f"{ivfpq_bytes(m):,.0f}" if d % m == 0 else "n/a" for m in PQ_BYTES]
        cells += [f"{knn_native_bytes(d):,.0f}", f"{flat_bytes(d):,.0f}"]
        print(row(cells))
    for d in DIMS:
        print(f"\nIn-process FAISS, d = {d} (one modality; add {ENGINE_EXTRA_RAM} B/vector of engine")
        print(f"bookkeeping; GPUs: {GPU_GB} GB cards at {GPU_USABLE:.0%} use):\n")
        head = ["items", "flat RAM", "flat GPUs", "HNSW RAM (CPU only)", "IVF-PQ 48 RAM", "IVF-PQ 64 RAM"]
        head += ["IVF-PQ 64 GPUs", "raw vectors (disk, mmap)"]
        print(row(head))
        print(row(["---"] * len(head)))
        for n in ITEMS:
            pq64 = n * ivfpq_bytes(64) + ivf_shared_bytes(n, d, 64)
            cells = [
                count(n),
                human(n * flat_bytes(d)),
                str(gpus(n * flat_bytes(d))),
                human(n * hnsw_bytes(d)),
            ]
            cells += [pq_cell(n, d, 48), pq_cell(n, d, 64), str(gpus(pq64)), human(n * flat_bytes(d))]
            print(row(cells))
    copies = 1 + OS_REPLICAS
    print(f"\nOpenSearch ({OS_REPLICAS} replica: sizes cover all {copies} copies; primary shards at")
    print(f"{SHARD_GB[1]} GB .. {SHARD_GB[0]} GB each):\n")
    head = ["items", "BM25 index", "BM25 primary shards"]
    head += [f"k-NN d={d}: RAM / disk / primary shards" for d in DIMS]
    print(row(head))
    print(row(["---"] * len(head)))
    for n in ITEMS:
        bm25 = n * bm25_bytes_per_item()
        cells = [count(n), human(bm25 * copies), shards(bm25)]
        for d in DIMS:
            disk = n * knn_disk_bytes(d)
            cells.append(
                f"{human(n * knn_native_bytes(d) * copies)} / {human(disk * copies)} / {shards(disk)}"
            )
        print(row(cells))


if __name__ == "__main__":
    main()
