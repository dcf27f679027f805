"""Dense vectors in FAISS: exact inner product by default, any index-factory string as an option."""
from __future__ import annotations

import contextlib
import logging
import os
import threading

import numpy as np

from hylex.errors import HylexError

try:
    import faiss
except ImportError as e:  # FAISS comes from an extra: hylex[cpu] or hylex[gpu]
    raise HylexError(f"FAISS is not installed ({e}): pip install 'hylex[cpu]', or 'hylex[gpu]' on a CUDA machine "
                     f"(bash install.sh [--gpu] does either)") from None
from hylex.indexing.placement import (  # noqa: F401  (where dense search runs; re-exported from here)
    DEFAULT_FACTORY, DEVICE_ENV, GPU_ENV, TORCH_DTYPE_ENV, dense_device, dense_placement, faiss_gpu_status,
    gpu_available,
)
from hylex.kernels.dense import flat_topk

logger = logging.getLogger(__name__)

# From this many queries in a batch, exact Flat search goes through BLAS: FAISS's own BLAS path without a mask
# (FAISS 1.15 otherwise keeps a scalar loop up to ~128,000 queries: 78 vs 1,140 queries/s for 300 queries over
# 200,000 x 384 here), hylex.kernels.dense.flat_topk with one (FAISS never uses BLAS with an ID selector).
# Below it, FAISS's loop is faster (one query: 29 vs 10 per second).
FLAT_BLAS_MIN_QUERIES = 16
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def _faiss_blas():
    """Make FAISS's exact search use BLAS for this call's batch; the threshold is process-global, so it is
    lowered under a lock and restored after (concurrent batched Flat searches take turns; each uses every core)."""
    with _BLAS_LOCK:
        old = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = min(old, FLAT_BLAS_MIN_QUERIES)
        try:
            yield
        finally:
            faiss.cvar.distance_compute_blas_threshold = old


def to_gpu(index: faiss.Index) -> faiss.Index:
    """The index on every visible GPU when faiss-gpu sees one and supports its type, else the index itself.

    FAISS has GPU versions of Flat, IVF-Flat and IVF-PQ; HNSW (and anything the conversion refuses) stays on
    the CPU. Searching a GPU copy gives the same results as the CPU index (Flat: up to float rounding).
    """
    if dense_placement()["device"] != "faiss-gpu" or "HNSW" in type(index).__name__:
        return index
    try:
        gpu = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:  # a type without a GPU version
        logger.info("FAISS %s stays on the CPU: %s", type(index).__name__, str(e).splitlines()[0] if str(e) else e)
        return index
    logger.info("FAISS %s searches on %d GPU(s)", type(index).__name__, faiss.get_num_gpus())
    return gpu


