"""Which arms a plain hybrid search fuses, and with which weights: the stored choice, and how it is chosen.

A search that names no arms, weights, alpha or fusion method uses the **stored fusion** of its index, looked up
in this order (:func:`stored_fusion`):

1. the index manifest's ``fusion``, written by ``hylex fuse`` (:func:`choose_fusion` on a training split of the
   collection the index holds);
2. the fusion of the index's model: a tuned model's card (chosen on its dev queries by ``hylex tune``) or a
   packaged model's registry entry (chosen on a training split, :data:`hylex.engine.models.PACKAGED_MODELS`);
3. :data:`BUILTIN_FUSION`.

A fusion record is ``{"method": "convex", "arms": [...], "weights": [...], ...}`` plus where it was chosen
(``chosen_on``), its ``metric`` and ``score`` there. Only convex fusion of min-max normalised scores is stored
(the method every choice here was measured with).
"""
from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from hylex.errors import HylexError

logger = logging.getLogger(__name__)

ARM_ORDER = ("dense", "sparse", "bm25")

# The fallback for a model with no stored choice (an untuned model that is not packaged): all three arms, BM25
# weighted most. Chosen on SciFact *train* with the packaged smollm2-135m (benchmarks/README.md, "Retrieval
# quality"): the LLM arms of an untuned model add recall but are weaker than BM25, so BM25 carries the fusion.
# The largest fusion weight: fused scores are float32, at most the weights' sum (three arms: 3e29, far inside
# float32's 3.4e38), and only the weights' ratios change a ranking, so a weight this large is a mistake, never a
# need. A bound per weight is one a JSON Schema can state.
MAX_WEIGHT = 1e29

BUILTIN_FUSION: dict = {"method": "convex", "arms": ["dense", "sparse", "bm25"], "weights": [0.2, 0.2, 0.6],
                        "chosen_on": "builtin: SciFact train, smollm2-135m zero-shot", "source": "builtin"}


def check_fusion(record, where: str) -> dict:
    """A stored fusion record, validated (``where`` names its origin in the error)."""
    if not isinstance(record, Mapping):
        raise HylexError(f"the fusion stored in {where} is not an object: choose it again with `hylex fuse`")
    if record.get("method", "convex") != "convex":
        raise HylexError(f"the fusion stored in {where} has method {record.get('method')!r}; only 'convex' is "
                         f"stored: choose it again with `hylex fuse`")
    # plain checks (no searcher import: `hylex stats` shows the stored fusion without loading NumPy's stack)
    arms, weights = record.get("arms"), record.get("weights")
    ok = (isinstance(arms, (list, tuple)) and arms and all(a in ARM_ORDER for a in arms)
          and len(set(arms)) == len(arms) and isinstance(weights, (list, tuple)) and len(weights) == len(arms)
          and all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                  for w in weights) and any(weights) and max(weights) <= MAX_WEIGHT)
    if not ok:
        raise HylexError(f"the fusion stored in {where} is invalid (arms {arms!r}, weights {weights!r}: each arm "
                         f"once from {', '.join(ARM_ORDER)}, one finite weight >= 0 per arm, not all 0, at most "
                         f"{MAX_WEIGHT:g}): choose it "
                         f"again with `hylex fuse`")
    return {**record, "method": "convex", "arms": list(arms), "weights": [float(w) for w in weights]}


def model_fusion(model_id: str | None) -> dict | None:
    """The fusion a model carries: a tuned folder's card, or a packaged model's registry entry (None if none)."""
    if not model_id:
        return None
    from hylex.engine.models import ALIASES, PACKAGED_MODELS, read_card, shipped_folder

    name = ALIASES.get(str(model_id).lower(), str(model_id).lower())
    if name in PACKAGED_MODELS:
        f = PACKAGED_MODELS[name].fusion
        return None if f is None else {**f, "source": f"model {name}"}
    shipped = shipped_folder(name)
    if shipped is not None:
        card = read_card(shipped)
        return {**card["fusion"], "source": f"model {name}"} if card.get("fusion") else None
    p = Path(str(model_id))
    if p.is_dir():
        try:
            card = read_card(p)
        except HylexError:
            return None
        if card and card.get("fusion"):
            return {**card["fusion"], "source": f"model card {p}"}
    return None


