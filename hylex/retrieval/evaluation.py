"""Evaluating retrieval results: TREC run files and IR metrics through ``ir_measures``.

Results come as the engine returns them: a list of query ids, and for each query a row of document ids
(``None`` where fewer hits than ``k`` were found) and a row of scores (non-finite where missing).

On queries without results: :func:`evaluate_run` averages every metric over **all queries of the qrels**;
a judged query absent from the run (or with an empty result list) counts as 0. ir_measures 0.4.3 already
does this itself (its ``Evaluator.iter_calc`` yields ``measure.DEFAULT`` = 0 for each qrels query that the
provider, here pytrec_eval, returned nothing for; pytrec_eval alone only reports queries present in the run,
which would inflate averages). :func:`evaluate_run` additionally pads the run with empty result lists for
those queries so the zeros do not depend on that fallback. Run queries absent from the qrels are ignored,
and a judged query whose judgments are all 0 (no relevant document) also scores 0, as in trec_eval.
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from hylex.errors import CorpusError, HylexError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_METRICS: tuple[str, ...] = ("nDCG@10", "R@100")

# user spellings -> ir_measures measure names (ir_measures names are case-sensitive)
_MEASURE_ALIASES = {
    "ndcg": "nDCG",
    "r": "R",
    "recall": "R",
    "p": "P",
    "precision": "P",
    "rr": "RR",
    "mrr": "RR",
    "ap": "AP",
    "map": "AP",
    "success": "Success",
    "judged": "Judged",
}
_WHITESPACE = re.compile(r"\s")


def _rows(query_ids: Sequence[str], ids: Any, scores: Any) -> Iterable[tuple[str, list[tuple[str, float]]]]:
    """Yield ``(query_id, [(doc_id, score), ...])`` with missing hits dropped, sorted by descending score.

    Raises:
        ValueError: the shapes of ``query_ids``, ``ids`` and ``scores`` disagree.
    """
    score_arr = np.asarray(scores, dtype=np.float64)
    n = len(query_ids)
    if score_arr.ndim != 2 or score_arr.shape[0] != n:
        raise ValueError(
            f"scores must be a 2-D array with one row per query ({n} queries), got shape {score_arr.shape}. "
            f"Pass the (n_queries, k) score matrix returned by the search."
        )
    if len(ids) != n:
        raise ValueError(
            f"ids has {len(ids)} rows but there are {n} query ids. Pass one row of document ids per query."
        )
    for qi, qid in enumerate(query_ids):
        id_row = ids[qi]
        score_row = score_arr[qi]
        if len(id_row) != len(score_row):
            raise ValueError(
                f"query {qid!r}: {len(id_row)} document ids but {len(score_row)} scores. "
                f"Pass ids and scores of the same shape."
            )
        hits = [
            (str(doc_id), float(score))
            for doc_id, score in zip(id_row, score_row)
            if doc_id is not None and math.isfinite(score)
        ]
        hits.sort(key=lambda h: -h[1])  # stable: keeps the given order among ties
        yield str(qid), hits


def run_from_results(query_ids: Sequence[str], ids: Any, scores: Any) -> dict[str, dict[str, float]]:
    """Turn search results into an ``ir_measures``/pytrec_eval run: query id -> {document id -> score}.

    Missing hits (``None`` id or non-finite score) are dropped; every query gets an entry (possibly empty);
    a document listed twice for one query keeps its highest score.
    """
    run: dict[str, dict[str, float]] = {}
    for qid, hits in _rows(query_ids, ids, scores):
        entry = run.setdefault(qid, {})
        for doc_id, score in hits:
            if doc_id not in entry or score > entry[doc_id]:
                entry[doc_id] = score
    return run


def write_trec_run(
    path: PathLike,
    query_ids: Sequence[str],
    ids: Any,
    scores: Any,
    tag: str = "hylex",
) -> int:
    """Write results as a standard TREC run file, one line ``qid Q0 docid rank score tag`` per hit.

    Args:
        path: the output file (parent directories are created).
        query_ids: one id per query.
        ids: per query, the ranked document ids (a list of lists or a 2-D object array; ``None`` = no hit).
        scores: the matching ``(n_queries, k)`` scores; non-finite values mark missing hits.
        tag: the run name written in the last column.

    Returns:
        the number of lines written. Missing hits are skipped; ranks are 1-based and consecutive in descending
        score order; scores are written at full precision so that trec_eval's re-sorting keeps the order.

    Raises:
        HylexError: the tag is empty or contains whitespace.
        CorpusError: a query or document id contains whitespace (the TREC format cannot hold it).
        ValueError: the shapes of the inputs disagree.
    """
    if not tag or _WHITESPACE.search(tag):
        raise HylexError(f"run tag {tag!r} must be non-empty and without whitespace. Use e.g. tag='hylex-bm25'.")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = 0
    with p.open("w", encoding="utf-8", newline="\n") as fh:
        for qid, hits in _rows(query_ids, ids, scores):
            if not qid or _WHITESPACE.search(qid):
                raise CorpusError(
                    f"query id {qid!r} is empty or contains whitespace, which a TREC run file cannot hold. "
                    f"Use query ids without spaces."
                )
            for rank, (doc_id, score) in enumerate(hits, start=1):
                if not doc_id or _WHITESPACE.search(doc_id):
                    raise CorpusError(
                        f"document id {doc_id!r} is empty or contains whitespace, which a TREC run file cannot "
                        f"hold. Use document ids without spaces in the corpus."
                    )
                fh.write(f"{qid} Q0 {doc_id} {rank} {score!r} {tag}\n")
                lines += 1
    logger.info("wrote TREC run %s: %d queries, %d lines", p, len(query_ids), lines)
    return lines


def _parse_metric(name: str) -> Any:
    """Parse a metric name such as ``nDCG@10``, ``ndcg@10``, ``R@100``, ``recall@100`` or ``MRR@10``."""
    import ir_measures

    text = name.strip()
    head, sep, tail = text.partition("@")
    base = re.match(r"^[A-Za-z_]+", head)
    if base and base.group(0).lower() in _MEASURE_ALIASES:
        text = _MEASURE_ALIASES[base.group(0).lower()] + head[base.end():] + sep + tail
    try:
        return ir_measures.parse_measure(text)
    except Exception:  # NameError / ValueError / SyntaxError depending on the input
        raise HylexError(
            f"unknown metric {name!r}. Use ir_measures names such as nDCG@10, R@100 (recall), P@10, "
            f"RR@10 (MRR), AP."
        ) from None


def _metric_key(measure: Any) -> str:
    """Lower-cased result key of a measure: ``nDCG@10`` -> ``ndcg@10``, ``R@100`` -> ``recall@100``."""
    key = str(measure).lower()
    if key.startswith("r@"):
        key = "recall@" + key[2:]
    return key


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """Score a run against relevance judgments with ``ir_measures``.

    Args:
        run: query id -> {document id -> score} (see :func:`run_from_results`).
        qrels: query id -> {document id -> relevance grade}.
        metrics: ir_measures metric names; lower-case spellings and ``recall@k``/``MRR@k`` are accepted.

    Returns:
        metric key -> mean over **all** qrels queries (a judged query without results counts as 0); keys
        are lower-cased, with ``R@k`` named ``recall@k``: ``{"ndcg@10": ..., "recall@100": ...}``.

    Raises:
        HylexError: an unknown metric name, or empty qrels.
    """
    import ir_measures

    if isinstance(metrics, str):
        metrics = (metrics,)
    if not qrels:
        raise HylexError(
            "the qrels are empty, so nothing can be evaluated. Pass the judgments of the queries you ran."
        )
    measures = [_parse_metric(m) for m in metrics]
    if not measures:
        raise HylexError("no metrics given. Pass e.g. metrics=('nDCG@10', 'R@100').")

    qrels_d = {str(q): {str(d): int(r) for d, r in judged.items()} for q, judged in qrels.items()}
    run_d: dict[str, dict[str, float]] = {}
    for qid in qrels_d:  # only judged queries count; pad the ones without results with an empty list
        hits = run.get(qid, {})
        run_d[qid] = {str(d): float(s) for d, s in hits.items() if math.isfinite(float(s))}
    missing = sum(1 for q in run_d if not run_d[q])
    if missing:
        logger.info("%d of %d judged queries have no results; they count as 0", missing, len(run_d))
    ignored = sum(1 for q in run if q not in qrels_d)
    if ignored:
        logger.debug("%d run queries have no judgments and are ignored", ignored)

    agg = ir_measures.calc_aggregate(measures, qrels_d, run_d)
    return {_metric_key(m): float(agg.get(m, 0.0)) for m in measures}


def judged_coverage(index, qrels: dict[str, dict[str, int]]) -> dict:
    """How many of the documents ``qrels`` judge are live in ``index``: ``{"judged", "missing", "relevant",
    "relevant_missing", "example"}``. A judged document missing from the index can never be retrieved, so
    metrics computed over such an index are lower than the collection's and say nothing about the ranking."""
    from hylex.corpus import check_id
    from hylex.errors import CorpusError

    judged = sorted({d for rels in qrels.values() for d in rels})
    relevant = {d for rels in qrels.values() for d, g in rels.items() if g > 0}
    valid = []
    for d in judged:
        try:
            valid.append(check_id(d))
        except CorpusError:  # an id no index can hold is missing by definition
            pass
    present = {d for d, r in zip(valid, index.rows_of(valid)) if r is not None}
    missing = [d for d in judged if d not in present]
    return {"judged": len(judged), "missing": len(missing), "relevant": len(relevant),
            "relevant_missing": sum(d in relevant for d in missing), "example": missing[0] if missing else None}
