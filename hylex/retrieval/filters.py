"""Metadata filters: a small JSON query language, checked once, evaluated to a document mask per segment.

Filters are dicts in the style of MongoDB / Qdrant payload filters; field names may be dotted paths into nested
objects (``"source.name"``)::

    {"lang": "en"}                                   equality (several keys in one dict: all must hold)
    {"year": {"$gte": 2010, "$lt": 2020}}            ranges: $gt $gte $lt $lte (numbers, or strings compared
                                                     as text, e.g. ISO dates)
    {"lang": {"$in": ["en", "de"]}}                  one of; {"$nin": [...]} none of; {"$ne": v} not equal
    {"source": {"$exists": true}}                    the field is present (even as null)
    {"$and": [f, ...]}  {"$or": [f, ...]}  {"$not": f}

A field holding a list matches when any element matches (``{"tags": "ml"}`` matches ``tags: ["ml", "ir"]``).
Equality is by JSON value: numbers compare as numbers (1 == 1.0), booleans only with booleans, strings only with
strings. A document without the field matches nothing but ``$exists: false``, ``$ne`` and ``$nin``.

Evaluation is vectorised over a segment: each field used is read from the document store once per segment and
kept as columns (values and the rows holding them; segments are immutable), then every operator is a NumPy
comparison giving a bool mask (n_docs,). Searches apply the mask before top-k selection (FAISS ID selector,
the sparse and BM25 kernels' ``live`` mask), so a filtered search returns the best ``k`` matching documents.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hylex.errors import HylexError

COMPARE = ("$gt", "$gte", "$lt", "$lte")
FIELD_OPS = ("$eq", "$ne", "$in", "$nin", "$exists") + COMPARE
LOGIC = ("$and", "$or", "$not")


class FilterError(HylexError, ValueError):
    """A filter that cannot be understood; the message names the part and the fix."""


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int, float)) and not (isinstance(v, float) and math.isnan(v))


def check_filter(flt: Any, where: str = "filter") -> dict:
    """Validate a filter (see the module doc); returns it unchanged, or raises :class:`FilterError`."""
    if isinstance(flt, str) and where == "filter":  # a whole filter may come as JSON text (command line, HTTP)
        try:
            flt = json.loads(flt)
        except json.JSONDecodeError as e:
            raise FilterError(f"{where} is not valid JSON ({e.msg} at character {e.pos}): write it like "
                              f"'{{\"lang\": \"en\", \"year\": {{\"$gte\": 2020}}}}'") from None
    if not isinstance(flt, dict):
        raise FilterError(f"{where} must be an object such as {{\"lang\": \"en\"}}, got {type(flt).__name__}")
    for key, value in flt.items():
        at = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{at} must be a non-empty list of filters")
            for i, sub in enumerate(value):
                check_filter(sub, f"{at}[{i}]")
        elif key == "$not":
            check_filter(value, at)
        elif key.startswith("$"):
            raise FilterError(f"{at}: unknown operator {key!r} at the top of a filter; use a field name or one of "
                              f"{', '.join(LOGIC)}")
        elif not key:
            raise FilterError(f"{where}: empty field name")
        elif isinstance(value, dict) and any(k.startswith("$") for k in value):
            for op, arg in value.items():
                if op not in FIELD_OPS:
                    raise FilterError(f"{at}: unknown operator {op!r}; use one of {', '.join(FIELD_OPS)}")
                if op in ("$in", "$nin"):
                    if not isinstance(arg, list) or not all(_scalar(a) for a in arg):
                        raise FilterError(f"{at}.{op} must be a list of strings, numbers, booleans or null")
                elif op == "$exists":
                    if not isinstance(arg, bool):
                        raise FilterError(f"{at}.$exists must be true or false")
                elif op in COMPARE:
                    if isinstance(arg, bool) or not isinstance(arg, (int, float, str)) or (
                            isinstance(arg, float) and not math.isfinite(arg)):
                        raise FilterError(f"{at}.{op} must be a finite number or a string, got {arg!r}")
                elif not _scalar(arg):
                    raise FilterError(f"{at}.{op} must be a string, number, boolean or null, got {arg!r}")
        elif not _scalar(value):
            raise FilterError(f"{at}: equality needs a string, number, boolean or null, got {value!r}; for "
                              f"operators write {{\"{key}\": {{\"$in\": [...]}}}}")
    return flt


@dataclass
class Column:
    """One field over one segment: every (row, value) pair, split by JSON type. Arrays of rows are int64."""

    n_docs: int
    present: np.ndarray  # bool (n_docs,): the field exists (any value, null included)
    num_rows: np.ndarray
    num: np.ndarray       # float64
    str_rows: np.ndarray
    strs: np.ndarray      # numpy unicode
    bool_rows: np.ndarray
    bools: np.ndarray     # bool
    null_rows: np.ndarray


_MISSING = object()


def _lookup(meta: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(meta, dict) or part not in meta:
            return _MISSING
        meta = meta[part]
    return meta


def build_column(pairs, n_docs: int, field: str) -> Column:
    """Column of ``field`` from ``(local row, metadata dict)`` pairs."""
    path = field.split(".")
    present = np.zeros(n_docs, bool)
    nr, nv, sr, sv, br, bv, zr = [], [], [], [], [], [], []
    for row, meta in pairs:
        v = _lookup(meta, path)
        if v is _MISSING:
            continue
        present[row] = True
        for x in (v if isinstance(v, list) else [v]):
            if isinstance(x, bool):
                br.append(row)
                bv.append(x)
            elif isinstance(x, (int, float)):
                nr.append(row)
                nv.append(float(x))
            elif isinstance(x, str):
                sr.append(row)
                sv.append(x)
            elif x is None:
                zr.append(row)
    ia = lambda x: np.asarray(x, dtype=np.int64)
    return Column(n_docs, present, ia(nr), np.asarray(nv, np.float64), ia(sr), np.asarray(sv, dtype=str),
                  ia(br), np.asarray(bv, bool), ia(zr))


def _rows_where(col: Column, rows: np.ndarray, hit: np.ndarray) -> np.ndarray:
    out = np.zeros(col.n_docs, bool)
    out[rows[hit]] = True
    return out


def _eq(col: Column, v: Any) -> np.ndarray:
    if v is None:
        return _rows_where(col, col.null_rows, np.ones(len(col.null_rows), bool))
    if isinstance(v, bool):
        return _rows_where(col, col.bool_rows, col.bools == v)
    if isinstance(v, (int, float)):
        return _rows_where(col, col.num_rows, col.num == float(v))
    return _rows_where(col, col.str_rows, col.strs == v) if len(col.strs) else np.zeros(col.n_docs, bool)


def _compare(col: Column, op: str, v: Any) -> np.ndarray:
    fn = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op]
    if isinstance(v, str):
        return _rows_where(col, col.str_rows, fn(col.strs, v)) if len(col.strs) else np.zeros(col.n_docs, bool)
    return _rows_where(col, col.num_rows, fn(col.num, float(v)))


class FilterEvaluator:
    """Evaluates checked filters on the segments of an :class:`~hylex.indexing.Index`, caching columns in the
    index (``index.columns_cache``, keyed by segment name and field)."""

    def __init__(self, index):
        self.index = index

    def column(self, seg, field: str) -> Column:
        key = (seg.name, field)
        cache = self.index.columns_cache
        if key not in cache:
            pairs = ((row - seg.row_offset, doc.get("metadata") or {})
                     for row, doc in self.index.store.scan(seg.row_offset, seg.row_offset + seg.n_docs))
            cache[key] = build_column(pairs, seg.n_docs, field)
        return cache[key]

    def mask(self, seg, flt: dict) -> np.ndarray:
        """bool (seg.n_docs,): the documents of ``seg`` matching ``flt`` (tombstones not applied)."""
        out = np.ones(seg.n_docs, bool)
        for key, value in flt.items():
            if key == "$and":
                for sub in value:
                    out &= self.mask(seg, sub)
            elif key == "$or":
                any_ = np.zeros(seg.n_docs, bool)
                for sub in value:
                    any_ |= self.mask(seg, sub)
                out &= any_
            elif key == "$not":
                out &= ~self.mask(seg, value)
            else:
                out &= self._field(seg, key, value)
        return out

    def _field(self, seg, field: str, cond: Any) -> np.ndarray:
        col = self.column(seg, field)
        if not (isinstance(cond, dict) and any(k.startswith("$") for k in cond)):
            return _eq(col, cond)
        out = np.ones(seg.n_docs, bool)
        for op, arg in cond.items():
            if op == "$eq":
                out &= _eq(col, arg)
            elif op == "$ne":
                out &= ~_eq(col, arg)
            elif op in ("$in", "$nin"):
                hit = np.zeros(seg.n_docs, bool)
                for v in arg:
                    hit |= _eq(col, v)
                out &= hit if op == "$in" else ~hit
            elif op == "$exists":
                out &= col.present if arg else ~col.present
            else:
                out &= _compare(col, op, arg)
        return out

    def masks(self, flt: dict | str | None) -> list[np.ndarray] | None:
        """Per segment of the index, the matching documents (None when there is no filter)."""
        if flt is None:
            return None
        flt = check_filter(flt)
        return [self.mask(seg, flt) for seg in self.index.segments]


def matching_rows(index, flt: dict | str) -> list[int]:
    """Global rows of the live documents matching ``flt``."""
    rows = []
    for seg, m in zip(index.segments, FilterEvaluator(index).masks(flt)):
        allowed = seg.allowed(m)
        rows.extend((np.flatnonzero(allowed) + seg.row_offset).tolist())
    return rows


def delete_where(index, flt: dict | str, *, dry_run: bool = False) -> int:
    """Delete every live document of a writable index matching ``flt``; returns how many (``dry_run``: only
    counts them, on any handle; nothing is written).

    An empty filter (``{}``) would match every document and is refused: deleting everything is said explicitly,
    with :meth:`hylex.indexing.Index.delete_all` (``hylex delete --all``, ``DELETE /documents {"all": true}``).
    A non-empty filter that happens to match every document (``{"x": {"$nin": []}}``) deletes them all: the count
    returned says so, and a dry run tells it beforehand.
    """
    flt = check_filter(flt)
    if not flt:
        raise FilterError("an empty filter matches every document: to delete them all, say so explicitly "
                          "(hylex delete --all, DELETE /documents {\"all\": true}, Index.delete_all())")
    return index.delete_rows(matching_rows(index, flt), dry_run=dry_run)
