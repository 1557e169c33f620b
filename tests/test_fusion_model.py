"""The multimodal fusion model: shapes, modality dropout, learning a planted cross-modal mapping,
checkpoints without pickle, and end to end on a drawn catalog (train-fusion, the 'fused' source
with attention in explain, photo-only items found by text, upserts, hot swap of a retrained model)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLORS, draw

from indexer.fusion.data import PairSet, bow, pseudo_queries
from indexer.fusion.model import (
    TOKEN_TYPES,
    FusionConfig,
    FusionModel,
    ItemArrays,
    embed_items,
    embed_queries,
    load_checkpoint,
    modality_dropout,
    save_checkpoint,
)
from indexer.fusion.train import TrainConfig, Trainer, _Data, _Val
from indexer.product import Product
from shopsearch.errors import ConfigError, IndexCorruptError

torch.set_num_threads(1)


def train_text_steps(trainer: Trainer, model: FusionModel, tc: TrainConfig) -> None:
    """The trainer's own text-loss steps for ``tc.epochs`` epochs, without validation."""
    for _ in range(tc.epochs):
        slots = trainer._epoch_slots()
        variants = trainer._variants(slots)
        model.train()
        for s in range(0, len(slots), tc.batch_size):
            loss = trainer._loss_text(slots[s : s + tc.batch_size], variants[s : s + tc.batch_size], {})
            trainer.opt.zero_grad()
            loss.backward()
            trainer.opt.step()


def _items(n: int, cfg: FusionConfig, rng: np.random.Generator, *, text=True, image=True) -> ItemArrays:
    items = ItemArrays.empty(n, cfg)
    t = rng.normal(size=(n, cfg.text_dim)).astype(np.float32)
    items.text = t / np.linalg.norm(t, axis=1, keepdims=True)
    items.text_mask[:] = text
    im = rng.normal(size=(n, cfg.image_dim)).astype(np.float32)
    items.image = im / np.linalg.norm(im, axis=1, keepdims=True)
    items.image_mask[:] = image
    return items


def test_shapes_normalisation_and_identity_start():
    cfg = FusionConfig(
        text_dim=24, image_dim=40, d_model=32, n_layers=2, n_heads=4, ff_dim=64, query_hidden=32
    )
    cfg.brands = {"acme": 1}
    cfg.categories = {"a": 1, "a > b": 2}
    cfg.price_edges = [1.0, 2.0]
    torch.manual_seed(0)
    model = FusionModel(cfg)
    rng = np.random.default_rng(0)
    items = _items(50, cfg, rng)
    items.text_mask[:10] = False  # photo-only
    items.image_mask[10:20] = False  # text-only
    items.brand[::2] = 1
    items.category[::3, :2] = [1, 2]
    items.price[::4] = 2
    vecs, attn = embed_items(model, items, return_attention=True)
    assert vecs.shape == (50, cfg.out_dim) == (50, 24)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert attn.shape == (50, len(TOKEN_TYPES))
    assert np.allclose(attn.sum(axis=1), 1, atol=1e-5)
    assert np.all(attn[:10, TOKEN_TYPES.index("text")] == 0)  # an absent token gets no attention
    assert np.all(attn[10:20, TOKEN_TYPES.index("image")] == 0)
    q = rng.normal(size=(7, 24)).astype(np.float32)
    qv = embed_queries(model, q)
    assert qv.shape == (7, 24) and np.allclose(np.linalg.norm(qv, axis=1), 1, atol=1e-5)
    # untrained: text items rank exactly as the text encoder ranks them (the training start point)
    text_items = np.arange(10, 50)
    raw = q @ items.text[text_items].T
    fused = qv @ vecs[text_items].T
    for i in range(len(q)):
        assert np.argsort(-raw[i])[:5].tolist() == np.argsort(-fused[i])[:5].tolist()


