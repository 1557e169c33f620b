"""Serving the learned re-rankers: load a checkpoint from the index directory, score candidate
lists within the latency budget, and swap in a new checkpoint without downtime.

Layout: ``INDEX/models/reranker/config.json`` + ``model.safetensors`` (Transformer) or
``lambdamart.txt`` (LightGBM baseline). ``config.json`` is written last by the trainer, so its
change is the signal that a complete new checkpoint is there.

Backends for the Transformer: ``onnx`` (default: exported once next to the checkpoint, checked
against torch, run by ONNX Runtime on one thread, so it neither competes with nor waits for other
thread pools), ``int8`` (torch dynamic int8 quantisation of the linear layers) and ``torch``.

Hot swap: every re-rank checks (at most once a second) whether config.json changed; if so, a
background thread loads and warms the new model while searches keep using the old one, then the
reference is replaced in one assignment. ``reload()`` does the same synchronously.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reranker.base import PassThroughReranker, Reranker
from reranker.features import FEATURE_NAMES, FeatureExtractor, ListFeatures, WordPieces
from retriever.search import Candidate, Retrieval
from shopsearch.errors import ConfigError, IndexCorruptError

log = logging.getLogger(__name__)

MODEL_SUBDIR = Path("models") / "reranker"
Backend = Literal["onnx", "int8", "torch"]
_ONNX_FILE = "model.onnx"
_MAX_ABS_DIFF = 1e-3  # ONNX vs torch scores on the verification lists


def model_dir(index_dir: Path) -> Path:
    return Path(index_dir) / MODEL_SUBDIR


# ====================================================================== scorers
class Scorer:
    """Scores one candidate list's features."""

    kind: str = "scorer"
    meta: dict[str, Any]

    def score(self, lf: ListFeatures) -> np.ndarray:
        raise NotImplementedError


