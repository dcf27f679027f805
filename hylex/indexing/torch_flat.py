"""Exact inner-product search with torch: what a Flat index runs on a GPU when no FAISS GPU build can (none
installed, or its probe failed: the PyPI faiss-gpu-cu12 wheels have no Hopper kernels and abort there).

``scores = queries @ vectors.T`` by blocks of rows, each block's top-k merged into a running top-k, on any torch
device: the tests run the same code on the CPU. Vectors can be stored in float16 or bfloat16 (half the memory);
every block is multiplied in float32, so scores keep float32 accumulation.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from hylex.errors import HylexError

logger = logging.getLogger(__name__)

STORAGE_DTYPES = ("float32", "float16", "bfloat16")
SCORE_BYTES = 1 << 28  # scores of one (query block x row block) product: 256 MiB of float32


class TorchFlat:
    """Exact top-k inner product over ``vectors`` on a torch device.

    Args:
        vectors: float32 (n, d).
        device: a torch device (``cuda``, ``cuda:1``, ``cpu``).
        dtype: how the vectors are stored on the device: ``float32`` (scores equal FAISS's up to float rounding),
            ``float16`` or ``bfloat16`` (half the memory; the vectors are rounded, the products are float32).
    """

    def __init__(self, vectors: np.ndarray, device: str = "cuda", dtype: str = "float32"):
        import torch

        if dtype not in STORAGE_DTYPES:
            raise HylexError(f"torch Flat storage dtype {dtype!r} is unknown: choose one of "
                             f"{', '.join(STORAGE_DTYPES)}")
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise HylexError(f"dense vectors must be a 2-D array (n, dim), got shape {x.shape}")
        self.device = torch.device(device)
        self.dtype = dtype
        with warnings.catch_warnings():  # a memory-mapped index's vectors are read-only; they are never written
            warnings.simplefilter("ignore", UserWarning)
            self.vectors = torch.from_numpy(x).to(device=self.device, dtype=getattr(torch, dtype))
        self.n, self.dim = x.shape

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: ``(D float32 (nq, k), I int64 (nq, k))``, best first, ``-inf`` / ``-1`` past
        the hits there are. ``allowed``: optional bool (n,): only those rows can be hits."""
        import torch

        q_np = np.ascontiguousarray(queries, dtype=np.float32)
        nq = len(q_np)
        D = np.full((nq, k), -np.inf, np.float32)
        I = np.full((nq, k), -1, np.int64)
        if nq == 0 or self.n == 0 or k <= 0:
            return D, I
        if q_np.ndim != 2 or q_np.shape[1] != self.dim:
            raise HylexError(f"queries must be (nq, {self.dim}), got shape {q_np.shape}")
        mask = None
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (self.n,):
                raise HylexError(f"allowed must be a bool array of shape ({self.n},), got {allowed.shape}")
            if not allowed.any():
                return D, I
            mask = torch.from_numpy(allowed).to(self.device)
        q_rows = max(1, min(nq, 4096))
        block = max(1024, SCORE_BYTES // (4 * q_rows))
        kk = min(k, self.n)
        with torch.inference_mode():
            for q0 in range(0, nq, q_rows):
                q = torch.from_numpy(q_np[q0:q0 + q_rows]).to(self.device)
                best_d = best_i = None
                for r0 in range(0, self.n, block):
                    rows = self.vectors[r0:r0 + block]
                    s = q @ (rows if self.dtype == "float32" else rows.float()).T  # (q_rows, rows) float32
                    if mask is not None:
                        s.masked_fill_(~mask[r0:r0 + block][None, :], float("-inf"))
                    d, i = torch.topk(s, min(kk, s.shape[1]), dim=1)
                    i += r0
                    if best_d is not None:  # merge with the running top-k
                        d, pos = torch.topk(torch.cat((best_d, d), 1), min(kk, best_d.shape[1] + d.shape[1]), dim=1)
                        i = torch.gather(torch.cat((best_i, i), 1), 1, pos)
                    best_d, best_i = d, i
                d, i = best_d.cpu().numpy(), best_i.cpu().numpy()
                hit = np.isfinite(d)
                D[q0:q0 + q_rows, :kk] = np.where(hit, d, -np.inf)
                I[q0:q0 + q_rows, :kk] = np.where(hit, i, -1)
        return D, I
