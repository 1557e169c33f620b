"""Fashion (Myntra, 8,135 photos): photo -> similar items and text -> photo-only items, with and
without the fusion model, on items held out from training.

    python benchmarks/bench_fashion.py [--work .bench/fashion] [--epochs 15] [--photo-views 1]
        [--retrain] [--no-colour] [--colour-view-jitter]

Protocol (deterministic):

* Held out: items whose sha1(id) mod 100 < 15 (about 15%). The fusion model trains on the other
  85% only (``train_fusion(exclude_ids=...)``: no pair, pseudo-query or photo view of a held-out
  item is ever seen); its vocabularies come from those items too.
* Photo query: each held-out item's photo searches the whole catalog but itself. Precision@10 of
  the same article type, and of the same type and colour. Raw EfficientNet-Lite0 cosine; the
  same with the photo's colour histogram appended (``indexer.encoders.colour``, weight 0.7, no
  learning); the fused source (the photo and its histogram through the item tower, against the
  fused item vectors); raw + fused.
* Text query on the photo-only catalog: an index of the held-out items with every text field
  removed (id and photo only). Queries "<colour> <article type>" for each distinct pair among
  them; relevance 2 = same type and colour, 1 = same type; NDCG@10. The fused source vs. a
  zero-shot bridge through ImageNet class names (the photo's top-5 EfficientNet classes, their
  names embedded by MiniLM and weighted by probability, against the MiniLM query vector).

Results go to ``WORK/results.json`` and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "fashion"
HELD_OUT_PERCENT = 15


def held_out(item_id: str) -> bool:
    return int(hashlib.sha1(item_id.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def precision_at_10(
    q_vecs: np.ndarray, q_rows: np.ndarray, cat_vecs: np.ndarray, labels: list[tuple[str, str]]
) -> dict[str, float]:
    """Same-type and same-type+colour precision@10 of each query row against all other rows."""
    p_type, p_both = [], []
    for s in range(0, len(q_vecs), 512):
        sims = q_vecs[s : s + 512] @ cat_vecs.T
        sims[np.arange(len(sims)), q_rows[s : s + 512]] = -np.inf  # not itself
        top = np.argpartition(-sims, 10, axis=1)[:, :10]
        for i, row in enumerate(q_rows[s : s + 512]):
            colour, kind = labels[row]
            hits = [labels[j] for j in top[i]]
            p_type.append(np.mean([h[1] == kind for h in hits]))
            p_both.append(np.mean([h == (colour, kind) for h in hits]))
    return {"p@10_type": float(np.mean(p_type)), "p@10_type_colour": float(np.mean(p_both))}


def ndcg_at_10(ranked: list[list[str]], judgments: list[dict[str, float]]) -> float:
    from evaluation.metrics import ndcg

    return float(np.mean([ndcg(r, j, 10) for r, j in zip(ranked, judgments, strict=True)]))


def imagenet_bridge(
    image_paths: list[str], text_encoder: Any, work: Path, settings: Any
) -> tuple[np.ndarray, float]:
    """Zero-shot text vectors of photos: EfficientNet-Lite0's ImageNet top-5 class names in MiniLM
    space, weighted by the class probabilities. Logits are cached in WORK."""
    import torch
    from torchvision.models import ResNet18_Weights  # the 1000 ImageNet class names, offline

    from indexer.encoders.image import EfficientNetLiteEncoder, _as_rgb, _square
    from indexer.media import load_image

    t0 = time.perf_counter()
    cache = work / "imagenet_logits_heldout.npy"
    if cache.exists() and np.load(cache).shape[0] == len(image_paths):
        logits = np.load(cache)
    else:
        enc = EfficientNetLiteEncoder()
        model = enc._model
        logits = np.zeros((len(image_paths), 1000), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(image_paths), 32):
                chunk = image_paths[s : s + 32]
                pix = np.stack(
                    [
                        _square(_as_rgb(load_image(p, max_pixels=settings.max_image_pixels), 0), enc.size)
                        for p in chunk
                    ]
                )
                x = torch.from_numpy(pix).permute(0, 3, 1, 2).float()
                x = (x / 255.0 - 0.5) / 0.5
                feats = model.extract_features(x).mean(dim=(2, 3))
                logits[s : s + len(chunk)] = model._fc(feats).numpy()
        np.save(cache, logits)
    names = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    name_vecs = text_encoder.encode([f"a photo of a {n}" for n in names], batch_size=128)
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    top = np.argsort(-prob, axis=1)[:, :5]
    out = np.zeros((len(image_paths), name_vecs.shape[1]), dtype=np.float32)
    for i in range(len(image_paths)):
        out[i] = (prob[i, top[i], None] * name_vecs[top[i]]).sum(axis=0)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "fashion")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--photo-views", type=int, default=1)
    ap.add_argument("--view-weight", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--retrain", action="store_true", help="Train even if WORK/full has a model.")
    ap.add_argument("--no-colour", action="store_true", help="Train without the colour-histogram token.")
    ap.add_argument(
        "--colour-view-jitter",
        action="store_true",
        help="Photo views' histograms include the brightness/contrast/saturation jitter.",
    )
    args = ap.parse_args()
    if not (DATA / "catalog.jsonl").exists():
        sys.exit(f"no Fashion data at {DATA}")

    import torch

    from indexer.embcache import EmbeddingCache
    from indexer.fusion.features import photo_colours
    from indexer.fusion.sidecar import has_model, model_dir
    from indexer.fusion.train import TrainConfig, train_fusion
    from indexer.store import LiveIndex, build_index
    from retriever.search import Retriever
    from shopsearch.settings import load_settings

    torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    full_dir = work / "full"
    settings = load_settings(None, index_dir=full_dir, media_roots=[DATA])
    if not (full_dir / "CURRENT").exists():
        t = time.perf_counter()
        build_index([DATA / "catalog.jsonl"], full_dir, settings, progress=True)
        times["build_full_s"] = time.perf_counter() - t

    live = LiveIndex(full_dir, settings)
    table = live.table
    rows = table.live_rows()
    products = [table.product(int(r)) for r in rows]
    labels = [
        (str(p.attributes.get("colour", "")), str(p.attributes.get("article_type", ""))) for p in products
    ]
    held = np.asarray([held_out(p.id) for p in products])
    held_ids = [p.id for p, h in zip(products, held, strict=True) if h]
    (work / "heldout_ids.txt").write_text("\n".join(held_ids) + "\n")
    print(f"{len(products)} items, {held.sum()} held out ({100 * held.mean():.1f}%)")
    img_index = live.vectors["image"]
    assert np.array_equal(rows, np.arange(len(rows))), "a fresh build has rows 0..n-1"
    img = img_index.vectors_for(rows)
    q_rows = np.flatnonzero(held)
    results: dict[str, Any] = {"items": len(products), "held_out": int(held.sum())}
    results["photo_raw"] = precision_at_10(img[q_rows], q_rows, img, labels)
    t = time.perf_counter()
    with EmbeddingCache(full_dir / "embcache.sqlite") as cache:
        hist, has_hist = photo_colours(products, cache)
    times["colour_histograms_s"] = time.perf_counter() - t
    assert has_hist.all(), "every Fashion photo decodes"
    raw_colour = np.hstack([img, 0.7 * hist])
    raw_colour /= np.linalg.norm(raw_colour, axis=1, keepdims=True)
    results["photo_raw_colour"] = precision_at_10(raw_colour[q_rows], q_rows, raw_colour, labels)
    live.close()

    if args.retrain or not has_model(full_dir):
        t = time.perf_counter()
        cfg = TrainConfig(
            epochs=args.epochs,
            photo_views=args.photo_views,
            seed=args.seed,
            threads=args.threads,
            view_weight=args.view_weight,
            colour=not args.no_colour,
            colour_view_jitter=args.colour_view_jitter,
        )
        result = train_fusion(
            full_dir, settings, exclude_ids=set(held_ids), config=cfg, progress=True, log=print
        )
        times["train_fusion_s"] = time.perf_counter() - t
        results["training"] = {
            "best_epoch": result.best_epoch,
            "val_start": result.val_start,
            "val_best": result.val_best,
            "counts": result.counts,
            "epochs_run": len(result.history) - 1,
            "seconds_per_epoch": [h["seconds"] for h in result.history[1:]],
            "publish": result.publish,
        }

    live = LiveIndex(full_dir, settings)
    fused = live.fused
    assert fused is not None, "training publishes fused vectors"
    fused_vecs = fused.index.vectors_for(rows)
    t = time.perf_counter()
    results["colour_token"] = bool(fused.config.colour_dim)
    q_fused = np.stack([fused.query_vector(None, img[r], colour=hist[r]) for r in q_rows])
    times["photo_query_vectors_s"] = time.perf_counter() - t
    results["photo_fused"] = precision_at_10(q_fused, q_rows, fused_vecs, labels)
    # both signals: raw photo similarity and fused similarity, summed (each cosine in [-1, 1])
    both = precision_at_10(
        np.hstack([img[q_rows], q_fused]) / np.sqrt(2),
        q_rows,
        np.hstack([img, fused_vecs]) / np.sqrt(2),
        labels,
    )
    results["photo_raw_plus_fused"] = both
    text_encoder = live.encoders.text
    live.close()

    # ------------------------------------------------------------ photo-only catalog of held-out items
    po_dir = work / "photo_only"
    po_index = po_dir / "index"
    shutil.rmtree(po_dir, ignore_errors=True)
    (po_dir).mkdir(parents=True)
    po_catalog = po_dir / "catalog.jsonl"
    with open(po_catalog, "w", encoding="utf-8") as f:
        for p in products:
            if held_out(p.id):
                f.write(json.dumps({"id": p.id, "image": p.images[0]}) + "\n")
    po_index.mkdir(parents=True)
    with (
        sqlite3.connect(full_dir / "embcache.sqlite") as src,
        sqlite3.connect(po_index / "embcache.sqlite") as dst,
    ):
        src.backup(dst)  # the photos' vectors (WAL included): the photo-only build encodes nothing
    shutil.copytree(model_dir(full_dir), model_dir(po_index))  # the build embeds with the model
    po_settings = load_settings(None, index_dir=po_index, media_roots=[DATA])
    t = time.perf_counter()
    built = build_index([po_catalog], po_index, po_settings, progress=False)
    times["build_photo_only_s"] = time.perf_counter() - t
    results["photo_only_build"] = {"encoded": built.encoded, "counts": built.counts}
    po = LiveIndex(po_index, po_settings)
    po_products = [po.table.product(int(r)) for r in po.table.live_rows()]
    assert not any(p.title or p.attributes or p.category for p in po_products)
    by_id = {p.id: lab for p, lab in zip(products, labels, strict=True)}
    pairs = sorted({by_id[p.id] for p in po_products})
    queries = [f"{colour} {kind}" for colour, kind in pairs]
    judgments = []
    for colour, kind in pairs:
        j = {}
        for p in po_products:
            c2, k2 = by_id[p.id]
            if k2 == kind:
                j[p.id] = 2.0 if c2 == colour else 1.0
        judgments.append(j)
    retriever = Retriever(po, po_settings)
    t = time.perf_counter()
    ranked = [[c.id for c in retriever.retrieve(q, depth=10).candidates[:10]] for q in queries]
    times["photo_only_text_queries_s"] = time.perf_counter() - t
    results["text_to_photo_only_fused"] = {"ndcg@10": ndcg_at_10(ranked, judgments), "queries": len(queries)}
    # the same with the type+colour pairs seen in training only / unseen in training
    seen = {lab for lab, h in zip(labels, held, strict=True) if not h}
    for name, keep in (("seen_pairs", True), ("unseen_pairs", False)):
        idx = [i for i, pair in enumerate(pairs) if (pair in seen) == keep]
        if idx:
            results["text_to_photo_only_fused"][f"ndcg@10_{name}"] = ndcg_at_10(
                [ranked[i] for i in idx], [judgments[i] for i in idx]
            )
            results["text_to_photo_only_fused"][f"queries_{name}"] = len(idx)
    po_rows = po.table.live_rows()
    po_ids = [po.table.product(int(r)).id for r in po_rows]
    bridge, secs = imagenet_bridge([p.images[0] for p in po_products], text_encoder, work, po_settings)
    times["imagenet_bridge_s"] = secs
    assert [p.id for p in po_products] == po_ids
    qv = text_encoder.encode(queries, batch_size=128)
    top = np.argsort(-(qv @ bridge.T), axis=1)[:, :10]
    ranked_bridge = [[po_ids[j] for j in row] for row in top]
    results["text_to_photo_only_imagenet_bridge"] = {"ndcg@10": ndcg_at_10(ranked_bridge, judgments)}
    po.close()
    results["times_s"] = {k: round(v, 1) for k, v in times.items()}
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    print("\n| photo query (held-out items) | p@10 same type | p@10 same type+colour |")
    print("| --- | --- | --- |")
    for name in ("photo_raw", "photo_raw_colour", "photo_fused", "photo_raw_plus_fused"):
        r = results[name]
        print(f"| {name} | {r['p@10_type']:.3f} | {r['p@10_type_colour']:.3f} |")
    print("\n| text query on the photo-only catalog | NDCG@10 |")
    print("| --- | --- |")
    for name in ("text_to_photo_only_imagenet_bridge", "text_to_photo_only_fused"):
        print(f"| {name} | {results[name]['ndcg@10']:.3f} |")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
