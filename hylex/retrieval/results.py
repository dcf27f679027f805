"""The one result type every search returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Results:
    """Top-k hits of ``n_queries`` queries.

    Attributes:
        ids: object array (n_queries, k) of external document ids, ``None`` where there is no hit.
        scores: float32 (n_queries, k), descending per row, ``-inf`` where there is no hit.
        rows: int64 (n_queries, k) global index rows, ``-1`` where there is no hit.
        mode: ``dense``, ``sparse``, ``bm25`` or ``hybrid``.
        documents: optional per-hit stored documents (filled by ``Searcher.search(..., with_documents=True)``).
        explanations: optional per-hit explanations (``Searcher.search(..., explain=True)``, see
            :mod:`hylex.retrieval.explain`), None where there is no hit.
    """

    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    mode: str = "hybrid"
    documents: list | None = field(default=None, repr=False)
    explanations: list | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape

    def __len__(self) -> int:
        return self.scores.shape[0]

    def hits(self, q: int) -> list[tuple[str, float]]:
        """``[(id, score), ...]`` of query ``q``, missing hits left out."""
        return [(i, float(s)) for i, s in zip(self.ids[q], self.scores[q]) if i is not None]

    def to_list(self) -> list[list[dict]]:
        """JSON-ready ``[[{"id", "score", "rank"}, ...] per query]``."""
        out = []
        for q in range(len(self)):
            row = []
            # documents and explanations are by column: a column without a hit is skipped, not counted
            hits = [(j, i, float(s)) for j, (i, s) in enumerate(zip(self.ids[q], self.scores[q])) if i is not None]
            for rank, (j, i, s) in enumerate(hits, 1):
                hit = {"rank": rank, "id": i, "score": s}
                if self.explanations is not None and self.explanations[q][j] is not None:
                    hit["explain"] = self.explanations[q][j]
                if self.documents is not None and self.documents[q][j] is not None:
                    doc = self.documents[q][j]
                    hit.update(title=doc.get("title", ""), text=doc.get("text", ""),
                               metadata=doc.get("metadata", {}))
                row.append(hit)
            out.append(row)
        return out
