"""The listwise Transformer re-ranker.

The query and its candidate list are one sequence: a query token (from the query's sentence
vector), the query's word-piece tokens (static embeddings of the text model), and one token per
candidate (its features, plus query-item vector interactions per modality). Pre-LayerNorm blocks of
multi-head self-attention and a feed-forward layer, with residual connections, let every candidate
attend to the query and to the other candidates, so a score can depend on the whole list (how
strong this item is compared with the rest). ``cross_attention=False`` (an ablation) masks
candidate-to-candidate attention: each candidate then sees only the query and itself.

The model is permutation-equivariant over candidates (no positional encoding): their retrieval
order enters only through the rank features. Feature standardisation is part of the model (as
buffers), so a checkpoint is self-contained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reranker.checkpoint import CONFIG_FILE, publish, read_weights
from shopsearch.errors import IndexCorruptError, ShopSearchError

CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ModelConfig:
    """Architecture and input schema: everything needed to rebuild the model from its weights."""

    features: list[str]
    # vector channels: (query vector key, item modality, dim); the product q * v is projected
    channels: list[tuple[str, str, int]] = field(default_factory=list)
    query_dim: int = 384  # sentence vector of the query ("text" channel's query vector)
    piece_dim: int = 384  # static word-piece embeddings
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    ff: int = 128
    dropout: float = 0.1
    cross_attention: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["channels"] = [tuple(c) for c in kwargs.get("channels", [])]
        return cls(**kwargs)


class SelfAttention(nn.Module):
    """Multi-head self-attention on torch's fused scaled_dot_product_attention kernel (several
    times faster on CPU than nn.MultiheadAttention's unfused path in training); no dropout on
    the attention weights, which costs more than it regularises here."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(a.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    """Pre-LN Transformer block: x + MHA(LN(x)), then x + FF(LN(x))."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.ff(self.ln2(x)))


