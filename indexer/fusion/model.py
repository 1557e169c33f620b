"""The fusion model: a small Transformer over an item's modality tokens, and a query tower.

Item tokens (each projected to ``d_model`` and tagged with a learned token-type embedding)::

    [CLS] text image video brand category price words colour

``text``/``image``/``video`` are the stored encoder vectors (MiniLM, EfficientNet-Lite, pooled
video frames); ``brand``, ``category`` (mean of the embeddings of every prefix of the path, so
"Men > Tops" shares with "Men") and ``price`` (a log-price bucket) are learned embeddings;
``words`` are the item's hashed words and trigrams; ``colour`` is the HSV histogram of the item's
photo (``indexer.encoders.colour``), which the image encoder's pooled features mostly lose. Absent
tokens are masked out of attention, so one model serves items with any subset of modalities.

The output lives in the text encoder's space (``out_dim == text_dim``): the item vector is
``normalize(alpha * text + head(CLS))`` and the query vector ``normalize(q + mlp(q))``. With the
head and the query MLP near zero at initialisation, the untrained model ranks text exactly as the
text encoder does; training moves it from there, and an item that only has a photo must learn to
land where texts describing it land (the cross-modal bridge).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shopsearch.errors import IndexCorruptError

TOKEN_TYPES: tuple[str, ...] = (
    "cls",
    "text",
    "image",
    "video",
    "brand",
    "category",
    "price",
    "words",
    "colour",
)
CONTENT_TOKENS: tuple[str, ...] = ("text", "image", "video")
FORMAT = "shopsearch-fusion"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class FusionConfig:
    """Architecture and feature vocabulary: everything needed to rebuild the model (saved as JSON)."""

    text_dim: int = 384
    image_dim: int = 0  # 0: the catalog has no photos (no image token)
    video_dim: int = 0
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    ff_dim: int = 512
    dropout: float = 0.1
    query_hidden: int = 512
    # feature vocabularies (index 0 = unknown / absent)
    brands: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    max_category_depth: int = 4
    price_edges: list[float] = field(default_factory=list)  # ascending; bucket = 1 + searchsorted
    # hashed words and character trigrams of the item's own words and of the query (0: off): a
    # lexical channel that a one-letter typo only partly changes
    n_gram_buckets: int = 32768
    max_item_grams: int = 96
    max_query_grams: int = 48
    # the photo's colour histogram as its own token (0: none; configs written before it had none)
    colour_dim: int = 0
    text_model: str = ""
    image_model: str = ""
    colour_model: str = ""  # the histogram recipe (indexer.encoders.colour.COLOUR_NAME)

    @property
    def out_dim(self) -> int:
        return self.text_dim

    @property
    def n_token_types(self) -> int:
        """Token types this model embeds: a model without the colour token has one fewer (so
        checkpoints written before it existed load unchanged)."""
        return len(TOKEN_TYPES) if self.colour_dim else len(TOKEN_TYPES) - 1

    @property
    def n_price_buckets(self) -> int:
        return len(self.price_edges) + 2  # 0 = no price, 1..len+1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        known = {f.name for f in fields(cls)}
        data = {"n_gram_buckets": 0, **data}  # configs written before the lexical channel had none
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ItemArrays:
    """Model inputs for a batch of items, as numpy arrays (absent parts zero / masked)."""

    text: np.ndarray  # (B, text_dim) float32
    text_mask: np.ndarray  # (B,) bool
    image: np.ndarray  # (B, image_dim)
    image_mask: np.ndarray
    video: np.ndarray  # (B, video_dim)
    video_mask: np.ndarray
    brand: np.ndarray  # (B,) int64, 0 = none
    category: np.ndarray  # (B, depth) int64, 0 = pad
    price: np.ndarray  # (B,) int64, 0 = none
    grams: np.ndarray  # (B, max_item_grams) int32 hashed word/trigram ids, 0 = pad
    colour: np.ndarray  # (B, colour_dim) float32 photo colour histogram
    colour_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.text_mask)

    def take(self, idx: np.ndarray) -> ItemArrays:
        return ItemArrays(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def copy(self) -> ItemArrays:
        return ItemArrays(**{f.name: getattr(self, f.name).copy() for f in fields(self)})

    def present(self) -> np.ndarray:
        """(B, len(TOKEN_TYPES)) bool: which tokens each item has (CLS always)."""
        return np.stack(
            [
                np.ones(len(self), dtype=bool),
                self.text_mask,
                self.image_mask,
                self.video_mask,
                self.brand > 0,
                (self.category > 0).any(axis=1),
                self.price > 0,
                (self.grams > 0).any(axis=1),
                self.colour_mask,
            ],
            axis=1,
        )

    @classmethod
    def empty(cls, n: int, config: FusionConfig) -> ItemArrays:
        return cls(
            text=np.zeros((n, config.text_dim), dtype=np.float32),
            text_mask=np.zeros(n, dtype=bool),
            image=np.zeros((n, config.image_dim), dtype=np.float32),
            image_mask=np.zeros(n, dtype=bool),
            video=np.zeros((n, config.video_dim), dtype=np.float32),
            video_mask=np.zeros(n, dtype=bool),
            brand=np.zeros(n, dtype=np.int64),
            category=np.zeros((n, config.max_category_depth), dtype=np.int64),
            price=np.zeros(n, dtype=np.int64),
            grams=np.zeros((n, config.max_item_grams if config.n_gram_buckets else 1), dtype=np.int32),
            colour=np.zeros((n, config.colour_dim), dtype=np.float32),
            colour_mask=np.zeros(n, dtype=bool),
        )


def modality_dropout(
    items: ItemArrays,
    rng: np.random.Generator,
    *,
    p_content: float = 0.3,
    p_meta: float = 0.2,
    p_meta_without_text: float = 0.5,
    p_colour: float = 0.1,
) -> ItemArrays:
    """Drop tokens at random so the model learns to embed items that lack a photo, a text or
    metadata. Each content token (text/image/video) is dropped with ``p_content`` but at least one
    present content token always survives; brand/category/price are dropped with ``p_meta`` (with
    ``p_meta_without_text`` when the text went, since a photo-only catalog usually has neither).
    The colour histogram is part of the photo: it goes when the photo goes, and alone with
    ``p_colour`` (a photo whose file could not be read again has a vector but no histogram)."""
    out = items.copy()
    n = len(out)
    content = np.stack([out.text_mask, out.image_mask, out.video_mask], axis=1)
    drop = rng.random(content.shape) < p_content
    kept = content & ~drop
    lost_all = content.any(axis=1) & ~kept.any(axis=1)
    for i in np.flatnonzero(lost_all):  # keep one present token, chosen at random
        kept[i, rng.choice(np.flatnonzero(content[i]))] = True
    out.text_mask, out.image_mask, out.video_mask = kept[:, 0], kept[:, 1], kept[:, 2]
    text_gone = content[:, 0] & ~kept[:, 0]
    out.grams[text_gone] = 0  # the item's words go with its text
    p = np.where(text_gone, p_meta_without_text, p_meta)
    for name in ("brand", "price"):
        arr = getattr(out, name)
        arr[rng.random(n) < p] = 0
    out.category[rng.random(n) < p] = 0
    if out.colour.shape[1]:
        out.colour_mask = out.colour_mask & out.image_mask & (rng.random(n) >= p_colour)
    return out


class _Block(nn.Module):
    """Pre-LayerNorm Transformer encoder block that can return its attention weights."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = self.ln1(x)
        a, w = self.attn(y, y, y, key_padding_mask=pad, need_weights=need_weights, average_attn_weights=True)
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.ln2(x)))
        return x, w