def stored_fusion(manifest: Mapping) -> dict:
    """The fusion a plain hybrid search over the index with ``manifest`` uses (see the module docstring)."""
    if manifest.get("fusion"):
        return {**check_fusion(manifest["fusion"], "the index manifest"), "source": "index"}
    f = model_fusion((manifest.get("encoder") or {}).get("model_id"))
    if f is not None:
        return check_fusion(f, f["source"])
    return dict(BUILTIN_FUSION)


def weight_grid(n_arms: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """Every weight vector of ``n_arms`` non-negative multiples of ``step`` summing to 1 (the simplex grid),
    single arms (one weight 1) included."""
    if not (isinstance(step, (int, float)) and 0 < step <= 1 and math.isfinite(step)):
        raise HylexError(f"step must be in (0, 1], got {step!r}")
    m = int(round(1 / step))
    if abs(m * step - 1) > 1e-9:
        raise HylexError(f"step {step} does not divide 1: use e.g. 0.1, 0.05 or 0.25")
    out = []
    for c in itertools.product(range(m + 1), repeat=n_arms):
        if sum(c) == m:
            out.append(tuple(round(x / m, 6) for x in c))
    return out


def choose_fusion(arms: Mapping[str, tuple[np.ndarray, np.ndarray]], score: Callable[[np.ndarray, np.ndarray], float],
                  *, k: int = 10, step: float = 0.1, candidates: Sequence[str] | None = None,
                  tolerance: float = 1e-4,
                  fuse: Callable[[tuple[str, ...], tuple[float, ...], int], tuple[np.ndarray, np.ndarray]] | None = None
                  ) -> tuple[dict, list[dict]]:
    """The convex fusion of ``arms`` that ``score`` rates best.

    Args:
        arms: per arm name, its top lists ``(D float32 (nq, depth), I int64 (nq, depth))`` for the same queries.
        score: ``(D, I) -> float`` (e.g. nDCG@10 of the fused top-k against the training qrels).
        k: hits fused per query.
        step: the weight grid (:func:`weight_grid`) over every arm of ``candidates`` (default: all given).
        tolerance: scores within this of the best count as ties, broken towards fewer arms (cheaper searches:
            BM25 alone needs no model) and then towards the grid's order.
        fuse: ``(arm names, weights, k) -> (D, I)`` for a grid point of two or more arms; default hylex's convex
            fusion of the arms' lists (the fusion a search runs). Another one scores the same grid under another
            fusion (e.g. another score normalisation); single arms are always their own top ``k``.

    Returns:
        ``(best, table)``: the best ``{"method", "arms", "weights", "score"}`` and every grid point's record, best
        first.
    """
    from hylex.retrieval.searcher import fuse_arms

    names = [a for a in ARM_ORDER if a in arms and (candidates is None or a in candidates)]
    if not names:
        raise HylexError("no arm to choose a fusion from")
    table = []
    seen = set()
    for w in weight_grid(len(names), step):
        used = tuple(n for n, x in zip(names, w) if x > 0)
        ws = tuple(x for x in w if x > 0)
        if (used, ws) in seen:
            continue
        seen.add((used, ws))
        if len(used) == 1:
            D, I = arms[used[0]]
            D, I = D[:, :k], I[:, :k]
        else:
            D, I = fuse(used, ws, k) if fuse else fuse_arms([arms[a] for a in used], ws, "convex", k)
        table.append({"method": "convex", "arms": list(used), "weights": list(ws), "score": float(score(D, I))})
    top = max(r["score"] for r in table)
    best = min((r for r in table if r["score"] >= top - tolerance), key=lambda r: len(r["arms"]))
    table.sort(key=lambda r: -r["score"])
    return best, table


__all__ = ["BUILTIN_FUSION", "MAX_WEIGHT", "check_fusion", "choose_fusion", "model_fusion", "stored_fusion",
           "weight_grid"]