class DenseIndex:
    """A FAISS index with inner-product metric over L2-normalised vectors (so scores are cosines)."""

    def __init__(self, index: faiss.Index, factory: str = DEFAULT_FACTORY, accel=None):
        self.index = index
        self.factory = factory
        # a TorchFlat copy of an exact index's vectors on the device that searches them (None: FAISS searches)
        self.accel = accel

    @property
    def device(self) -> str:
        """Where searches run: ``faiss-gpu``, ``torch:cuda`` / ``torch:cpu`` or ``cpu``."""
        if self.accel is not None:
            return f"torch:{self.accel.device.type}"
        return "faiss-gpu" if "Gpu" in type(self.index).__name__ else "cpu"

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, factory: str = DEFAULT_FACTORY) -> DenseIndex:
        """Build from float32 (n, d) vectors with ``faiss.index_factory(d, factory, METRIC_INNER_PRODUCT)``."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise HylexError(f"dense vectors must be a 2-D array (n, dim), got shape {x.shape}")
        try:
            index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise HylexError(f"FAISS cannot build index {factory!r}: {str(e).splitlines()[0]}. Use a valid "
                             f"index-factory string such as Flat, HNSW32, IVF256,Flat or IVF256,PQ16") from e
        if not index.is_trained:
            if len(x) == 0:
                raise HylexError(f"FAISS index {factory!r} needs training vectors: index documents first")
            logger.info("training FAISS %s on %d vectors", factory, len(x))
            try:
                index.train(x)
            except RuntimeError as e:
                raise HylexError(f"FAISS cannot train {factory!r} on {len(x)} vectors: {str(e).splitlines()[0]}."
                                 f" Use fewer clusters or Flat") from e
        if len(x):
            index.add(x)
        return cls(index, factory)

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (D float32 (nq, k), I int64 (nq, k)) with ``I == -1`` for a missing hit.

        ``allowed``: optional bool (ntotal,) mask; only those vectors can be hits (tombstones, filters), applied
        before top-k selection: for an exact CPU Flat index with a batch of at least ``FLAT_BLAS_MIN_QUERIES``
        queries by BLAS (over-fetching through FAISS when most rows are allowed, else
        :func:`~hylex.kernels.dense.flat_topk` over the allowed rows only); otherwise inside FAISS's search (an
        ``IDSelectorBitmap``). Where an approximate index still comes back with fewer than
        ``min(k, allowed.sum())`` hits, those queries are searched exhaustively (IVF with every list probed;
        others on the allowed vectors' stored copies).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq = len(q)
        empty = (np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64))
        if self.ntotal == 0:
            return empty
        if self.accel is not None:  # exact, on the device; the mask applied before top-k
            return self.accel.search(q, k, allowed)
        flat = self._flat_vectors() if nq >= FLAT_BLAS_MIN_QUERIES else None
        if allowed is None:
            if flat is not None:
                with _faiss_blas():
                    D, I = self.index.search(q, k)
            else:
                D, I = self.index.search(q, k)
            D[I < 0] = -np.inf
            return D, I
        allowed = np.asarray(allowed, dtype=bool)
        n_ok = int(allowed.sum())
        if n_ok == 0:
            return empty
        if n_ok == self.ntotal:
            return self.search(q, k)
        if flat is not None:
            if n_ok * 2 >= self.ntotal:  # most rows allowed: FAISS's BLAS search, over-fetching past masked hits
                with _faiss_blas():
                    return self._overfetch(q, k, allowed)
            return flat_topk(q, flat, k, allowed)  # few allowed: only their products
        params = _selector_params(self.index, allowed)
        if params is None:  # an index type without selector support (GPU indexes, wrappers): over-fetch
            D, I = self._overfetch(q, k, allowed)
        else:
            D, I = self.index.search(q, k, params=params[0])
        D[I < 0] = -np.inf
        short = np.flatnonzero((I >= 0).sum(1) < min(k, n_ok))
        if len(short):
            D[short], I[short] = self._exhaustive(q[short], k, allowed)
        return D, I

    def _flat_vectors(self) -> np.ndarray | None:
        """A read-only float32 (ntotal, d) view of an exact CPU inner-product index's vectors (None otherwise):
        masked batches go through :func:`hylex.kernels.dense.flat_topk` (BLAS by blocks) with it."""
        index = self.index
        if type(index) is not faiss.IndexFlatIP or self.ntotal == 0:
            return None
        return faiss.rev_swig_ptr(index.get_xb(), self.ntotal * self.dim).reshape(self.ntotal, self.dim)

    def _overfetch(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nq = len(q)
        D_out = np.full((nq, k), -np.inf, np.float32)
        I_out = np.full((nq, k), -1, np.int64)
        todo, kk = np.arange(nq), min(self.ntotal, 4 * k)
        while len(todo):
            D, I = self.index.search(q[todo], kk)
            again = []
            for r, qi in enumerate(todo):
                ok = (I[r] >= 0) & allowed[np.maximum(I[r], 0)]
                if ok.sum() < k and kk < self.ntotal:
                    again.append(qi)
                    continue
                n = min(k, int(ok.sum()))
                D_out[qi, :n], I_out[qi, :n] = D[r][ok][:n], I[r][ok][:n]
            todo, kk = np.asarray(again, dtype=np.int64), min(self.ntotal, kk * 4)
        return D_out, I_out

    def _exhaustive(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.flatnonzero(allowed)
        ivf = _ivf(self.index)
        if ivf is not None:
            params = _selector_params(self.index, allowed, nprobe=ivf.nlist)
            if params is not None:
                D, I = self.index.search(q, k, params=params[0])
                D[I < 0] = -np.inf
                return D, I
        vecs = self.reconstruct(ids)
        if vecs is None:
            return self._overfetch(q, k, allowed)
        scores = q @ vecs.T
        kk = min(k, len(ids))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        D = np.full((len(q), k), -np.inf, np.float32)
        I = np.full((len(q), k), -1, np.int64)
        D[:, :kk] = np.take_along_axis(scores, top, 1)
        I[:, :kk] = ids[top]
        return D, I

    def vectors(self) -> np.ndarray | None:
        """Every stored vector, float32 (ntotal, d), or None where the index type cannot give them back."""
        ivf = _ivf(self.index)
        try:
            if ivf is not None:
                ivf.make_direct_map()
            return self.index.reconstruct_n(0, self.ntotal)
        except RuntimeError:
            return None

    def reconstruct(self, rows: np.ndarray) -> np.ndarray | None:
        """Stored vectors of local ``rows`` (float32 (n, d)), or None where the index type cannot return them."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        ivf = _ivf(self.index)
        try:
            if ivf is not None:
                ivf.make_direct_map()
            return self.index.reconstruct_batch(rows)
        except RuntimeError:
            return None

    def save(self, path: str | os.PathLike) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike, factory: str = DEFAULT_FACTORY, mmap: bool = True) -> DenseIndex:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError:  # not every index type supports mmap: read it into memory instead
            index = faiss.read_index(str(path))
        return cls.placed(index, factory)

    @classmethod
    def placed(cls, index: faiss.Index, factory: str = DEFAULT_FACTORY) -> DenseIndex:
        """``index`` where :func:`dense_placement` says searches run: moved to FAISS's GPUs, its vectors copied to
        torch's device (exact Flat only), or as it is."""
        where = dense_placement()
        if where["device"].startswith("torch:"):
            dense = cls(index, factory)
            vectors = dense._flat_vectors()  # None unless an exact, non-empty Flat index
            if vectors is not None:
                from hylex.indexing.torch_flat import TorchFlat

                dense.accel = TorchFlat(vectors, where["device"].split(":", 1)[1], where["torch_dtype"])
            return dense
        return cls(to_gpu(index), factory)


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def _selector_params(index: faiss.Index, allowed: np.ndarray, nprobe: int | None = None):
    """FAISS search parameters restricting hits to ``allowed`` (bool (ntotal,)), or None where the index type
    does not take a selector. Returns ``(params, selector, bitmap)``: params hold raw pointers to the other two,
    which must stay referenced until the search returns."""
    bits = np.packbits(allowed, bitorder="little")  # IDSelectorBitmap reads bit i at byte i >> 3, bit i & 7
    sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    name = type(index).__name__
    if "Gpu" in name:
        return None
    if isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe or index.nprobe, max_codes=index.max_codes)
    elif isinstance(index, faiss.IndexFlat):
        params = faiss.SearchParameters(sel=sel)
    else:
        return None
    return params, sel, bits