def test_modality_dropout_never_empties_an_item_and_drops_at_the_rate():
    cfg = FusionConfig(text_dim=8, image_dim=8, video_dim=8, d_model=16, n_heads=2)
    rng = np.random.default_rng(1)
    items = _items(4000, cfg, rng)
    items.video_mask[:] = True
    items.brand[:] = 3
    items.price[:] = 1
    items.image_mask[:1000] = False  # some items have only text + video
    out = modality_dropout(items, np.random.default_rng(2), p_content=0.3, p_meta=0.2)
    content = np.stack([out.text_mask, out.image_mask, out.video_mask], axis=1)
    assert content.any(axis=1).all()  # never loses every content token
    assert not (out.image_mask & ~items.image_mask).any()  # never invents a token
    assert 0.25 < 1 - out.text_mask.mean() < 0.35
    assert np.allclose(out.text[out.text_mask], items.text[out.text_mask])  # vectors untouched
    kept_text = out.text_mask
    assert (out.brand[kept_text] == 0).mean() == pytest.approx(0.2, abs=0.04)
    assert (out.brand[~kept_text] == 0).mean() == pytest.approx(0.5, abs=0.06)
    assert (items.brand == 3).all()  # the input is not modified


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent z -> text vector (one random map) and photo vector (another, non-linear)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(8, 24))
    b = rng.normal(size=(8, 40))
    z = rng.normal(size=(n, 8))
    text = z @ a + 0.1 * rng.normal(size=(n, 24))
    query = z @ a + 0.3 * rng.normal(size=(n, 24))
    image = np.tanh(z @ b) + 0.1 * rng.normal(size=(n, 40))
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(text), norm(query), norm(image)


def _small_config(colour_dim: int = 0) -> FusionConfig:
    """The small model the planted-mapping training tests learn with."""
    return FusionConfig(
        text_dim=24,
        image_dim=40,
        colour_dim=colour_dim,
        d_model=32,
        n_layers=1,
        n_heads=2,
        ff_dim=64,
        query_hidden=32,
        dropout=0.0,
        n_gram_buckets=0,
    )


def _text_trainer(
    cfg: FusionConfig,
    items: ItemArrays,
    rows: np.ndarray,
    queries: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
) -> tuple[FusionModel, Callable[[], None]]:
    """A fresh model (seed 0) and the call that trains it on one (query, item) pair per row."""
    pairs = PairSet()
    for i in rows.tolist():
        pairs.add(f"q{i}", i, 1, 1.0, [])
    data = _Data(items, [frozenset()] * len(items), pairs, queries)
    tc = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=3e-3, d_model=32, n_heads=2, hard_negatives=False
    )
    torch.manual_seed(0)
    model = FusionModel(cfg)
    return model, lambda: train_text_steps(Trainer(model, data, _Val(), rows, rows, {}, tc), model, tc)


def test_tiny_training_learns_a_planted_cross_modal_mapping():
    """Text queries must find photo-only items they never saw, through a mapping the model has to
    learn (text and photo vectors live in unrelated spaces)."""
    n_train, n_test = 400, 200
    text, query, image = _planted(n_train + n_test, seed=3)
    cfg = _small_config()
    items = ItemArrays.empty(n_train + n_test, cfg)
    items.text, items.image = text.copy(), image
    items.text_mask[:n_train] = True
    items.image_mask[:] = True
    model, train = _text_trainer(cfg, items, np.arange(n_train), query[:n_train], epochs=8, batch_size=100)
    test = np.arange(n_train, n_train + n_test)

    def recall_at_10() -> float:
        photo_only = items.take(test)
        photo_only.text_mask[:] = False
        iv, _ = embed_items(model, photo_only)
        qv = embed_queries(model, query[test])
        top = np.argsort(-(qv @ iv.T), axis=1)[:, :10]
        return float(np.mean([i in top[i] for i in range(n_test)]))

    before = recall_at_10()
    train()
    after = recall_at_10()
    assert before < 0.15  # random is 10/200 = 0.05
    assert after > 0.6, (before, after)


