"""The re-ranker interface the pipeline calls after retrieval.

A re-ranker receives the fused candidates (best first) and returns them in its final order with
its own scores. Issue 5 adds the learned Transformer; until then ``PassThroughReranker`` keeps the
retrieval order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from retriever.search import Candidate, Retrieval


class Reranker(ABC):
    name: str = "reranker"
    depth: int = 100  # how many of the top candidates it re-scores; the rest keep their order

    @abstractmethod
    def rerank(self, retrieval: Retrieval) -> list[Candidate]:
        """Return candidates best first (scores may be replaced)."""


class PassThroughReranker(Reranker):
    name = "none"

    def rerank(self, retrieval: Retrieval) -> list[Candidate]:
        return retrieval.candidates
