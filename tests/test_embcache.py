"""Embedding cache: SQLite round-trips, content keys, several processes, corruption recovery, and
re-indexing through a real text model that only sees new or changed texts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from indexer.embcache import (
    EmbeddingCache,
    bytes_key,
    encode_cached,
    encode_texts_cached,
    file_key,
    fingerprint_files,
    text_key,
)
from indexer.encoders.base import TextEncoder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


def _vec(seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def test_round_trip_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"  # parent folders are created
    items = {f"k{i}": _vec(i, dim=4 + i) for i in range(5)}
    with EmbeddingCache(path) as cache:
        cache.put_many(items)
        cache.put_many({})
        got = cache.get_many(["k0", "k3", "absent", "k3"])
        assert set(got) == {"k0", "k3"}
        assert got["k3"].dtype == np.float32 and got["k3"].shape == (7,)
        np.testing.assert_array_equal(got["k0"], items["k0"])
        got["k0"][0] = 99.0  # results are private copies
        assert cache.get_many(["k0"])["k0"][0] == items["k0"][0]
    with EmbeddingCache(path) as again:
        assert len(again) == 5
        np.testing.assert_array_equal(again.get_many(["k4"])["k4"], items["k4"])
        again.put_many({"k4": np.ones(3, dtype=np.float64)})  # replaced, stored as float32
        v = again.get_many(["k4"])["k4"]
        assert v.dtype == np.float32 and v.tolist() == [1.0, 1.0, 1.0]
        assert again.get_many([]) == {}
        # more keys than one SQL statement takes
        many = {f"m{i}": _vec(i, 4) for i in range(1200)}
        again.put_many(many)
        assert len(again.get_many(list(many))) == 1200


def test_keys_hash_content_not_location(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jpg", tmp_path / "copy.jpg", tmp_path / "c.jpg"
    a.write_bytes(b"\xff\xd8 same bytes")
    b.write_bytes(b"\xff\xd8 same bytes")
    c.write_bytes(b"\xff\xd8 other bytes")
    assert file_key("enc", a) == file_key("enc", b) == bytes_key("enc", b"\xff\xd8 same bytes")
    assert file_key("enc", a) != file_key("enc", c)
    assert file_key("enc", a) != file_key("other-enc", a)
    assert text_key("enc", "red hoodie") == text_key("enc", "red hoodie")
    assert text_key("enc", "red hoodie") != text_key("enc", "red hoodie ")
    assert text_key("enc", "red hoodie") != text_key("enc2", "red hoodie")
    assert text_key("enc", "abc") != bytes_key("enc", b"abc")  # texts and files never collide
    with pytest.raises(OSError):
        file_key("enc", tmp_path / "missing.jpg")
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    w1, w2 = tmp_path / "d1" / "model.bin", tmp_path / "d2" / "model.bin"
    w1.write_bytes(b"weights" * 1000)
    w2.write_bytes(b"weights" * 1000)
    assert fingerprint_files([w1]) == fingerprint_files([w2])  # same weights wherever they live
    w2.write_bytes(b"weightz" * 1000)
    assert fingerprint_files([w1]) != fingerprint_files([w2])


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    holder = EmbeddingCache(path)  # held open by this process throughout
    holder.put_many({"parent": np.arange(4, dtype=np.float32)})
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        sys.path.insert(0, sys.argv[3])
        from indexer.embcache import EmbeddingCache
        cache = EmbeddingCache(sys.argv[1])
        tag = sys.argv[2]
        for batch in range(20):
            cache.put_many({f"{tag}-{batch}-{i}": np.full(4, i, np.float32) for i in range(10)})
        assert len(cache.get_many(["parent"])) == 1
        cache.close()
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), tag, str(REPO)], stderr=subprocess.PIPE)
        for tag in ("p1", "p2")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    keys = [f"{t}-{b}-{i}" for t in ("p1", "p2") for b in range(20) for i in range(10)]
    got = holder.get_many(keys)
    assert len(got) == 400
    assert got["p2-19-7"].tolist() == [7.0] * 4
    holder.close()
    with pytest.raises(RuntimeError, match="closed"):
        holder.get_many(["parent"])


def test_garbage_file_is_recreated_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"definitely not sqlite " * 200)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        cache = EmbeddingCache(path)
    assert cache.enabled and len(cache) == 0
    cache.put_many({"k": _vec(1)})
    np.testing.assert_array_equal(cache.get_many(["k"])["k"], _vec(1))
    cache.close()


def test_damaged_pages_are_recreated_on_read(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    with EmbeddingCache(path) as cache:
        cache.put_many({f"k{i}": _vec(i, 256) for i in range(400)})
    conn = sqlite3.connect(path)  # fold the WAL back so the pages below hold the data
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = bytearray(path.read_bytes())
    raw[4096 * 3 : 4096 * 40] = np.random.default_rng(0).integers(0, 256, 4096 * 37, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="corrupt"):
        cache = EmbeddingCache(path)
        found = cache.get_many([f"k{i}" for i in range(400)])
    assert found == {} and len(cache) == 0  # recreated empty rather than crashing
    cache.put_many({"new": _vec(7)})
    assert "new" in cache.get_many(["new"])
    cache.close()


def test_unusable_location_turns_caching_off(tmp_path: Path) -> None:
    folder_in_the_way = tmp_path / "cache.sqlite"
    folder_in_the_way.mkdir()
    with pytest.warns(RuntimeWarning, match="caching is off"):
        cache = EmbeddingCache(folder_in_the_way)
    assert not cache.enabled
    cache.put_many({"k": _vec(1)})
    assert cache.get_many(["k"]) == {} and len(cache) == 0


def test_encode_cached_counts_and_stale_dims(tmp_path: Path) -> None:
    calls: list[list[int]] = []

    def encode(idx: list[int]) -> np.ndarray:
        calls.append(idx)
        return np.stack([np.full(3, i, np.float32) for i in idx])

    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        keys = ["a", "b", "a", "c"]
        out = encode_cached(keys, encode, cache, dim=3)
        assert calls == [[0, 1, 3]]  # the duplicate "a" is encoded once
        assert out[:, 0].tolist() == [0.0, 1.0, 0.0, 3.0]
        out2 = encode_cached(keys, encode, cache, dim=3)
        assert len(calls) == 1
        np.testing.assert_array_equal(out, out2)
        cache.put_many({"b": np.zeros(5, np.float32)})  # a vector of the wrong size
        encode_cached(keys, encode, cache, dim=3)
        assert calls[-1] == [1]
        assert encode_cached([], encode, cache, dim=3).shape == (0, 3)
        with pytest.raises(ValueError, match="shape"):
            encode_cached(["z"], lambda idx: np.zeros((2, 3)), cache, dim=3)


class CountingEncoder(TextEncoder):
    """The real packaged text model, counting the texts that reach it."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.seen.extend(texts)
        return self.inner.encode(texts, batch_size=batch_size, progress=progress)