def test_training_is_deterministic_under_a_seed():
    text, query, image = _planted(300, seed=4)
    cfg = FusionConfig(
        text_dim=24, image_dim=40, d_model=16, n_layers=1, n_heads=2, ff_dim=32, query_hidden=16
    )
    items = ItemArrays.empty(300, cfg)
    items.text, items.image = text, image
    items.text_mask[:] = True
    items.image_mask[:] = True
    pairs = PairSet()
    for i in range(300):
        pairs.add(f"q{i}", i, 1, 1.0, [])
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = FusionModel(cfg)
        tc = TrainConfig(epochs=2, batch_size=64, d_model=16, n_heads=2, seed=7, patience=5)
        val = _Val(photo_items=np.arange(250, 300))
        Trainer(
            model,
            _Data(items, [frozenset()] * 300, pairs, query),
            val,
            np.arange(250),
            np.arange(300),
            {},
            tc,
        ).run()
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_checkpoint_round_trip_without_pickle(tmp_path):
    cfg = FusionConfig(text_dim=16, image_dim=12, d_model=32, n_heads=4, ff_dim=32, query_hidden=16)
    cfg.brands = {"acme": 1, "zeta": 2}
    torch.manual_seed(5)
    model = FusionModel(cfg)
    with torch.no_grad():
        model.text_gate.fill_(0.7)
    save_checkpoint(model, tmp_path / "m", {"train": {"best_epoch": 3}})
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: a JSON header, then raw tensors
    assert header["__metadata__"]["format"] == "shopsearch-fusion"
    assert "text_gate" in header
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["config"]["brands"] == {"acme": 1, "zeta": 2} and doc["train"]["best_epoch"] == 3
    loaded, _ = load_checkpoint(tmp_path / "m")
    items = _items(9, cfg, np.random.default_rng(0))
    items.brand[:4] = 2
    a, _ = embed_items(model, items)
    b, _ = embed_items(loaded, items)
    assert np.array_equal(a, b)
    # a truncated file, a pickle in its place, a config of another shape: clear errors
    (tmp_path / "m" / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexCorruptError, match="unreadable"):
        load_checkpoint(tmp_path / "m")
    torch.save(model.state_dict(), tmp_path / "m" / "model.safetensors")
    with pytest.raises(IndexCorruptError, match="model.safetensors"):
        load_checkpoint(tmp_path / "m")
    save_checkpoint(model, tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    doc["config"]["d_model"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(IndexCorruptError, match="does not match"):
        load_checkpoint(tmp_path / "m")


def test_colour_token_attention_and_dropout_follow_the_photo():
    cfg = FusionConfig(
        text_dim=8, image_dim=8, colour_dim=6, d_model=16, n_heads=2, ff_dim=32, query_hidden=8
    )
    assert cfg.n_token_types == len(TOKEN_TYPES)
    torch.manual_seed(0)
    model = FusionModel(cfg)
    rng = np.random.default_rng(3)
    items = _items(40, cfg, rng)
    items.colour = rng.random((40, 6)).astype(np.float32)
    items.colour_mask[:20] = True
    c = TOKEN_TYPES.index("colour")
    assert items.present()[:, c].tolist() == [True] * 20 + [False] * 20
    _, attn = embed_items(model, items, return_attention=True)
    assert (attn[:20, c] > 0).all() and (attn[20:, c] == 0).all()
    # the histogram changes a photo-only item's vector (it is read), and only where it is present
    photo = items.copy()
    photo.text_mask[:] = False
    other = photo.copy()
    other.colour[:] = rng.random((40, 6))
    a, b = embed_items(model, photo)[0], embed_items(model, other)[0]
    assert not np.allclose(a[:20], b[:20], atol=1e-4) and np.allclose(a[20:], b[20:], atol=1e-6)
    many = _items(4000, cfg, rng)
    many.colour_mask[:] = True
    many.image_mask[:1000] = False
    many.colour_mask[:1000] = False  # no photo, no histogram
    out = modality_dropout(many, np.random.default_rng(4), p_content=0.3, p_colour=0.1)
    assert not (out.colour_mask & ~out.image_mask).any()  # a histogram never survives its photo
    kept_photo = out.image_mask
    assert 1 - out.colour_mask[kept_photo].mean() == pytest.approx(0.1, abs=0.03)


def _colour_world(n_per: int, seed: int, colour_dim: int):
    """3 kinds x 4 colours. Photo vectors show the kind only (as pooled CNN features mostly do);
    colour histograms show the colour only; texts and queries name both."""
    rng = np.random.default_rng(seed)
    kinds, colours = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    kinds, colours = np.repeat(kinds.ravel(), n_per), np.repeat(colours.ravel(), n_per)
    n = len(kinds)
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    kind_img, kind_txt, col_txt = rng.normal(size=(3, 40)), rng.normal(size=(3, 24)), rng.normal(size=(4, 24))
    col_hist = rng.dirichlet(np.full(colour_dim, 0.3), size=4)
    image = norm(kind_img[kinds] + 0.4 * rng.normal(size=(n, 40)))
    hist = np.sqrt(np.stack([rng.dirichlet(30 * col_hist[c] + 1e-3) for c in colours])).astype(np.float32)
    text = norm(kind_txt[kinds] + col_txt[colours] + 0.2 * rng.normal(size=(n, 24)))
    query = norm(kind_txt[kinds] + col_txt[colours] + 0.4 * rng.normal(size=(n, 24)))
    return kinds * 4 + colours, image, norm(hist), text, query


@pytest.mark.parametrize("with_colour", [True, False])
def test_the_colour_token_makes_photo_queries_find_the_same_colour(with_colour):
    """Photo-only queries of unseen items against described items: without the colour token a
    photo finds its kind but colours at chance; with it, the same kind and colour."""
    labels, image, hist, text, query = _colour_world(n_per=30, seed=5, colour_dim=16)
    n = len(labels)
    order = np.random.default_rng(6).permutation(n)
    train, test = order[: 2 * n // 3], order[2 * n // 3 :]
    cfg = _small_config(colour_dim=16 if with_colour else 0)
    items = ItemArrays.empty(n, cfg)
    items.text, items.image = text, image
    items.text_mask[train] = True
    items.image_mask[:] = True
    if with_colour:
        items.colour, items.colour_mask[:] = hist, True
    model, fit = _text_trainer(cfg, items, train, query[train], epochs=12, batch_size=60)
    fit()
    described = items.take(test)
    described.text_mask[:] = True
    photo = items.take(test)
    photo.text_mask[:] = False
    sims = embed_items(model, photo)[0] @ embed_items(model, described)[0].T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :5]
    same_kind = np.mean(labels[test][top] // 4 == (labels[test] // 4)[:, None])
    same_both = np.mean(labels[test][top] == labels[test][:, None])
    assert same_kind > 0.8, same_kind
    if with_colour:
        assert same_both > 0.7, same_both
    else:
        assert same_both < 0.5, same_both  # colours at chance (1 in 4): the photo vectors lack them


def test_a_model_saved_before_the_colour_token_loads_and_ignores_a_histogram(tmp_path):
    from indexer.fusion.sidecar import FusedIndex

    cfg = FusionConfig(text_dim=16, image_dim=12, d_model=32, n_heads=4, ff_dim=32, query_hidden=16)
    torch.manual_seed(1)
    model = FusionModel(cfg)
    save_checkpoint(model, tmp_path / "old")
    doc = json.loads((tmp_path / "old" / "config.json").read_text())
    del doc["config"]["colour_dim"]  # as configs were written before the colour token
    (tmp_path / "old" / "config.json").write_text(json.dumps(doc))
    old, _ = load_checkpoint(tmp_path / "old")
    assert old.config.colour_dim == 0 and old.proj_colour is None
    assert old.type_emb.weight.shape[0] == len(TOKEN_TYPES) - 1  # the old weights, loaded strictly
    rng = np.random.default_rng(2)
    image = rng.normal(size=12).astype(np.float32)
    fused = FusedIndex(old, doc, None, "v-000001", "gen-000001")
    plain = fused.query_vector(None, image)
    assert np.allclose(fused.query_vector(None, image, colour=rng.random(128).astype(np.float32)), plain)
    # a model with the colour token reads the query photo's histogram
    new_cfg = FusionConfig(**{**cfg.to_dict(), "colour_dim": 128})
    torch.manual_seed(1)
    new = FusedIndex(FusionModel(new_cfg), {}, None, "v-000001", "gen-000001")
    colour = np.sqrt(rng.dirichlet(np.ones(128))).astype(np.float32)
    with_colour = new.query_vector(None, image, colour=colour)
    assert np.linalg.norm(with_colour) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(with_colour, new.query_vector(None, image), atol=1e-4)
    # a model trained on another histogram recipe must not be fed this one's histograms
    stale = FusionModel(FusionConfig(**{**new_cfg.to_dict(), "colour_model": "colour-some-older-recipe"}))
    save_checkpoint(stale, tmp_path / "stale")
    with pytest.raises(IndexCorruptError, match="colour histograms"):
        load_checkpoint(tmp_path / "stale")


def test_pseudo_queries_come_from_the_items_own_fields():
    p = Product(
        id="1",
        title="Nike Men Sports Blue Tshirt Crew",
        category="Apparel > Topwear > Tshirts",
        attributes={"colour": "Blue", "usage": "Sports", "weight": 0.3, "fit": "x" * 40},
    )
    qs = pseudo_queries(p, random.Random(0))
    kinds = {k for k, _ in qs}
    assert {1, 2, 3} <= kinds  # title, span, attribute phrase
    for kind, text in qs:
        if kind == 3:
            assert text.endswith("Tshirts")  # category leaf last
            assert "0.3" not in text and "xxxx" not in text  # no bare numbers or long values
        assert bow(text) <= bow(f"{p.title} {p.category} Blue Sports Tshirts")


# ====================================================================== end to end (real encoders)
KINDS = ("hoodie", "mug", "lamp")
STYLES = ("Classic", "Studio", "Basic", "Pro")
CATS = {
    "hoodie": "Apparel > Tops > Hoodies",
    "mug": "Home > Kitchen > Mugs",
    "lamp": "Home > Lighting > Lamps",
}


def _drawn_catalog(folder: Path) -> tuple[Path, list[str]]:
    """4 colours x 3 kinds x 4 variants with text, plus one photo-only item per colour and kind."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows, photo_only = [], []
    for kind in KINDS:
        for color in COLORS:
            for v in range(5):
                pid = f"{kind}-{color}-{v}"
                path = folder / "images" / f"{pid}.png"
                draw(kind, color, path)
                if v:  # a shifted, rescaled copy: every photo differs
                    img = Image.open(path)
                    canvas = Image.new("RGB", (112, 112), (245, 245, 240))
                    canvas.paste(img.resize((80 + 6 * v, 80 + 6 * v)), (3 * v, 2 * v))
                    canvas.save(path)
                if v == 4:
                    rows.append({"id": pid, "image": f"images/{pid}.png"})
                    photo_only.append(pid)
                else:
                    rows.append(
                        {
                            "id": pid,
                            "title": f"{color.title()} {kind.title()} {STYLES[v]}",
                            "category": CATS[kind],
                            "brand": ["Northpeak", "Lumina"][v % 2],
                            "price": 10.0 + 5 * v,
                            "attributes": {"color": color.title()},
                            "image": f"images/{pid}.png",
                        }
                    )
    path = folder / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, photo_only


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from indexer.fusion.train import train_fusion
    from indexer.store import build_index
    from shopsearch.settings import load_settings

    folder = tmp_path_factory.mktemp("drawn")
    catalog, photo_only = _drawn_catalog(folder)
    index_dir = folder / "index"
    settings = load_settings(None, index_dir=index_dir)
    build_index([catalog], index_dir, settings, progress=False)
    cfg = TrainConfig(
        epochs=30, batch_size=32, d_model=64, n_heads=4, ff_dim=128, patience=30, lr=2e-3, seed=0
    )
    result = train_fusion(
        index_dir, settings, exclude_ids=set(photo_only), config=cfg, progress=False, publish=True
    )
    return folder, catalog, index_dir, settings, photo_only, result


@pytest.mark.slow
def test_train_fusion_writes_model_and_sidecar(trained):
    folder, catalog, index_dir, settings, photo_only, result = trained
    assert (index_dir / "models" / "fusion" / "model.safetensors").is_file()
    doc = json.loads((index_dir / "models" / "fusion" / "config.json").read_text())
    assert doc["train"]["excluded_items"] == len(photo_only)
    assert result.counts["excluded_items"] == len(photo_only)
    pub = result.publish
    gen = index_dir / "generations" / pub["generation"] / "fused"
    assert (gen / "CURRENT").read_text().strip() == pub["version"]
    assert pub["count"] == 60  # every item, held-out ones included, gets a fused vector
    assert result.history[0]["epoch"] == 0 and result.val_best["score"] >= result.val_start["score"]


@pytest.mark.slow
def test_photo_only_items_found_by_text_and_explained(trained):
    from reranker.pipeline import SearchPipeline, SearchRequest
    from retriever.search import Retriever

    folder, catalog, index_dir, settings, photo_only, result = trained
    pipe = SearchPipeline.open(index_dir, settings)
    try:
        assert pipe.index.fused is not None
        retriever = Retriever(pipe.index, settings)
        hits, ranks = 0, []
        for pid in photo_only:
            kind, color, _ = pid.split("-")
            r = retriever.retrieve(f"{color} {kind}", sources={"fused"}, depth=60)
            order = [c.id for c in r.candidates if c.id in photo_only]
            ranks.append(order.index(pid) + 1)
            hits += order[0] == pid
        # 12 photo-only items, never trained on: random would put the right one first 1 time in 12
        assert hits >= 6, ranks
        assert np.mean(ranks) <= 2.5, ranks
        resp = pipe.search(SearchRequest(text="red mug", k=5, explain=True))
        first = resp.results[0].explain
        model = first["fused_model"]
        assert model["rank"] >= 1 and set(model["attention"]) >= {"text", "image"}
        assert abs(sum(model["attention"].values()) - 1) < 0.02  # CLS's own share is left out
        r = retriever.retrieve("blue lamp", explain=True, depth=10)
        assert any("fused" in c.sources for c in r.candidates)
        # the re-ranker reads the fused cosine of every candidate, not only of those the fused
        # source returned: equal to that source's score where it has one
        from reranker.features import FEATURE_INDEX as col
        from reranker.features import FeatureExtractor

        few = Retriever(pipe.index, settings.model_copy(update={"candidates": 5}))
        r = few.retrieve("blue lamp", sources={"bm25", "fused"}, depth=5)
        X = FeatureExtractor(pipe.index, pieces=False).extract(r).features
        assert (X[:, col["cos:fused:present"]] == 1).all()
        returned = X[:, col["src:fused:present"]] == 1
        assert returned.any() and not returned.all()
        np.testing.assert_allclose(
            X[returned, col["cos:fused"]], X[returned, col["src:fused:score"]], rtol=1e-4, atol=1e-4
        )
        want = (
            pipe.index.fused.index.vectors_for(np.asarray([c.row for c in r.candidates]))
            @ r.query_vectors["fused"]
        )
        np.testing.assert_allclose(X[:, col["cos:fused"]], want, rtol=1e-4, atol=1e-4)
    finally:
        pipe.close()


@pytest.mark.slow
def test_photo_queries_carry_their_colour_histogram(trained):
    from indexer.encoders.colour import COLOUR_DIM, colour_histogram
    from indexer.media import load_image
    from reranker.pipeline import SearchPipeline, SearchRequest
    from retriever.search import Retriever

    folder, catalog, index_dir, settings, photo_only, result = trained
    pipe = SearchPipeline.open(index_dir, settings)
    try:
        fused = pipe.index.fused
        assert fused.config.colour_dim == COLOUR_DIM  # a catalog with photos trains the colour token
        assert result.counts["colour_items"] == 60
        retriever = Retriever(pipe.index, settings)
        same_colour = []
        for pid in photo_only:
            color = pid.split("-")[1]
            img = load_image(folder / "images" / f"{pid}.png")
            r = retriever.retrieve(image=img, sources={"fused"}, depth=10)
            iv = pipe.index.encoders.image.encode([img])[0]
            with_colour = fused.query_vector(None, iv, None, colour_histogram(img))
            assert np.allclose(r.query_vectors["fused"], with_colour, atol=1e-5)
            assert not np.allclose(with_colour, fused.query_vector(None, iv), atol=1e-4)
            top = [c.id for c in r.candidates if c.id != pid][:3]
            same_colour.append(np.mean([t.split("-")[1] == color for t in top]))
        assert np.mean(same_colour) > 0.8, same_colour
        resp = pipe.search(SearchRequest(text="red mug", k=5, explain=True))
        assert "colour" in resp.results[0].explain["fused_model"]["attention"]
    finally:
        pipe.close()


@pytest.mark.slow
def test_upserts_get_fused_vectors_and_a_retrained_model_swaps_in(trained):
    from PIL import Image

    from indexer.fusion.features import rows_arrays
    from indexer.fusion.sidecar import publish_current
    from reranker.pipeline import SearchPipeline, SearchRequest

    folder, catalog, index_dir, settings, photo_only, result = trained
    pipe = SearchPipeline.open(index_dir, settings)
    try:
        draw("mug", "green", folder / "images" / "new.png")
        Image.open(folder / "images" / "new.png").resize((90, 90)).save(folder / "images" / "new.png")
        new = Product(id="new-photo", images=[str(folder / "images" / "new.png")])
        pipe.upsert([new])
        row = pipe.index.table.id_to_row["new-photo"]
        assert pipe.index.fused.index.contains(np.asarray([row]))[0]
        arrays = rows_arrays(np.asarray([row]), pipe.index.table, pipe.index.vectors, pipe.index.fused.config)
        assert arrays.image_mask[0] and arrays.colour_mask[0]  # embedded with its photo's histogram
        # the upserted photo-only item is reachable by text through its new fused vector (checked on
        # the fused source itself: the fused list order of a 30-epoch toy model is what is tested,
        # the hybrid page around it varied with test order)
        fused = pipe.retriever.retrieve("green mug", sources={"fused"}, depth=10).candidates
        assert "new-photo" in [c.id for c in fused[:10]]
        assert pipe.search(SearchRequest(text="green mug", k=10)).results
        old_version = pipe.index.fused.version
        info = publish_current(index_dir, settings)  # e.g. after a retrain: a new sidecar version
        assert info["version"] != old_version
        assert pipe.index.maybe_reload(min_interval=0)
        assert pipe.index.fused.version == info["version"]  # swapped in, no generation reload
        assert pipe.index.fused.index.contains(np.asarray([row]))[0]  # WAL rows embedded again
    finally:
        pipe.close()


@pytest.mark.slow
def test_a_rebuild_embeds_with_the_trained_model(trained):
    from indexer.store import LiveIndex, build_index

    folder, catalog, index_dir, settings, photo_only, result = trained
    built = build_index([catalog], index_dir, settings, progress=False)
    manifest = json.loads((built.path / "manifest.json").read_text())
    assert manifest["fused"]["count"] == 60 and manifest["fused"]["dim"] == 384
    live = LiveIndex(index_dir, settings)
    try:
        assert live.fused is not None and live.fused.generation == built.generation
        assert live.fused.index.ntotal >= 60
    finally:
        live.close()


@pytest.mark.slow
def test_cli_train_fusion(trained, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    folder, catalog, index_dir, settings, photo_only, result = trained
    runner = CliRunner()
    bad = runner.invoke(app, ["train-fusion", "--index", str(index_dir), "--queries", str(catalog)])
    assert bad.exit_code == 2 and "--queries and --qrels go together" in bad.output
    excluded = tmp_path / "held_out.txt"
    excluded.write_text("\n".join(photo_only) + "\n")
    ok = runner.invoke(
        app,
        ["train-fusion", "--index", str(index_dir), "--epochs", "1", "--exclude-ids", str(excluded), "-q"],
    )
    assert ok.exit_code == 0, ok.output
    assert "best epoch" in ok.output and "fused vectors" in ok.output
    doc = json.loads((index_dir / "models" / "fusion" / "config.json").read_text())
    assert doc["train"]["excluded_items"] == len(photo_only)


@pytest.mark.slow
def test_a_damaged_sidecar_leaves_the_index_serving(trained, tmp_path):
    import shutil

    from indexer.store import LiveIndex

    folder, catalog, index_dir, settings, photo_only, result = trained
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    gen = copy / "generations" / (copy / "CURRENT").read_text().strip() / "fused"
    version = (gen / "CURRENT").read_text().strip()
    (gen / version / "model" / "model.safetensors").write_bytes(b"not a model")
    with pytest.warns(RuntimeWarning, match="fused vectors .* not loaded"):
        live = LiveIndex(copy, settings.model_copy(update={"index_dir": copy}))
    try:
        assert live.fused is None and len(live.table) == 60
    finally:
        live.close()


@pytest.mark.slow
def test_word_gram_channel_is_optional_and_reads_the_query_words(trained, tmp_path):
    """The hashed word/trigram channel is off by default (it lowered Home Depot validation); when
    switched on it is trained, saved, served, and the query's own words change its vector."""
    import shutil

    from indexer.fusion.train import train_fusion
    from indexer.store import LiveIndex

    folder, catalog, index_dir, settings, photo_only, result = trained
    assert TrainConfig().n_gram_buckets == 0 and settings.fusion_gram_buckets == 0
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    local = settings.model_copy(update={"index_dir": copy})
    cfg = TrainConfig(epochs=2, batch_size=32, d_model=32, n_heads=2, ff_dim=64, seed=0, n_gram_buckets=512)
    train_fusion(copy, local, config=cfg, progress=False, publish=True)
    plain, grams = LiveIndex(index_dir, settings), LiveIndex(copy, local)
    try:
        assert plain.fused.config.n_gram_buckets == 0 and grams.fused.config.n_gram_buckets == 512
        tv = plain.encoders.text.encode(["green mug"])[0]
        for live, differs in ((plain, False), (grams, True)):
            a = live.fused.query_vector(tv, None, "green mug")
            b = live.fused.query_vector(tv, None, "blue lamp shade")
            assert (not np.allclose(a, b, atol=1e-6)) is differs
    finally:
        plain.close()
        grams.close()


def test_judgments_without_a_positive_grade_add_no_pairs() -> None:
    """All grades 0 or negative used to divide by zero (the top grade) in train-fusion."""
    from indexer.fusion.data import judged_pairs

    pairs = PairSet()
    qrels = {"q1": {"a": 0.0, "b": -1.0}}
    assert judged_pairs(pairs, {"q1": "red mug"}, qrels, {"a": 0, "b": 1}, {}) == 0


def test_one_outlier_grade_does_not_halve_the_positive_cut_off() -> None:
    """The cut-off for a judged positive was half the highest grade: one mistyped 1000 on a 0-3
    scale made every grade-3 judgment a negative and the outlier the only positive left."""
    from indexer.fusion.data import grade_top, judged_pairs

    qrels = {f"q{i}": {"a": 3.0, "b": 2.0, "c": 0.0} for i in range(60)}
    queries = {f"q{i}": f"red mug {i}" for i in range(60)}
    clean = judged_pairs(PairSet(), queries, qrels, {"a": 0, "b": 1, "c": 2}, {})
    qrels["q0"]["a"] = 1000.0
    assert grade_top([g for j in qrels.values() for g in j.values()]) == 3.0
    pairs = PairSet()
    assert judged_pairs(pairs, queries, qrels, {"a": 0, "b": 1, "c": 2}, {}) == clean == 120
    assert grade_top([0.0, 1.0, 2.0]) == 2.0 and grade_top([0.0, -1.0]) == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "epochs >= 1"),  # published an untrained model over the trained one
        ({"photo_views": 100}, "photo views between 0 and 16"),
        ({"photo_views": -1}, "photo views between 0 and 16"),
        ({"max_minutes": float("nan")}, "positive number of minutes"),
        ({"max_minutes": -1.0}, "positive number of minutes"),
    ],
)
def test_train_fusion_refuses_options_out_of_range(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)