class ListwiseTransformer(nn.Module):
    """Scores (B, N) for candidate lists; see the module docstring for the sequence layout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        n_feat, d = len(config.features), config.d_model
        self.register_buffer("feat_mean", torch.zeros(n_feat))
        self.register_buffer("feat_std", torch.ones(n_feat))
        self.feat_in = nn.Sequential(nn.Linear(n_feat, d), nn.GELU(), nn.Linear(d, d))
        self.channel_in = nn.ModuleList(nn.Linear(dim, d) for _, _, dim in config.channels)
        self.query_in = nn.Linear(config.query_dim, d)
        self.piece_in = nn.Linear(config.piece_dim, d)
        self.type_emb = nn.Parameter(torch.zeros(3, d))  # query, piece, candidate
        nn.init.normal_(self.type_emb, std=0.02)
        self.blocks = nn.ModuleList(
            Block(d, config.heads, config.ff, config.dropout) for _ in range(config.layers)
        )
        self.ln_out = nn.LayerNorm(d)
        # two heads: "all" learns judged-and-relevant against every other candidate (unjudged
        # count as irrelevant); "judged" learns the grade order among judged candidates only
        self.head = nn.Linear(d, 2)
        self.wide = nn.Linear(n_feat, 2)  # a linear model of the features, learned jointly
        self.register_buffer("mix", torch.tensor(0.5))  # weight of the "judged" head, set on validation

    # ----------------------------------------------------------------- inputs
    def normalise(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats - self.feat_mean) / self.feat_std).clamp(-6.0, 6.0)

    def embed(
        self,
        feats: torch.Tensor,
        channels: list[torch.Tensor],
        qvec: torch.Tensor,
        pieces: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(candidate tokens (B,N,d), query tokens (B,1+M,d), normalised features (B,N,F)).

        ``channels[i]`` is the elementwise product query * item vector of channel i, (B, N, dim)."""
        x = self.normalise(feats)
        cand = self.feat_in(x) + self.type_emb[2]
        for proj, prod in zip(self.channel_in, channels, strict=True):
            cand = cand + proj(prod)
        q = self.query_in(qvec).unsqueeze(1) + self.type_emb[0]
        p = self.piece_in(pieces) + self.type_emb[1]
        return cand, torch.cat([q, p], dim=1), x

    # ----------------------------------------------------------------- forward
    def attention_mask(self, cand_mask: torch.Tensor, piece_mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) additive mask: padding hidden; without cross-attention, candidates
        see only the query tokens and themselves, and query tokens see only query tokens."""
        b, n = cand_mask.shape
        valid = torch.cat([torch.ones_like(cand_mask[:, :1]), piece_mask, cand_mask], dim=1)  # (B,S)
        s = valid.shape[1]
        allowed = valid.unsqueeze(1).expand(b, s, s)
        idx = torch.arange(s, device=cand_mask.device)
        same = idx.unsqueeze(0) == idx.unsqueeze(1)  # (not torch.eye: ONNX Runtime lacks bool EyeLike)
        if not self.config.cross_attention:
            is_cand = idx >= s - n
            key_is_query = (~is_cand).unsqueeze(0).expand(s, s)
            query_row = (~is_cand).unsqueeze(1).expand(s, s)
            ok = key_is_query | (~query_row & same)  # logical ops: ONNX Runtime lacks a bool Where
            allowed = allowed & ok.unsqueeze(0)
        # every row keeps itself, so a padded row never has all keys masked (NaN-free softmax)
        allowed = allowed | same.unsqueeze(0)
        add = torch.zeros(allowed.shape, dtype=torch.float32, device=cand_mask.device)
        return add.masked_fill(~allowed, -1e4).unsqueeze(1)

    def encode(
        self,
        cand: torch.Tensor,
        query: torch.Tensor,
        x: torch.Tensor,
        cand_mask: torch.Tensor,
        piece_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Both heads' scores, (B, N, 2); padded candidates get -1e4."""
        mask = self.attention_mask(cand_mask, piece_mask)
        h = torch.cat([query, cand], dim=1)
        for block in self.blocks:
            h = block(h, mask)
        n = cand.shape[1]
        out = self.head(self.ln_out(h[:, -n:])) + self.wide(x)
        return out.masked_fill(~cand_mask.unsqueeze(-1), -1e4)

    def combine(
        self, heads: torch.Tensor, cand_mask: torch.Tensor, mix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final score: each head standardised over the list's candidates, then "all" + mix *
        "judged" (B, N)."""
        mix = self.mix if mix is None else mix
        m = cand_mask.unsqueeze(-1).to(heads.dtype)
        count = m.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (heads * m).sum(dim=1, keepdim=True) / count
        var = (((heads - mean) * m) ** 2).sum(dim=1, keepdim=True) / count
        z = (heads - mean) / torch.sqrt(var + 1e-6)
        score = z[..., 0] + mix * z[..., 1]
        return score.masked_fill(~cand_mask, -1e4)

    def forward(
        self,
        feats: torch.Tensor,
        channels: list[torch.Tensor],
        qvec: torch.Tensor,
        pieces: torch.Tensor,
        cand_mask: torch.Tensor,
        piece_mask: torch.Tensor,
    ) -> torch.Tensor:
        cand, query, x = self.embed(feats, channels, qvec, pieces)
        return self.combine(self.encode(cand, query, x, cand_mask, piece_mask), cand_mask)


# ====================================================================== checkpoints
def save_checkpoint(model: ListwiseTransformer, folder: Path, meta: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (architecture, feature schema, training record).
    Written to temporary names and renamed, config last, so a reader never sees a half-written
    checkpoint (the serving side watches config.json)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a diverged training must not replace the model that serves
        raise ShopSearchError(
            f"the trained re-ranker has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): training "
            f"diverged (check the labels); nothing was written to {folder}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_w = folder / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp_w))
    doc = {
        "format": CHECKPOINT_FORMAT,
        "kind": "listwise-transformer",
        "model": asdict(model.config),
        "meta": meta or {},
    }
    publish(folder, doc, {WEIGHTS_FILE: tmp_w})


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexCorruptError(f"re-ranker checkpoint {folder} has no {CONFIG_FILE}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"re-ranker config {path} is unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise IndexCorruptError(f"re-ranker config {path} is not a JSON object")
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise IndexCorruptError(
            f"re-ranker checkpoint {folder} has format {doc.get('format')}, this engine reads "
            f"{CHECKPOINT_FORMAT}: retrain it with 'shopsearch train-reranker'"
        )
    return doc


def load_checkpoint(folder: Path) -> tuple[ListwiseTransformer, dict[str, Any]]:
    """The model in eval mode and the config document; IndexCorruptError names what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    doc = read_config(folder)
    if doc.get("kind") != "listwise-transformer":
        raise IndexCorruptError(
            f"{folder}/{CONFIG_FILE} is a {doc.get('kind')!r} checkpoint, not a transformer"
        )
    try:
        config = ModelConfig.from_dict(doc["model"])
        model = ListwiseTransformer(config)
        state = load(read_weights(folder, doc, WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            raise IndexCorruptError(f"re-ranker checkpoint {folder} has non-finite weights (NaN or inf)")
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        raise IndexCorruptError(f"re-ranker checkpoint {folder} does not match its config: {exc}") from None
    model.eval()
    return model, doc
