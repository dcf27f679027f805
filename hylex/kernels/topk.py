"""Top-k selection shared by the kernels, input checks, and merging of per-segment top-k lists.

Conventions shared by every kernel in :mod:`hylex.kernels`:

* results are ``D`` float32 ``(nq, k)`` and ``I`` int64 ``(nq, k)``;
* each row is sorted by score descending, ties broken by doc id ascending;
* a slot without a hit holds ``I == -1`` and ``D == -inf`` (the faiss convention); such slots are always
  at the end of the row;
* on input, any negative id marks a missing hit.

Kernels are written as plain NumPy-style Python and compiled with :func:`jit`, the one place that holds the
numba options; a compiled kernel's plain twin stays reachable as ``.py_func``, and everything runs as Python under
``NUMBA_DISABLE_JIT=1``.

**Numba is imported on first use, and small workloads never use it.** Each module lists its kernels in a
``_KERNELS`` table and compiles them with :func:`compile_kernels` when a search first needs them (importing numba
and setting up its first kernels costs ~0.4 s of a fresh process here, hundreds of times the search itself on a
small index). Every public kernel has a NumPy twin (vectorized, giving the same results bit for bit, ties included)
that it runs instead when :func:`use_numba` says the workload is small: at most :data:`SMALL_WORK` elements
(queries x documents plus postings walked, or the fused lists' entries, or queries x allowed vectors) while the
module's kernels are not compiled in the process. So a one-shot search on a small index imports no numba; large
workloads, and every search of a process that has compiled the kernels (a server: its warm-up runs under
:func:`kernel_backend` ``"numba"``), keep the compiled kernels. The plain ``*_ref`` references are separate and stay
as simple as possible.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np

MISSING_ID = -1
MISSING_SCORE = -np.inf

_JIT_OPTIONS = {"cache": True, "nogil": True}

# Workloads of at most this many elements run on the NumPy twins while numba is not loaded (see use_numba). Chosen
# by measurement (benchmarks/kernel_crossover.py, results/kernel_crossover.jsonl, one numba thread): the warm
# kernels are faster at every size, the twins save numba's import and first-kernel setup in a fresh process (~0.4 s
# here, measured in-process). 2**16 is the largest power of two where every twin stays within ~2% of that saving
# per call: sparse +0.7 ms over the warm kernel at 65,000, BM25 +0.7 ms at 62,000, fusion +7 ms at 63,000 list
# entries (masked dense: the same BLAS products on both sides); at 2**17 sparse is +5.5 ms and fusion +23 ms.
SMALL_WORK = 1 << 16
BACKENDS = ("auto", "numba", "numpy")
_backend = "auto"  # set by kernel_backend()


@contextlib.contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Within the block, every kernel call runs on ``name``: ``"numba"`` (the compiled kernels, whatever the
    workload), ``"numpy"`` (the twins, where one exists: an approximate sparse search with ``heap_factor`` > 1
    always runs on numba) or ``"auto"`` (the default: see :func:`use_numba`). Process-wide, not per thread: for
    tests, benchmarks and warm-ups."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    old, _backend = _backend, name
    try:
        yield
    finally:
        _backend = old


def use_numba(work: int, module: str | None = None) -> bool:
    """Whether a kernel call of ``work`` elements (of the kernel module named ``module``) runs on numba, else on
    its NumPy twin. ``"auto"``: numba above :data:`SMALL_WORK`, and for any workload once the module's kernels are
    compiled in this process (a server after its warm-up, a process that ran a large search: the warm kernels are
    faster than the twins at every size, the twins only save numba's setup)."""
    if _backend == "auto":
        return work > SMALL_WORK or module in _compiled
    return _backend == "numba"


def jit(fn: Callable[..., Any], *, parallel: bool = False) -> Any:
    """Compile ``fn`` with numba ``njit`` and the options every hylex kernel uses."""
    import numba

    return numba.njit(parallel=parallel, **_JIT_OPTIONS)(fn)


def num_threads() -> int:
    """numba's thread count (numba is imported by then: only the compiled paths ask)."""
    import numba

    return numba.get_num_threads()


_COMPILE_LOCK = threading.RLock()
_compiled: set[str] = set()


def compile_kernels(namespace: dict, kernels: Sequence[tuple[str, str, bool]]) -> None:
    """Compile a kernel module's kernels into its namespace, once per process (thread-safe).

    ``kernels``: ``(name, source, parallel)``: ``namespace[name]`` becomes ``jit(namespace[source])``. Before that
    the module's ``prange`` becomes numba's and the heap helpers it imported from this module become their compiled
    versions, since numba resolves a kernel's globals when it compiles it (or loads it from its cache) on the first
    call.
    """
    module = namespace["__name__"]
    if module in _compiled:
        return
    with _COMPILE_LOCK:
        if module in _compiled:
            return
        import numba

        if module != __name__:
            compile_kernels(globals(), _KERNELS)
            for helper in ("_worse", "_heap_sift_down", "_heap_push", "_heap_drain"):
                if helper in namespace:
                    namespace[helper] = globals()[helper]
        if "prange" in namespace:
            namespace["prange"] = numba.prange
        for name, source, parallel in kernels:
            namespace[name] = jit(namespace[source], parallel=parallel)
        _compiled.add(module)


def load_kernels() -> None:
    """Compile every hylex kernel's dispatcher now (imports numba; the machine code itself is compiled or loaded
    from numba's cache at each kernel's first call: run a search under ``kernel_backend("numba")`` to warm up)."""
    from hylex.kernels import blockmax, bm25, dense, fusion

    for mod in (blockmax, bm25, dense, fusion):
        mod._compile()


# ---------------------------------------------------------------------------------------------------------
# input checks (shared by the public wrappers and the references, so both reject the same inputs)
# ---------------------------------------------------------------------------------------------------------


def check_k(k: Any) -> int:
    """Return ``k`` as an int; raise ValueError unless it is an integer >= 1."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def check_count(name: str, n: Any, *, upper: int | None = None) -> int:
    """Return ``n`` as an int; raise ValueError unless it is an integer in ``[0, upper]``."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if n < 0 or (upper is not None and n > upper):
        raise ValueError(f"{name} must be in [0, {upper if upper is not None else 'inf'}], got {n}")
    return int(n)


def as_array(name: str, a: Any, kind: str, ndim: int, dtype: Any) -> np.ndarray:
    """Return ``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one).

    ``kind`` is ``"i"`` (integers accepted) or ``"f"`` (integers and floats accepted). Empty arrays of any
    numeric dtype pass, since ``np.asarray([])`` is float64.
    """
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    allowed = "iu" if kind == "i" else "iuf"
    if a.dtype.kind not in allowed and not (a.size == 0 and a.dtype.kind in "iuf"):
        raise ValueError(f"{name} must have {'an integer' if kind == 'i' else 'a numeric'} dtype, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def check_indptr(name: str, indptr: np.ndarray, n: int) -> None:
    """Check a CSR-style pointer array: starts at 0, ends at ``n``, never decreases."""
    if indptr.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one entry (it has length n_rows + 1)")
    if indptr[0] != 0 or indptr[-1] != n:
        raise ValueError(f"{name} must start at 0 and end at {n} (the length of its data), "
                         f"got {indptr[0]} .. {indptr[-1]}")
    if indptr.shape[0] > 1 and np.any(indptr[1:] < indptr[:-1]):
        raise ValueError(f"{name} must be non-decreasing")

def check_post_docs(post_docs: Any, n_docs: int, name: str = "post_docs") -> np.ndarray:
    """Doc ids of postings as int32 (nnz,), checked before a narrowing cast could wrap bad ids into range."""
    raw = np.asarray(post_docs)
    if raw.dtype != np.int32 and raw.ndim == 1 and raw.size and raw.dtype.kind in "iu":
        if raw.min() < 0 or raw.max() >= n_docs:
            raise ValueError(f"{name} must hold doc ids in [0, n_docs={n_docs})")
    return as_array(name, raw, "i", 1, np.int32)


def check_queries(q_indptr: Any, q_terms: Any, q_weights: Any, weights_name: str = "q_weights",
                  terms_checked: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ragged weighted queries: int64 pointers, int64 term ids (>= 0 when ``terms_checked``), finite float32
    weights (named ``weights_name`` in errors)."""
    q_indptr = as_array("q_indptr", q_indptr, "i", 1, np.int64)
    q_terms = as_array("q_terms", q_terms, "i", 1, np.int64)
    q_weights = as_array(weights_name, q_weights, "f", 1, np.float32)
    if q_weights.shape[0] != q_terms.shape[0]:
        raise ValueError(f"{weights_name} and q_terms must have the same length, got {q_weights.shape[0]} "
                         f"and {q_terms.shape[0]}")
    check_indptr("q_indptr", q_indptr, q_terms.shape[0])
    if terms_checked and q_terms.size and q_terms.min() < 0:
        raise ValueError("q_terms must be >= 0")
    if not np.isfinite(q_weights).all():
        raise ValueError(f"{weights_name} must be finite")
    return q_indptr, q_terms, q_weights


def check_live(live: Any, n_docs: int) -> np.ndarray | None:
    """Optional live mask (n_docs,) bool/uint8 -> contiguous uint8, or None."""
    if live is None:
        return None
    live = np.asarray(live)
    if live.shape != (n_docs,):
        raise ValueError(f"live must have shape (n_docs,) = ({n_docs},), got {live.shape}")
    if live.dtype == np.bool_:
        live = live.view(np.uint8)
    elif live.dtype != np.uint8:
        raise ValueError(f"live must have dtype bool or uint8, got {live.dtype}")
    return np.ascontiguousarray(live)



# ---------------------------------------------------------------------------------------------------------
# size-k heap (numba): the root is the *worst* kept hit, so a candidate only has to beat the root
# ---------------------------------------------------------------------------------------------------------


def _worse(s1, d1, s2, d2):
    """Whether hit (s1, d1) ranks below hit (s2, d2): lower score, or same score and larger doc id."""
    return s1 < s2 or (s1 == s2 and d1 > d2)


def _heap_sift_down(hs, hd, i, size):
    s = hs[i]
    d = hd[i]
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and _worse(hs[c + 1], hd[c + 1], hs[c], hd[c]):
            c += 1
        if _worse(hs[c], hd[c], s, d):
            hs[i] = hs[c]
            hd[i] = hd[c]
            i = c
        else:
            break
    hs[i] = s
    hd[i] = d


def _heap_push(hs, hd, size, k, s, d):
    """Offer hit (s, d) to the heap ``hs`` float32 (k,), ``hd`` int64 (k,) holding ``size`` hits.

    Returns the new size. Doc ids offered must be distinct, which makes the order total.
    """
    if size < k:
        i = size
        while i > 0:
            p = (i - 1) // 2
            if _worse(s, d, hs[p], hd[p]):
                hs[i] = hs[p]
                hd[i] = hd[p]
                i = p
            else:
                break
        hs[i] = s
        hd[i] = d
        return size + 1
    if _worse(hs[0], hd[0], s, d):
        hs[0] = s
        hd[0] = d
        _heap_sift_down(hs, hd, 0, size)
    return size


def _heap_drain(hs, hd, size, out_s, out_d):
    """Write the heap's hits best-first into ``out_s[:size]``, ``out_d[:size]`` (destroys the heap)."""
    for end in range(size - 1, -1, -1):
        # the root is the worst hit left, so it goes last among those left
        out_s[end] = hs[0]
        out_d[end] = hd[0]
        hs[0] = hs[end]
        hd[0] = hd[end]
        _heap_sift_down(hs, hd, 0, end)


# ---------------------------------------------------------------------------------------------------------
# reference selection (plain Python sort), used by every *_ref
# ---------------------------------------------------------------------------------------------------------


def select_topk_ref(scores: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of distinct hits ``docs`` int (n,) with ``scores`` float32 (n,), padded to k.

    Returns D float32 (k,), I int64 (k,).
    """
    order = sorted(range(len(docs)), key=lambda i: (-float(scores[i]), int(docs[i])))[:k]
    D = np.full(k, MISSING_SCORE, dtype=np.float32)
    I = np.full(k, MISSING_ID, dtype=np.int64)
    D[: len(order)] = np.asarray(scores, dtype=np.float32)[order]
    I[: len(order)] = np.asarray(docs, dtype=np.int64)[order]
    return D, I


# ---------------------------------------------------------------------------------------------------------
# vectorized selection, used by the NumPy twins of the kernels (small workloads)
# ---------------------------------------------------------------------------------------------------------


def select_topk_hits(rows: np.ndarray, scores: np.ndarray, docs: np.ndarray, nq: int, k: int,
                     fill: Any = MISSING_SCORE) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per query of flat hits: query ``rows`` int (n,) ascending, ``scores`` (n,) (any real dtype, not NaN),
    ``docs`` int (n,) distinct within a query. Score descending, ties by doc id ascending (the kernels' heap order).
    Returns S (nq, k) of the scores' dtype (``fill`` in padding) and I int64 (nq, k) (-1 in padding)."""
    S = np.full((nq, k), fill, dtype=scores.dtype)
    I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    if rows.size == 0:
        return S, I
    if rows.size > 4 * nq * k:
        # many hits: keep each query's scores from its k-th best on (ties included) before the sort
        counts = np.bincount(rows, minlength=nq)
        width = int(counts.max())
        if width > k:
            starts = np.zeros(nq, dtype=np.int64)
            np.cumsum(counts[:-1], out=starts[1:])
            low = -np.inf if scores.dtype.kind == "f" else np.iinfo(scores.dtype).min
            P = np.full((nq, width), low, dtype=scores.dtype)
            P[rows, np.arange(rows.shape[0], dtype=np.int64) - starts[rows]] = scores
            kth = np.partition(P, width - k, axis=1)[:, width - k]
            keep = scores >= kth[rows]
            rows, scores, docs = rows[keep], scores[keep], docs[keep]
    order = np.lexsort((docs, -scores, rows))
    rows, scores, docs = rows[order], scores[order], docs[order]
    starts = np.zeros(nq, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=nq)[:-1], out=starts[1:])
    rank = np.arange(rows.shape[0], dtype=np.int64) - starts[rows]
    keep = rank < k
    S[rows[keep], rank[keep]] = scores[keep]
    I[rows[keep], rank[keep]] = docs[keep]
    return S, I


def select_topk_rows(scores: np.ndarray, valid: np.ndarray, k: int,
                     fill: Any = MISSING_SCORE) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of ``scores`` (nq, n) among the entries where ``valid`` (nq, n) holds, doc id = column; as
    :func:`select_topk_hits`."""
    rows, cols = np.nonzero(valid)
    return select_topk_hits(rows, scores[rows, cols], cols.astype(np.int64), scores.shape[0], k, fill)


def ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The concatenation of ``arange(starts[i], stops[i])`` (int64) and, for each of its entries, ``i``: how the
    NumPy twins gather the postings of several lists at once, in list order."""
    starts = np.asarray(starts, dtype=np.int64)
    lens = np.maximum(np.asarray(stops, dtype=np.int64) - starts, 0)
    owner = np.repeat(np.arange(starts.shape[0], dtype=np.int64), lens)
    if owner.size == 0:
        return owner, owner
    first = np.zeros(starts.shape[0], dtype=np.int64)
    np.cumsum(lens[:-1], out=first[1:])
    return starts[owner] + (np.arange(owner.shape[0], dtype=np.int64) - first[owner]), owner


# ---------------------------------------------------------------------------------------------------------
# merge of top-k lists
# ---------------------------------------------------------------------------------------------------------


def _check_merge(D: Any, I: Any, k: Any) -> tuple[np.ndarray, np.ndarray, int]:
    k = check_k(k)
    D = as_array("D", D, "f", 2, np.float32)
    I = as_array("I", I, "i", 2, np.int64)
    if D.shape != I.shape:
        raise ValueError(f"D and I must have the same shape, got {D.shape} and {I.shape}")
    if not np.isfinite(D[I >= 0]).all():
        raise ValueError("D must be finite wherever I holds a hit (I >= 0)")
    return D, I, k


def merge_topk_ref(D: Any, I: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference of :func:`merge_topk`: one Python sort per row."""
    D, I, k = _check_merge(D, I, k)
    out_D = np.empty((D.shape[0], k), dtype=np.float32)
    out_I = np.empty((D.shape[0], k), dtype=np.int64)
    for q in range(D.shape[0]):
        hit = I[q] >= 0
        out_D[q], out_I[q] = select_topk_ref(D[q][hit], I[q][hit], k)
    return out_D, out_I


def merge_topk(D: Any, I: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of concatenated top-k lists (e.g. one list per index segment).

    Args:
        D: float32 (nq, m) scores; entries where ``I < 0`` are ignored, whatever their score.
        I: int64 (nq, m) global doc ids, distinct within a row; negative means no hit.
        k: number of hits to keep per row, >= 1 (may exceed m: the rest is padding).

    Returns:
        D float32 (nq, k), I int64 (nq, k): score descending, ties by doc id ascending, padded with
        ``I == -1`` / ``D == -inf``.
    """
    D, I, k = _check_merge(D, I, k)
    nq, m = D.shape
    hit = I >= 0
    # missing entries sort after every hit: key +inf on the primary (negated score) key
    neg = np.where(hit, -D, np.float32(np.inf))
    ids = np.where(hit, I, np.iinfo(np.int64).max)
    order = np.lexsort((ids, neg), axis=1)[:, :k] if m else np.empty((nq, 0), dtype=np.intp)
    out_D = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    out_I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    w = order.shape[1]
    sel_hit = np.take_along_axis(hit, order, axis=1)
    out_D[:, :w] = np.where(sel_hit, np.take_along_axis(D, order, axis=1), np.float32(MISSING_SCORE))
    out_I[:, :w] = np.where(sel_hit, np.take_along_axis(I, order, axis=1), MISSING_ID)
    return out_D, out_I


# ---------------------------------------------------------------------------------------------------------
# compilation
# ---------------------------------------------------------------------------------------------------------

_KERNELS = (("_worse", "_worse", False), ("_heap_sift_down", "_heap_sift_down", False),
            ("_heap_push", "_heap_push", False), ("_heap_drain", "_heap_drain", False))