class FusionModel(nn.Module):
    """Item tower (Transformer over modality tokens) and query tower (MLP with a residual)."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.d_model
        self.cls = nn.Parameter(torch.zeros(d))
        self.type_emb = nn.Embedding(c.n_token_types, d)
        self.proj_text = nn.Sequential(nn.Linear(c.text_dim, d), nn.LayerNorm(d))
        self.proj_image = nn.Sequential(nn.Linear(c.image_dim, d), nn.LayerNorm(d)) if c.image_dim else None
        self.proj_video = nn.Sequential(nn.Linear(c.video_dim, d), nn.LayerNorm(d)) if c.video_dim else None
        self.proj_colour = (
            nn.Sequential(nn.Linear(c.colour_dim, d), nn.LayerNorm(d)) if c.colour_dim else None
        )
        self.brand_emb = nn.Embedding(len(c.brands) + 1, d, padding_idx=0)
        self.category_emb = nn.Embedding(len(c.categories) + 1, d, padding_idx=0)
        self.price_emb = nn.Embedding(c.n_price_buckets, d, padding_idx=0)
        self.gram_emb = (
            nn.EmbeddingBag(c.n_gram_buckets + 1, d, mode="mean", padding_idx=0) if c.n_gram_buckets else None
        )
        self.words_ln = nn.LayerNorm(d)
        # the words token enters at zero strength (identity start) and the model turns it up
        self.words_gate = nn.Parameter(torch.zeros(()))
        self.query_grams = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, c.out_dim))
        self.blocks = nn.ModuleList([_Block(d, c.n_heads, c.ff_dim, c.dropout) for _ in range(c.n_layers)])
        self.ln_out = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, c.out_dim))
        self.text_gate = nn.Parameter(torch.ones(()))  # alpha: weight of the raw text vector
        self.query_mlp = nn.Sequential(
            nn.Linear(c.text_dim, c.query_hidden),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.query_hidden, c.out_dim),
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.05)))
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.type_emb.weight, std=0.02)
        for emb in (self.brand_emb, self.category_emb, self.price_emb):
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[0].zero_()
        # near-identity start: the head adds little to the text vector, the query MLP nothing
        nn.init.normal_(self.head[2].weight, std=1e-4)
        nn.init.zeros_(self.head[2].bias)
        nn.init.zeros_(self.query_mlp[3].weight)
        nn.init.zeros_(self.query_mlp[3].bias)
        nn.init.zeros_(self.query_grams[1].weight)
        nn.init.zeros_(self.query_grams[1].bias)
        if self.gram_emb is not None:
            nn.init.normal_(self.gram_emb.weight, std=0.1)
            with torch.no_grad():
                self.gram_emb.weight[0].zero_()

    # ----------------------------------------------------------------- towers
    def _tokens(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Token embeddings of the token types present in at least one item of the batch (a
        text-only catalog runs 2 tokens, not 7), the padding mask, and which types they are."""
        b = x["text"].shape[0]
        d = self.config.d_model
        cat = x["category"]
        none = torch.zeros_like(x["text_mask"])
        present = [
            torch.ones(b, dtype=torch.bool, device=cat.device),
            x["text_mask"],
            x["image_mask"] if self.proj_image is not None else none,
            x["video_mask"] if self.proj_video is not None else none,
            x["brand"] > 0,
            (cat > 0).any(dim=1),
            x["price"] > 0,
            (x["grams"] > 0).any(dim=1) if self.gram_emb is not None else none,
            x["colour_mask"] if self.proj_colour is not None else none,
        ]

        def category() -> torch.Tensor:
            n_cat = (cat > 0).sum(dim=1, keepdim=True).clamp(min=1)
            return self.category_emb(cat).sum(dim=1) / n_cat

        makers = [
            lambda: self.cls.expand(b, d),
            lambda: self.proj_text(x["text"]),
            lambda: self.proj_image(x["image"]),
            lambda: self.proj_video(x["video"]),
            lambda: self.brand_emb(x["brand"]),
            category,
            lambda: self.price_emb(x["price"]),
            lambda: self.words_gate * self.words_ln(self.gram_emb(x["grams"])),
            lambda: self.proj_colour(x["colour"]),
        ]
        kept = [0] + [j for j in range(1, self.config.n_token_types) if bool(present[j].any())]
        h = torch.stack([makers[j]() for j in kept], dim=1) + self.type_emb.weight[kept][None, :, :]
        pad = ~torch.stack([present[j] for j in kept], dim=1)
        return h, pad, kept

    def encode_items(
        self, x: dict[str, torch.Tensor], *, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, out_dim) L2-normalised item vectors; with ``return_attention`` also the last
        layer's attention of CLS over the tokens (B, len(TOKEN_TYPES)), averaged over heads
        (0 for absent tokens)."""
        h, pad, kept = self._tokens(x)
        attn = None
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            h, w = block(h, pad, need_weights=return_attention and last)
            if w is not None:
                attn = h.new_zeros((h.shape[0], len(TOKEN_TYPES)))
                attn[:, kept] = w[:, 0, :]
        out = self.head(self.ln_out(h[:, 0]))
        text = x["text"] * x["text_mask"][:, None].to(x["text"].dtype)
        out = out + self.text_gate * text
        return F.normalize(out, dim=-1, eps=1e-8), attn

    def encode_queries(self, q: torch.Tensor, grams: torch.Tensor | None = None) -> torch.Tensor:
        """(B, out_dim) L2-normalised query vectors from text-encoder query vectors and,
        when the model has the lexical channel, the query's hashed words/trigrams."""
        out = q + self.query_mlp(q)
        if self.gram_emb is not None and grams is not None:
            out = out + self.query_grams(self.gram_emb(grams.long()))
        return F.normalize(out, dim=-1, eps=1e-8)