def _columns(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Map the checkpoint's feature names to today's columns; names this version no longer
    computes read as zero (the value of an absent feature)."""
    src, dst = [], []
    for j, name in enumerate(names):
        if name in FEATURE_NAMES:
            src.append(FEATURE_NAMES.index(name))
            dst.append(j)
    return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)


class TransformerScorer(Scorer):
    kind = "listwise-transformer"

    def __init__(self, folder: Path, pieces: WordPieces | None, backend: Backend = "onnx") -> None:
        import torch

        from reranker.transformer import load_checkpoint

        self.folder = Path(folder)
        self.model, doc = load_checkpoint(self.folder)
        self.meta = doc.get("meta", {})
        cfg = self.model.config
        self.config = cfg
        self._src, self._dst = _columns(cfg.features)
        self.n_features = len(cfg.features)
        want = self.meta.get("pieces_fingerprint")
        self.pieces = pieces if pieces is not None and (want is None or want == pieces.fingerprint) else None
        if want and self.pieces is None:
            log.warning("re-ranker %s was trained with other word pieces: query tokens are left out", folder)
        self.backend: str = backend
        self._session: Any = None
        if backend == "onnx":
            try:
                self._session = self._onnx_session()
            except Exception as exc:  # noqa: BLE001 - fall back to torch rather than fail serving
                log.warning("ONNX path for the re-ranker unavailable (%s); using torch int8", exc)
                self.backend = "int8"
        if self.backend == "int8":
            self.model = torch.ao.quantization.quantize_dynamic(
                self.model, {torch.nn.Linear}, dtype=torch.qint8
            )
        elif self.backend not in ("onnx", "torch"):
            raise ConfigError(f"re-ranker backend must be onnx, int8 or torch, got {backend!r}")

    # ----------------------------------------------------------------- inputs
    def inputs(self, lf: ListFeatures) -> dict[str, np.ndarray]:
        n = len(lf.rows)
        feats = np.zeros((1, n, self.n_features), dtype=np.float32)
        feats[0][:, self._dst] = lf.features[:, self._src]
        qtext = lf.query.vectors.get("text")
        qvec = np.zeros((1, self.config.query_dim), dtype=np.float32)
        if qtext is not None and len(qtext) == self.config.query_dim:
            qvec[0] = qtext
        out: dict[str, np.ndarray] = {"feats": feats, "qvec": qvec}
        for i, (qkey, modality, dim) in enumerate(self.config.channels):
            prod = np.zeros((1, n, dim), dtype=np.float32)
            q = lf.query.vectors.get(qkey)
            mat = lf.item_vectors.get(modality)
            if q is not None and mat is not None and mat.shape[1] == dim and len(q) == dim:
                prod[0] = mat * np.asarray(q, dtype=np.float32)[None, :]
            out[f"channel{i}"] = prod
        ids = lf.query.pieces if self.pieces is not None else np.zeros(0, dtype=np.int64)
        m = max(1, len(ids))
        pieces = np.zeros((1, m, self.config.piece_dim), dtype=np.float32)
        pmask = np.zeros((1, m), dtype=bool)
        if len(ids) and self.pieces is not None and self.pieces.dim == self.config.piece_dim:
            pieces[0, : len(ids)] = self.pieces.table[ids]
            pmask[0, : len(ids)] = True
        out["pieces"] = pieces
        out["cand_mask"] = np.ones((1, n), dtype=bool)
        out["piece_mask"] = pmask
        return out

    def _torch_score(self, x: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            chans = [torch.from_numpy(x[f"channel{i}"]) for i in range(len(self.config.channels))]
            s = self.model(
                torch.from_numpy(x["feats"]),
                chans,
                torch.from_numpy(x["qvec"]),
                torch.from_numpy(x["pieces"]),
                torch.from_numpy(x["cand_mask"]),
                torch.from_numpy(x["piece_mask"]),
            )
        return s[0].numpy().astype(np.float64)

    def score(self, lf: ListFeatures) -> np.ndarray:
        if len(lf.rows) == 0:
            return np.zeros(0)
        x = self.inputs(lf)
        if self._session is not None:
            return self._session.run(["scores"], x)[0][0].astype(np.float64)
        return self._torch_score(x)

    # ----------------------------------------------------------------- ONNX
    def _onnx_session(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(self._export()), opts, providers=["CPUExecutionProvider"])
        try:
            self._verify(session)
        except IndexCorruptError:  # a stale model.onnx (e.g. copied along with other weights)
            session = ort.InferenceSession(
                str(self._export(force=True)), opts, providers=["CPUExecutionProvider"]
            )
            self._verify(session)
        return session

    def _export(self, force: bool = False) -> Path:
        """model.onnx next to the checkpoint (or in a temp folder when that is read-only),
        re-exported whenever the weights are newer than it."""
        import warnings

        import torch

        weights = self.folder / "model.safetensors"
        target = self.folder / _ONNX_FILE
        if not force and target.exists() and target.stat().st_mtime_ns >= weights.stat().st_mtime_ns:
            return target
        probe = self._probe_inputs(7, 3)
        names = ["feats", *[f"channel{i}" for i in range(len(self.config.channels))], "qvec", "pieces"]
        names += ["cand_mask", "piece_mask"]
        axes: dict[str, dict[int, str]] = {"feats": {1: "n"}, "pieces": {1: "m"}}
        axes.update({f"channel{i}": {1: "n"} for i in range(len(self.config.channels))})
        axes.update({"cand_mask": {1: "n"}, "piece_mask": {1: "m"}, "scores": {1: "n"}})
        model = self.model
        n_chan = len(self.config.channels)

        class _Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, feats, *rest):  # type: ignore[no-untyped-def]
                chans = list(rest[:n_chan])
                qvec, pieces, cmask, pmask = rest[n_chan:]
                return self.model(feats, chans, qvec, pieces, cmask, pmask)

        try:
            self.folder.joinpath(".write-probe").touch()
            self.folder.joinpath(".write-probe").unlink()
            out_dir = self.folder
        except OSError:
            out_dir = Path(tempfile.mkdtemp(prefix="shopsearch-reranker-"))
        tmp = out_dir / f".{_ONNX_FILE}.{threading.get_ident()}.tmp"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Graph().eval(),
                tuple(torch.from_numpy(probe[n]) for n in names),
                str(tmp),
                input_names=names,
                output_names=["scores"],
                dynamic_axes=axes,
                opset_version=17,
                do_constant_folding=True,
                dynamo=False,
            )
        final = out_dir / _ONNX_FILE
        tmp.replace(final)
        return final

    def _probe_inputs(self, n: int, m: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        mean = self.model.feat_mean.numpy()
        std = self.model.feat_std.numpy()
        out = {
            "feats": (mean + std * rng.standard_normal((1, n, self.n_features))).astype(np.float32),
            "qvec": rng.standard_normal((1, self.config.query_dim)).astype(np.float32) * 0.05,
            "pieces": rng.standard_normal((1, m, self.config.piece_dim)).astype(np.float32) * 0.05,
            "cand_mask": np.ones((1, n), dtype=bool),
            "piece_mask": np.ones((1, m), dtype=bool),
        }
        for i, (_q, _m, dim) in enumerate(self.config.channels):
            out[f"channel{i}"] = rng.standard_normal((1, n, dim)).astype(np.float32) * 0.003
        return out

    def _verify(self, session: Any) -> None:
        for n, m in ((1, 1), (37, 5), (220, 16)):
            x = self._probe_inputs(n, m, seed=n)
            got = session.run(["scores"], x)[0][0]
            want = self._torch_score(x)
            diff = float(np.abs(got - want).max())
            if not np.isfinite(diff) or diff > _MAX_ABS_DIFF:
                raise IndexCorruptError(
                    f"ONNX export of {self.folder} disagrees with torch (max diff {diff:.2e})"
                )


class LambdaMARTScorer(Scorer):
    kind = "lambdamart"

    def __init__(self, folder: Path) -> None:
        from reranker.lambdamart import LambdaMART

        self.model = LambdaMART.load(folder)
        self.meta = self.model.meta

    def score(self, lf: ListFeatures) -> np.ndarray:
        return self.model.predict(lf.features)


def load_scorer(folder: Path, pieces: WordPieces | None, backend: Backend = "onnx") -> Scorer:
    from reranker.transformer import read_config

    kind = read_config(folder).get("kind")
    if kind == "listwise-transformer":
        return TransformerScorer(folder, pieces, backend)
    if kind == "lambdamart":
        return LambdaMARTScorer(folder)
    raise IndexCorruptError(f"{folder}/config.json names an unknown re-ranker kind {kind!r}")


# ====================================================================== the re-ranker
Stamp = tuple[tuple[str, int, int], ...]


def _stamp(folder: Path) -> Stamp | None:
    """config.json and the checkpoint's other files (not temporary files or the ONNX export made
    here), so a copy whose weights land after its config changes the stamp again: a checkpoint
    found incomplete is retried once the copy is done. None while there is no config."""
    try:
        st = (Path(folder) / "config.json").stat()
    except OSError:
        return None
    parts = [("config.json", st.st_mtime_ns, st.st_size)]
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name == "config.json" or e.name == _ONNX_FILE or e.name.startswith("."):
                    continue
                if e.name.endswith(".tmp") or not e.is_file():
                    continue
                fst = e.stat()
                parts.append((e.name, fst.st_mtime_ns, fst.st_size))
    except OSError:
        pass
    return tuple(sorted(parts))


class LearnedReranker(Reranker):
    """Re-scores the top ``depth`` fused candidates with a trained model; the rest keep their
    order below them. Until a checkpoint exists in ``folder`` it passes the fused order through,
    and picks the checkpoint up as soon as one is written (see the module docstring on hot
    swapping). A checkpoint that cannot be loaded, at start or later, is reported
    (``last_error``, /info) and the previous model, or the fused order, keeps serving.
    Thread-safe."""

    def __init__(
        self,
        index: Any,
        folder: Path,
        *,
        depth: int = 400,
        backend: Backend = "onnx",
        extractor: FeatureExtractor | None = None,
        watch: bool = True,
        background: bool = True,
    ) -> None:
        if depth < 1:
            raise ConfigError(f"re-ranker depth must be >= 1, got {depth}")
        self.index = index
        self.folder = Path(folder)
        self.depth = depth
        self.backend: Backend = backend
        self.watch = watch
        self.background = background
        self._extractor = extractor
        self._scorer: Scorer | None = None
        self._stamp: Stamp | None = None
        self._checked = time.monotonic()
        self._swap_lock = threading.Lock()
        self._loading: threading.Thread | None = None
        self.swaps = 0
        self.last_error: str | None = None
        stamp = _stamp(self.folder)
        if stamp is not None:
            try:
                self.reload()
            except Exception as exc:  # noqa: BLE001 - serve the fused order rather than not start
                self.last_error, self._stamp = str(exc), stamp
                log.error("re-ranker checkpoint %s not loaded, serving the fused order: %s", self.folder, exc)

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.index)
        return self._extractor

    @property
    def name(self) -> str:  # type: ignore[override]
        scorer = self._scorer
        return "none" if scorer is None else f"{scorer.kind}:{self.folder}"

    @property
    def scorer(self) -> Scorer | None:
        return self._scorer

    def rerank(self, retrieval: Retrieval) -> list[Candidate]:
        if self.watch:
            self.maybe_reload()
        scorer = self._scorer  # one reference for the whole call: a swap cannot split it
        cands = retrieval.candidates
        if scorer is None or not cands:
            return cands
        head, tail = cands[: self.depth], cands[self.depth :]
        lf = self.extractor.extract(retrieval, head)
        scores = scorer.score(lf)
        order = np.lexsort((np.arange(len(head)), -scores))
        out = []
        for i in order.tolist():
            c = head[i]
            detail = {**c.detail, "retrieval_score": round(c.score, 6)}
            out.append(dataclasses.replace(c, score=float(scores[i]), detail=detail))
        floor = float(scores.min()) if len(scores) else 0.0
        for i, c in enumerate(tail):  # below every re-scored candidate, in the fused order
            detail = {**c.detail, "retrieval_score": round(c.score, 6)}
            out.append(dataclasses.replace(c, score=floor - 1.0 - i, detail=detail))
        return out

    # ----------------------------------------------------------------- hot swap
    def _load(self) -> tuple[Scorer, Stamp | None]:
        stamp = _stamp(self.folder)
        scorer = load_scorer(self.folder, self.extractor.pieces, self.backend)
        self.extractor.warm()  # first model: build the item store before searches need it
        scorer.score(_dummy_list())  # first call allocates; do it before the swap
        return scorer, stamp

    def maybe_reload(self, min_interval: float = 1.0) -> bool:
        """Start loading a new or changed checkpoint; True when a load started."""
        now = time.monotonic()
        if now - self._checked < min_interval:
            return False
        self._checked = now
        stamp = _stamp(self.folder)
        if stamp is None or stamp == self._stamp:
            return False
        with self._swap_lock:
            if self._loading is not None and self._loading.is_alive():
                return False
            if not self.background:
                self._swap_in(stamp)
                return True
            self._loading = threading.Thread(target=self._swap_in, args=(stamp,), daemon=True)
            self._loading.start()
        return True

    def _swap_in(self, stamp: Stamp) -> None:
        try:
            scorer, _ = self._load()
        except Exception as exc:  # noqa: BLE001 - keep serving the old model, say why
            self.last_error = str(exc)
            self._stamp = stamp  # do not retry the same broken files every second
            log.error("re-ranker checkpoint %s not loaded, keeping the previous one: %s", self.folder, exc)
            return
        self._scorer, self._stamp = scorer, stamp  # the swap: one reference assignment
        self.swaps += 1
        self.last_error = None

    def reload(self) -> None:
        """Load the checkpoint now and swap it in. Raises (and keeps the old model) when the
        checkpoint is missing or broken."""
        if _stamp(self.folder) is None:
            raise IndexCorruptError(f"no re-ranker checkpoint at {self.folder} (no config.json)")
        scorer, stamp = self._load()
        self._scorer, self._stamp = scorer, stamp
        self.swaps += 1
        self.last_error = None

    def wait_for_reload(self, timeout: float = 60.0) -> None:
        thread = self._loading
        if thread is not None:
            thread.join(timeout)


def _dummy_list() -> ListFeatures:
    from reranker.features import QueryInfo

    return ListFeatures(
        candidates=[],
        features=np.zeros((2, len(FEATURE_NAMES)), dtype=np.float32),
        rows=np.zeros(2, dtype=np.int64),
        item_vectors={},
        query=QueryInfo(text="", vectors={}, pieces=np.zeros(0, dtype=np.int64)),
    )


def open_reranker(index: Any, settings: Any) -> Reranker:
    """The re-ranker the settings ask for: with ``reranker`` on, a :class:`LearnedReranker` on
    the checkpoint folder (``reranker_model``, default INDEX/models/reranker), which passes the
    fused order through until a checkpoint is there (a ``reranker_model`` folder that does not
    exist is logged as a warning); with it off, pass-through. A path that is a file is a
    ConfigError: no checkpoint can ever appear there, so waiting would serve the fused order
    forever (it is most likely a file of a checkpoint instead of its folder)."""
    if not getattr(settings, "reranker", True):
        return PassThroughReranker()
    chosen = getattr(settings, "reranker_model", None)
    folder = Path(chosen or model_dir(index.index_dir))
    if folder.exists() and not folder.is_dir():
        what = "reranker_model" if chosen is not None else "the re-ranker folder"
        hint = ""
        if (folder.parent / "config.json").is_file():
            hint = f" (the checkpoint folder is probably {folder.parent})"
        raise ConfigError(
            f"{what} {folder} is a file, not a checkpoint folder: give the folder that "
            f"'shopsearch train-reranker' writes, the one holding config.json{hint}"
        )
    if chosen is not None and not folder.exists():  # by design waited for, but likely a typo
        log.warning(
            "re-ranker folder %s (reranker_model) does not exist: the fused order serves "
            "until a checkpoint appears there",
            folder,
        )
    return LearnedReranker(
        index,
        folder,
        depth=getattr(settings, "reranker_depth", 400),
        backend=getattr(settings, "reranker_backend", "onnx"),
    )
