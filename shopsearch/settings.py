"""Settings: one value object, read from ``SHOPSEARCH_*`` environment variables and an
optional TOML file (``SHOPSEARCH_CONFIG`` or ``--config``).

Precedence (highest first): explicit keyword arguments, environment, TOML file, defaults.
Lists and dicts in the environment are JSON, e.g. ``SHOPSEARCH_FIELD_BOOSTS='{"title": 4}'``.
A ``SHOPSEARCH_*`` variable that names no setting is logged once as a warning (with the closest
setting's variable when there is one): it would otherwise be ignored without a word.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shopsearch.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "SHOPSEARCH_"
# SHOPSEARCH_* variables the project reads that are not settings fields
OTHER_ENV_VARS: frozenset[str] = frozenset({"SHOPSEARCH_CONFIG"})
_warned_env: set[str] = set()  # unknown variables already warned about (once per process)

# the candidate sources 'source_weights' may weigh (retriever.search, reranker.features.SOURCES)
SOURCES: tuple[str, ...] = ("bm25", "text", "text_image", "image", "cf", "fused")

DEFAULT_FIELD_BOOSTS: dict[str, float] = {
    "title": 3.0,
    "brand": 2.0,
    "category": 1.5,
    "attributes": 1.0,
    "description": 1.0,
}


class Settings(BaseSettings):
    """Every tunable of the engine. Immutable once built: pass a new one to change behaviour."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # --- where things live
    index_dir: Path = Path("index")

    # --- encoders
    text_model: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model: a local path, a hub name, or the packaged "
        "'all-MiniLM-L6-v2' (offline).",
    )
    query_encoder: Literal["auto", "onnx", "onnx-int8", "torch"] = Field(
        "auto",
        description="Backend for encoding queries. 'auto': int8 ONNX Runtime (about 4x faster than "
        "fp32; Home Depot hybrid NDCG@10 unchanged, see benchmarks/README.md), torch if ONNX fails; "
        "'onnx': fp32 ONNX, the same vectors as sentence-transformers; 'torch': sentence-transformers.",
    )
    image_model: str = Field(
        "efficientnet-lite0",
        description="'efficientnet-lite0' (packaged ImageNet weights) or 'open_clip:ARCH' "
        "with image_pretrained pointing at a local checkpoint.",
    )
    image_pretrained: str | None = None
    video_frames: int = Field(8, ge=1, le=64)
    encode_batch_size: int = Field(64, ge=1)
    media_roots: list[Path] = Field(
        default_factory=list,
        description="Folders images and videos may come from. Empty: the catalog file's folder.",
    )
    max_image_pixels: int = Field(64_000_000, ge=1)

    # --- indexes
    vector_index: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"
    hnsw_threshold: int = Field(20_000, ge=0, description="'auto' uses exact flat search below this.")
    ivfpq_threshold: int = Field(2_000_000, ge=0, description="'auto' uses IVF-PQ at or above this.")
    device: Literal["auto", "cpu", "gpu"] = "auto"
    lexical_backend: Literal["tantivy", "opensearch"] = "tantivy"
    field_boosts: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_FIELD_BOOSTS))

    # --- OpenSearch (lexical_backend / vector_backend = "opensearch"; see docs/opensearch.md)
    vector_backend: Literal["faiss", "opensearch"] = Field(
        "faiss", description="'opensearch': item vectors in knn_vector fields of the cluster."
    )
    opensearch_urls: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:9200"], min_length=1, description="Nodes to talk to."
    )
    opensearch_user: str | None = None
    opensearch_password: str | None = None
    opensearch_api_key: str | None = Field(None, description="Sent as 'Authorization: ApiKey <value>'.")
    opensearch_verify_tls: bool = True
    opensearch_ca_certs: Path | None = Field(None, description="CA bundle for https URLs (PEM).")
    opensearch_timeout_s: float = Field(10.0, gt=0, description="Per-request timeout.")
    opensearch_index_prefix: str = Field(
        "shopsearch",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$",
        description="Alias name; physical indexes are PREFIX-gen-NNNNNN. One prefix per index directory.",
    )
    opensearch_refresh: Literal["wait_for", "true", "false"] = Field(
        "wait_for", description="Refresh policy of live writes ('wait_for': visible within ~1 s)."
    )
    opensearch_bulk_chunk: int = Field(1000, ge=1, le=100_000, description="Documents per _bulk request.")
    opensearch_max_retries: int = Field(5, ge=0, le=20, description="Retries on 429/5xx/connection errors.")
    opensearch_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry.")
    opensearch_shards: int = Field(1, ge=1, le=1024, description="Primary shards per index (~20-50 GB each).")
    opensearch_replicas: int = Field(1, ge=0, le=16, description="Replicas, applied when a build goes live.")

    # --- retrieval
    # Defaults chosen on the Home Depot TRAIN half (benchmarks/README.md): weighted fusion with
    # text at 0.6 beat RRF on NDCG@10 (0.389 vs 0.349) and matched it on the condensed form.
    fusion: Literal["rrf", "weighted"] = "weighted"
    rrf_k: int = Field(60, ge=1)
    source_weights: dict[str, float] = Field(default_factory=lambda: {"bm25": 1.0, "text": 0.6, "image": 1.0})
    candidates: int = Field(100, ge=1, le=10_000, description="Top-N taken from each source.")
    bm25_candidates: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Top-N taken from BM25, at least 'candidates' (no more: off). Hits past 'candidates' "
        "join the pool for the re-ranker only (no share of the fused score); 'reranker_depth' must reach "
        "them, since they sit at the end of the fused order.",
    )
    query_cache_size: int = Field(4096, ge=0)

    spell_correction: bool = Field(
        True,
        description="Search misspelled query words and units as the catalog spells them "
        "(indexer.spelling); requests can switch it off.",
    )

    # --- collaborative filtering (indexer.interactions, indexer.cf, retriever.cf)
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 0.2, "click": 1.0, "add_to_cart": 3.0, "purchase": 5.0},
        description="Weight of each event type in the CF models; types not listed are refused at ingest.",
    )
    hash_user_ids: bool = Field(False, description="Store HMAC-SHA256(salt, id) instead of user/session ids.")
    user_id_salt: str | None = Field(
        None, description="Secret salt for hashing ids; None: a random one kept in INDEX/events/salt (0600)."
    )
    cf_candidates: int = Field(100, ge=1, le=10_000, description="Top-N taken from the CF source.")
    cf_model: Literal["als", "gmf"] = Field("als", description="Learned model: implicit ALS or torch GMF.")
    cf_factors: int = Field(64, ge=2, le=1024)
    cf_half_life_days: float = Field(
        0.0, ge=0, description="Decay of old events in the query graph (0 = no decay)."
    )
    cf_recent_half_life_days: float = Field(
        2.0, gt=0, description="Half-life of the 'recent' click distribution blended into the query graph."
    )
    cf_fuzzy_min_score: float = Field(
        0.82, ge=0, le=1, description="Similarity a misspelled query needs to borrow a known query's clicks."
    )
    cf_position_bias_eta: float = Field(
        1.0, ge=0, description="Clicks at position p weigh p**eta (inverse propensity); 0 = no correction."
    )
    cf_tune: bool = Field(True, description="train-cf tunes blend weights on the newest 10% of the log.")
    cf_live: bool = Field(
        True,
        description="Count events stored after the CF model was trained at query time (live click counts, "
        "seen items), and tune the blend weights for it.",
    )

    @field_validator("event_weights")
    @classmethod
    def _event_weights_ok(cls, value: dict[str, float]) -> dict[str, float]:
        for key, weight in value.items():
            if not key.strip() or weight < 0:
                raise ValueError(f"event weight for {key!r} must be >= 0 and the name non-empty")
        return value

    # --- fusion model (indexer.fusion; 'shopsearch train-fusion'; the retriever's 'fused' source)
    fusion_d_model: int = Field(256, ge=8, le=2048, description="Width of the fusion Transformer.")
    fusion_layers: int = Field(2, ge=1, le=12, description="Transformer layers over the modality tokens.")
    fusion_heads: int = Field(4, ge=1, le=32, description="Attention heads (must divide fusion_d_model).")
    fusion_epochs: int = Field(15, ge=0, le=1000, description="Most training epochs (early stopping).")
    fusion_batch_size: int = Field(256, ge=2, le=65_536, description="(query, item) pairs per step.")
    fusion_lr: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate.")
    fusion_photo_views: int = Field(
        0, ge=0, le=16, description="Augmented photo views (crop, jitter) encoded per item for training."
    )
    fusion_seed: int = Field(0, description="Seed of every random choice in training.")
    fusion_gram_buckets: int = Field(
        0,
        ge=0,
        le=1 << 22,
        description="Hashed word/trigram buckets of the lexical channel (0: off; on Home Depot it lowered "
        "validation NDCG@10 condensed from 0.72 to 0.66).",
    )
    fusion_threads: int = Field(1, ge=1, le=256, description="torch threads used by train-fusion.")

    # --- re-ranker (reranker.serving; 'shopsearch train-reranker' writes INDEX/models/reranker)
    reranker: bool = Field(
        True, description="Re-rank with the trained model in the checkpoint folder once one is there."
    )
    reranker_depth: int = Field(
        400,
        ge=1,
        le=10_000,
        description="Top fused candidates the model re-scores (400: the largest Home Depot pool, BM25 at 200 "
        "beside MiniLM and the fused source at 100 each).",
    )
    reranker_model: Path | None = Field(None, description="Checkpoint folder; None: INDEX/models/reranker.")
    reranker_backend: Literal["onnx", "int8", "torch"] = Field(
        "onnx", description="Transformer runtime: ONNX Runtime, torch dynamic int8, or plain torch."
    )

    # --- API
    api_key: str | None = None
    cors_origins: list[str] = Field(default_factory=list)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    host: str = "127.0.0.1"
    access_log: bool = Field(False, description="Per-request access log lines (costs ~20% of HTTP overhead).")
    port: int = Field(8000, ge=0, le=65535)

    @field_validator("field_boosts", "source_weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, weight in value.items():
            if not math.isfinite(weight) or weight < 0:  # NaN passed 'weight < 0' and reordered results
                raise ValueError(f"weight for {key!r} must be a finite number >= 0, got {weight}")
        return value

    @field_validator("source_weights")
    @classmethod
    def _known_sources(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(SOURCES))
        if unknown:  # a misspelt source would be ignored, and the intended one keep its default
            raise ValueError(f"unknown source(s) {', '.join(unknown)} (known: {', '.join(SOURCES)})")
        return value

    @property
    def bm25_depth(self) -> int:
        """BM25 hits a query takes: never fewer than the other sources' ``candidates``."""
        return max(self.candidates, self.bm25_candidates)


def _warn_unknown_env() -> None:
    """Warn once about each ``SHOPSEARCH_*`` variable that is no setting: pydantic-settings ignores
    them. It matches names regardless of case, and so does this check."""
    fields = list(Settings.model_fields)
    for name in list(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_ENV_VARS or name in _warned_env:
            continue
        key = upper.removeprefix(ENV_PREFIX).lower()
        if key in Settings.model_fields:
            continue
        _warned_env.add(name)
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
        log.warning("environment variable %s is not a setting and is ignored%s", name, hint)


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a TOML file (optional), the environment and explicit overrides.

    Raises ConfigError with the offending key instead of a pydantic traceback.
    """
    _warn_unknown_env()
    data: dict[str, Any] = {}
    path = config or os.environ.get("SHOPSEARCH_CONFIG")
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        if "shopsearch" in data:
            table, rest = data["shopsearch"], sorted(k for k in data if k != "shopsearch")
            if not isinstance(table, dict):
                raise ConfigError(f"config file {p}: 'shopsearch' must be a [shopsearch] table")
            if rest:  # they would be ignored without a word
                raise ConfigError(f"config file {p}: {', '.join(rest)} outside the [shopsearch] table")
            data = table
        # environment wins over the file: drop file keys that the environment sets
        data = {k: v for k, v in data.items() if f"SHOPSEARCH_{k.upper()}" not in os.environ}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '?'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except SettingsError as exc:  # e.g. a SHOPSEARCH_* variable that should be JSON and is not
        raise ConfigError(f"invalid settings in the environment: {exc}") from None