def to_tensors(items: ItemArrays, device: str = "cpu") -> dict[str, torch.Tensor]:
    return {
        "text": torch.from_numpy(np.ascontiguousarray(items.text, dtype=np.float32)).to(device),
        "text_mask": torch.from_numpy(items.text_mask.astype(bool)).to(device),
        "image": torch.from_numpy(np.ascontiguousarray(items.image, dtype=np.float32)).to(device),
        "image_mask": torch.from_numpy(items.image_mask.astype(bool)).to(device),
        "video": torch.from_numpy(np.ascontiguousarray(items.video, dtype=np.float32)).to(device),
        "video_mask": torch.from_numpy(items.video_mask.astype(bool)).to(device),
        "brand": torch.from_numpy(items.brand.astype(np.int64)).to(device),
        "category": torch.from_numpy(items.category.astype(np.int64)).to(device),
        "price": torch.from_numpy(items.price.astype(np.int64)).to(device),
        "grams": torch.from_numpy(items.grams.astype(np.int64)).to(device),
        "colour": torch.from_numpy(np.ascontiguousarray(items.colour, dtype=np.float32)).to(device),
        "colour_mask": torch.from_numpy(items.colour_mask.astype(bool)).to(device),
    }


@torch.inference_mode()
def embed_items(
    model: FusionModel, items: ItemArrays, *, batch_size: int = 1024, return_attention: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Item vectors (and CLS attention) for any number of items, in eval mode."""
    was_training = model.training
    model.eval()
    n = len(items)
    out = np.empty((n, model.config.out_dim), dtype=np.float32)
    attn = np.zeros((n, len(TOKEN_TYPES)), dtype=np.float32) if return_attention else None
    for s in range(0, n, batch_size):
        idx = np.arange(s, min(n, s + batch_size))
        v, a = model.encode_items(to_tensors(items.take(idx)), return_attention=return_attention)
        out[idx] = v.numpy()
        if attn is not None and a is not None:
            attn[idx] = a.numpy()
    model.train(was_training)
    return out, attn


@torch.inference_mode()
def embed_queries(
    model: FusionModel, q: np.ndarray, grams: np.ndarray | None = None, *, batch_size: int = 4096
) -> np.ndarray:
    """Query vectors; ``grams`` (Q, max_query_grams) from ``features.query_grams``."""
    was_training = model.training
    model.eval()
    q = np.array(np.atleast_2d(q), dtype=np.float32)  # a writable copy for torch
    out = np.empty((len(q), model.config.out_dim), dtype=np.float32)
    for s in range(0, len(q), batch_size):
        g = None if grams is None else torch.from_numpy(np.asarray(grams[s : s + batch_size], dtype=np.int64))
        out[s : s + batch_size] = model.encode_queries(torch.from_numpy(q[s : s + batch_size]), g).numpy()
    model.train(was_training)
    return out


# ====================================================================== checkpoints
def save_checkpoint(model: FusionModel, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` (tensors only: no pickle) and ``config.json`` (architecture,
    vocabularies, training record) in ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        **(extra or {}),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read_checkpoint_doc(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexCorruptError(f"fusion model config {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"fusion model config {path} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IndexCorruptError(f"{path} is not a shopsearch fusion model config")
    if doc.get("format_version") != FORMAT_VERSION:
        raise IndexCorruptError(
            f"{path}: fusion model format {doc.get('format_version')} is not supported "
            f"(expected {FORMAT_VERSION}); retrain with 'shopsearch train-fusion'"
        )
    return doc


def load_checkpoint(folder: Path) -> tuple[FusionModel, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    doc = read_checkpoint_doc(folder)
    try:
        config = FusionConfig.from_dict(doc["config"])
        model = FusionModel(config)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise IndexCorruptError(f"{folder / CONFIG_FILE}: invalid model config: {exc}") from None
    from indexer.encoders.colour import COLOUR_NAME

    if config.colour_dim and config.colour_model not in ("", COLOUR_NAME):
        raise IndexCorruptError(
            f"{folder / CONFIG_FILE}: the model reads colour histograms {config.colour_model!r} but this "
            f"version computes {COLOUR_NAME!r}; retrain with 'shopsearch train-fusion'"
        )
    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise IndexCorruptError(f"fusion model weights {weights} are missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise IndexCorruptError(f"fusion model weights {weights} are unreadable: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise IndexCorruptError(f"{weights} does not match {folder / CONFIG_FILE}: {first}") from None
    model.eval()
    return model, doc