@pytest.fixture(scope="module")
def real_text_encoder() -> TextEncoder:
    from indexer.encoders.text import SentenceTransformerEncoder

    return SentenceTransformerEncoder(query_backend="torch")


@pytest.mark.slow
def test_reindex_encodes_only_changed_texts(tmp_path: Path, real_text_encoder: TextEncoder) -> None:
    catalog = DATA / "homedepot" / "catalog.jsonl"
    if not catalog.is_file():
        pytest.skip(f"shared data set {catalog} is not present")
    with catalog.open(encoding="utf-8") as f:
        titles = [json.loads(next(f))["title"] for _ in range(24)]
    enc = CountingEncoder(real_text_encoder)
    path = tmp_path / "embcache.sqlite"

    with EmbeddingCache(path) as cache:
        first = encode_texts_cached(enc, titles, cache)
    assert len(enc.seen) == 24 and first.shape == (24, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)

    enc.seen.clear()
    with EmbeddingCache(path) as cache:  # a later run, a new process would see the same
        again = encode_texts_cached(enc, titles, cache)
    assert enc.seen == []
    np.testing.assert_array_equal(first, again)

    changed = list(titles)
    changed[3] = titles[3] + " (2-Pack)"
    changed[10] = "Cordless Drill with Two Batteries"
    with EmbeddingCache(path) as cache:
        third = encode_texts_cached(enc, changed, cache)
    assert enc.seen == [changed[3], changed[10]]
    unchanged = [i for i in range(24) if i not in (3, 10)]
    np.testing.assert_array_equal(third[unchanged], first[unchanged])
    assert float(third[10] @ first[10]) < 0.9  # really re-encoded, not served stale
