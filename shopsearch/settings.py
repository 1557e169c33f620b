"""Settings: one value object, read from ``SHOPSEARCH_*`` environment variables and an
optional TOML file (``SHOPSEARCH_CONFIG`` or ``--config``).

Precedence (highest first): explicit keyword arguments, environment, TOML file, defaults.
Lists and dicts in the environment are JSON, e.g. ``SHOPSEARCH_FIELD_BOOSTS='{"title": 4}'``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shopsearch.errors import ConfigError

DEFAULT_FIELD_BOOSTS: dict[str, float] = {
    "title": 3.0,
    "brand": 2.0,
    "category": 1.5,
    "attributes": 1.0,
    "description": 1.0,
}


class Settings(BaseSettings):
    """Every tunable of the engine. Immutable once built: pass a new one to change behaviour."""

    model_config = SettingsConfigDict(env_prefix="SHOPSEARCH_", frozen=True, extra="forbid")

    # --- where things live
    index_dir: Path = Path("index")

    # --- encoders
    text_model: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model: a local path, a hub name, or the packaged "
        "'all-MiniLM-L6-v2' (offline).",
    )
    query_encoder: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="Backend for encoding queries; 'auto' uses ONNX Runtime when available."
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

    # --- retrieval
    fusion: Literal["rrf", "weighted"] = "rrf"
    rrf_k: int = Field(60, ge=1)
    source_weights: dict[str, float] = Field(default_factory=lambda: {"bm25": 1.0, "text": 1.0, "image": 1.0})
    candidates: int = Field(100, ge=1, le=10_000, description="Top-N taken from each source.")
    query_cache_size: int = Field(4096, ge=0)

    # --- API
    api_key: str | None = None
    cors_origins: list[str] = Field(default_factory=list)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @field_validator("field_boosts", "source_weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, weight in value.items():
            if weight < 0:
                raise ValueError(f"weight for {key!r} must be >= 0, got {weight}")
        return value


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a TOML file (optional), the environment and explicit overrides.

    Raises ConfigError with the offending key instead of a pydantic traceback.
    """
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
        data = data.get("shopsearch", data)
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
