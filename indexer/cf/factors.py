"""The learned model: latent factors for rows (query groups and users) and items.

Two interchangeable trainers, both returning :class:`Factors` where ``score = row @ item``:

* ``als``: implicit-feedback ALS (Hu, Koren & Volinsky 2008) from the ``implicit`` library;
  confidence ``1 + alpha * log1p(weighted count)``.
* ``gmf``: generalised matrix factorisation (He et al. 2017) in torch, trained with a sampled
  softmax-free BPR loss; the output layer and item bias are folded into the exported item vectors
  (``[h * q_i, b_i]`` against ``[p_u, 1]``) so serving is one inner product either way.

Rows of the training matrix are query groups first, then users: both kinds share one item space,
which is what lets a user's history and a query meet in one score.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from shopsearch.errors import ConfigError


@dataclass
class Factors:
    rows: np.ndarray  # (n_rows, d) float32
    items: np.ndarray  # (n_items, d) float32
    kind: str
    seconds: float


def interaction_matrix(
    row: np.ndarray, item: np.ndarray, weight: np.ndarray, n_rows: int, n_items: int
) -> sp.csr_matrix:
    m = sp.csr_matrix((weight.astype(np.float32), (row, item)), shape=(n_rows, n_items), dtype=np.float32)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def train_als(
    matrix: sp.csr_matrix,
    *,
    factors: int = 64,
    regularization: float = 0.05,
    alpha: float = 10.0,
    iterations: int = 15,
    seed: int = 0,
    threads: int = 0,
    progress: bool = False,
) -> Factors:
    """implicit's CPU ALS on log-scaled confidences."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as exc:  # pragma: no cover - implicit is a declared dependency
        raise ConfigError(f"cf_model 'als' needs the 'implicit' package: {exc}") from None
    t0 = time.perf_counter()
    conf = matrix.copy()
    conf.data = np.log1p(conf.data).astype(np.float32)
    from threadpoolctl import threadpool_limits

    # implicit parallelises over rows itself; a multi-threaded BLAS underneath only oversubscribes
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
            num_threads=threads,
            calculate_training_loss=False,
        )
        model.fit(conf, show_progress=progress)
    rows = np.asarray(model.user_factors, dtype=np.float32)
    items = np.asarray(model.item_factors, dtype=np.float32)
    return Factors(rows=rows, items=items, kind="als", seconds=time.perf_counter() - t0)


def train_gmf(
    matrix: sp.csr_matrix,
    *,
    factors: int = 64,
    epochs: int = 30,
    lr: float = 0.02,
    l2: float = 1e-4,
    batch_size: int = 4096,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Factors:
    """GMF with a BPR loss over (row, clicked item, sampled item) triples; positives are drawn in
    proportion to log1p(weight) so heavy rows do not dominate an epoch. Sparse embeddings and
    SparseAdam: a step touches only the rows and items of its batch (L2 on those, in the loss)."""
    import torch

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    coo = matrix.tocoo()
    n_rows, n_items = matrix.shape
    if coo.nnz == 0:
        raise ConfigError("cannot train GMF: the interaction matrix is empty")
    rows_t = torch.as_tensor(coo.row, dtype=torch.long)
    items_t = torch.as_tensor(coo.col, dtype=torch.long)
    probs = torch.as_tensor(np.log1p(coo.data), dtype=torch.float64)
    probs = probs / probs.sum()
    p = torch.nn.Embedding(n_rows, factors, sparse=True)
    q = torch.nn.Embedding(n_items, factors, sparse=True)
    b = torch.nn.Embedding(n_items, 1, sparse=True)
    h = torch.nn.Parameter(torch.ones(factors))
    torch.nn.init.normal_(p.weight, std=0.1, generator=g)
    torch.nn.init.normal_(q.weight, std=0.1, generator=g)
    torch.nn.init.zeros_(b.weight)
    sparse_opt = torch.optim.SparseAdam([*p.parameters(), *q.parameters(), *b.parameters()], lr=lr)
    dense_opt = torch.optim.Adam([h], lr=lr)
    n_per_epoch = max(coo.nnz, batch_size)

    with _torch_threads(1):  # small batches: intra-op threads only add synchronisation
        for epoch in range(epochs):
            total = 0.0
            for _ in range(0, n_per_epoch, batch_size):
                pick = torch.multinomial(probs, batch_size, replacement=True, generator=g)
                r, pos = rows_t[pick], items_t[pick]
                neg = torch.randint(0, n_items, (batch_size,), generator=g)
                pr, qp, qn = p(r), q(pos), q(neg)
                diff = (pr * (qp - qn) * h).sum(-1) + (b(pos) - b(neg)).squeeze(-1)
                reg = l2 * (pr.pow(2).sum(-1) + qp.pow(2).sum(-1) + qn.pow(2).sum(-1)).mean()
                loss = -torch.nn.functional.logsigmoid(diff).mean() + reg
                sparse_opt.zero_grad()
                dense_opt.zero_grad()
                loss.backward()
                sparse_opt.step()
                dense_opt.step()
                total += float(loss.detach()) * batch_size
            if on_epoch:
                on_epoch(epoch, total / n_per_epoch)
    with torch.no_grad():
        rows = torch.cat([p.weight, torch.ones(n_rows, 1)], dim=1).numpy().astype(np.float32)
        items = torch.cat([q.weight * h, b.weight], dim=1).numpy().astype(np.float32)
    return Factors(rows=rows, items=items, kind="gmf", seconds=time.perf_counter() - t0)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
