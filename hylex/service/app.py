"""The HTTP retrieval service: a FastAPI app over one index (``hylex serve DIR``).

Endpoints (JSON in and out; an OpenAPI schema at ``/openapi.json``, docs at ``/docs``):

* ``POST /search``: query texts, or pre-encoded ``dense`` / ``sparse`` vectors; ``k``, ``mode``, fusion and its
  parameters, a metadata ``filter``; hits with ids, scores and (by default) the stored documents;
* ``POST /documents``: upsert a batch (encoded by the index's model); answered once the batch is committed;
* ``DELETE /documents``: by ``ids`` or by ``filter``; ``GET /documents/{id}``;
* ``GET /stats``, ``GET /health``.

Every client mistake is a 4xx with ``{"error": "..."}`` naming what was wrong (400 for a bad value, 401 for a
missing or wrong API key, 404 for an unknown document, 413 for a body over the limit, 422 for a body that does
not match the schema). With ``api_key`` set, requests must carry it in the ``X-API-Key`` header: for writes
only (``auth="writes"``, the default) or for everything (``auth="all"``). No endpoint takes a file path.

One app serves one index in one process (``hylex serve --workers N`` runs N such processes on one socket,
:mod:`hylex.service.workers`). Query texts of concurrent searches are encoded together (micro-batching,
:class:`~hylex.service.batching.QueryBatcher`, on the model's thread: the event loop never runs the model; a
full queue answers 503 with Retry-After). Searches and commits run on that same thread, one after another (a
commit is seen whole by the next search); each search still uses the process's cores (numba, BLAS).

Writes take the index's writer lock per commit: waiting for it happens off the model thread (searches go on),
up to ``write_wait`` seconds (then 503 with Retry-After), and the lock is released as soon as the commit is
durable, so other workers and other processes (``hylex index --upsert``) can write between this service's
writes. Before every read the service takes up what others committed (one ``stat`` when nothing changed).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import logging
import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import lmdb
import numpy as np
import scipy.sparse as sp
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException

import hylex
from hylex.corpus import Document, check_id, clean_text
from hylex.errors import HylexError, IndexLockedError, ResultTooLargeError
from hylex.indexing.bm25 import MAX_K1
from hylex.indexing.index import Index
from hylex.retrieval.filters import check_filter, delete_where
from hylex.retrieval.fusion import MAX_WEIGHT
from hylex.retrieval.searcher import MAX_DENSE_NORM, Searcher, document_bytes
from hylex.service.batching import Busy, QueryBatcher, TooMuchWork
from hylex.service.limits import (
    DEFAULT_MAX_HITS,
    DEFAULT_MAX_QUERY_CHARS,
    DEFAULT_MAX_RESPONSE_MB,
    RequestLimits,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 16 * 2**20
DEFAULT_MAX_BATCH = 1024
DEFAULT_WRITE_WAIT = 10.0
# a search's queries are searched in groups of this many, the request's deadline checked between groups
SEARCH_GROUP = 64
# an upsert's documents are encoded this many at a time, so that query batches are not held up behind a whole batch
UPSERT_GROUP = 8
_CALIBRATION_WORDS = ("cell protein gene study patients risk effect treatment human blood cancer expression level "
                      "increase reduce response function mouse model data analysis cause disease infection brain "
                      "drug dose age women children heart liver lung kidney immune virus bacteria growth factor "
                      "signal pathway receptor tissue therapy trial survival mortality diet exercise sleep stress "
                      "how does what why when which is are can the of in to with without after before during").split()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a client mistake, not silently ignored


def _json_number(value: Any) -> Any:
    # pydantic's lax mode takes true / false for 1 / 0 and "3" for 3; the schema says number (and 3.0 stays an
    # integer, as JSON Schema has it)
    if isinstance(value, (bool, str)):
        raise ValueError("must be a JSON number")
    return value


Number = Annotated[float, BeforeValidator(_json_number)]
Integer = Annotated[int, BeforeValidator(_json_number)]


class SearchRequest(_Model):
    queries: list[str] | None = Field(None, description="query texts (encoded with the index's model)", min_length=1)
    dense: list[list[Number]] | None = Field(None, description="pre-encoded dense queries (n, dim)", min_length=1)
    sparse: list[dict[str, Number]] | None = Field(
        None, description="pre-encoded sparse queries: per query {vocabulary id: weight}", min_length=1)
    bm25_queries: list[str] | None = Field(None, description="texts for the bm25 arm with pre-encoded vectors",
                                           min_length=1)
    k: Integer = Field(10, ge=1, le=1000)
    mode: Literal["dense", "sparse", "bm25", "hybrid"] = "hybrid"
    arms: list[Literal["dense", "sparse", "bm25"]] | None = None
    weights: list[Number] | None = None
    fusion: Literal["convex", "rrf"] | None = Field(
        None, description="convex (default) or rrf; with no arms, weights, alpha or fusion a hybrid search uses the "
                          "index's stored fusion (GET /stats: default_fusion)")
    alpha: Number | None = None
    rrf_k: Number = 60.0
    depth: Integer = Field(1000, ge=1, le=10000)
    k1: Number | None = Field(None, description="BM25 k1 in (0, 1000] (default: the index's)")
    b: Number | None = Field(None, description="BM25 b in [0, 1] (default: the index's)")
    query_cut: Integer | None = Field(None, description="approximate sparse search: query terms searched")
    heap_factor: Number = Field(1.0, description="approximate sparse search: >= 1 (1 is exact)")
    candidates: Integer | None = Field(None, description="approximate sparse search: candidates scored exactly")
    filter: dict[str, Any] | None = None
    # strict: 0, 1 or "true" are refused (422), not taken for booleans
    with_documents: StrictBool = True
    explain: StrictBool = Field(False, description="each hit's per-arm scores and the terms behind them")


class Hit(BaseModel):
    rank: int
    id: str
    score: float
    title: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None
    explain: dict[str, Any] | None = None


class QueryResult(BaseModel):
    query: str | None
    hits: list[Hit]


class SearchResponse(BaseModel):
    results: list[QueryResult]


class DocumentIn(_Model):
    id: str = Field(min_length=1)
    text: str
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class UpsertRequest(_Model):
    documents: list[DocumentIn] = Field(min_length=1)


class UpsertResponse(BaseModel):
    committed: int
    documents: int


class DeleteRequest(_Model):
    """Exactly one of ``ids``, ``filter`` (non-empty) or ``all: true``."""

    ids: list[str] | None = Field(None, description="ids to delete", min_length=1)
    filter: dict[str, Any] | None = Field(None, description="a non-empty metadata filter ({} is refused: use all)")
    all: StrictBool | None = Field(None, description="true deletes every document (an empty filter is refused)")
    dry_run: StrictBool = Field(False, description="true only counts the documents the request would delete: "
                                                   "nothing is deleted (deleted is that count)")


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and how to fix it")


def _errors(*codes: int) -> dict:
    """OpenAPI ``responses`` for the error statuses a route can answer, each with the ``{"error"}`` body."""
    what = {400: "a bad value (named in the error)", 401: "missing or wrong API key (X-API-Key)",
            404: "no such document", 413: "request body, batch, query text, hits or response over the limit "
                                          "(the error names the option that raises it)",
            415: "the body is not JSON (send Content-Type: application/json)",
            422: "the body does not match the schema", 503: "busy or another writer holds the index: retry "
                                                              "after Retry-After seconds",
            507: "no space left on the index's disk: nothing of the write was committed"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


class DeleteResponse(BaseModel):
    deleted: int = Field(description="documents deleted (with dry_run: that would be deleted)")
    documents: int = Field(description="live documents after the request (with dry_run: unchanged)")


class ServiceError(HylexError):
    """A client mistake with its HTTP status."""

    def __init__(self, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


class Service:
    """The index, the encoder and the locks behind the app."""

    def __init__(self, index_dir: str | Path, encoder=None, encoder_kwargs: dict | None = None,
                 write_wait: float = DEFAULT_WRITE_WAIT, worker: dict | None = None):
        self.path = Path(index_dir)
        self.index = Index.open(self.path)  # checks the index now: a bad directory fails at startup
        self._encoder = encoder
        self._encoder_kwargs = encoder_kwargs or {}
        self.write_wait = float(write_wait)
        self.worker = dict(worker or {})  # {"worker": i, "workers": n} under hylex serve --workers
        self.lock = threading.Lock()  # searches, reads and commits take turns on the index handle
        self.encoder_lock = threading.Lock()  # the encoder serves one call at a time (batches and upserts)
        self.write_gate = asyncio.Lock()  # one write of this process at a time waits for the index's lock
        self.searcher = Searcher(self.index, encoder=encoder, **self._encoder_kwargs)
        self.batcher: QueryBatcher | None = None
        # without batching, searches and commits run on this one thread: numba's OpenMP layer keeps a thread
        # team per calling thread, and each request thread would start (and spin) its own
        self.search_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hylex-search")

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self.searcher.encoder  # loaded lazily from the index's recorded settings
        return self._encoder

    async def run(self, fn):
        """Run index work (a search, a commit) on the model's thread when batching (between query batches: torch
        and numba then share one thread's OpenMP teams; a numba team started by another thread made encoding 2x
        slower here), else on the one search thread."""
        if self.batcher is not None:
            return await self.batcher.call(fn, kind="commit")
        return await asyncio.get_running_loop().run_in_executor(self.search_thread, fn)

    async def write(self, fn):
        """Commit ``fn(index)`` under the index's writer lock: waited for on a pool thread (searches go on), the
        commit on the model's thread, the lock released once it is durable. A write that has started finishes
        even if its request is cancelled (shielded): nothing is half-applied."""
        return await asyncio.shield(asyncio.ensure_future(self._write(fn)))

    async def _write(self, fn):
        async with self.write_gate:
            try:
                await run_in_threadpool(self.index.acquire_writer, self.write_wait)
            except IndexLockedError as e:
                raise ServiceError(f"{e}; retry shortly", 503, {"Retry-After": "1"}) from None
            try:
                def commit():
                    with self.lock, self.index.writing() as ix:
                        return fn(ix)
                try:
                    return await self.run(commit)
                except (OSError, lmdb.Error) as e:
                    # a write is answered by what happened to it: the library raises only before the commit point
                    # (a full disk is a StorageFullError, 507); anything else unforeseen was not committed either
                    logger.warning("a write to %s failed and was not committed: %r", self.path, e)
                    raise ServiceError(f"the write failed and nothing of it was committed ({type(e).__name__}: "
                                       f"{e}): retry later", 503, {"Retry-After": "5"}) from None
            finally:
                self.index.release_writer()

    def current(self) -> Index:
        """The index, up to date: takes up commits made by other processes and workers (one stat if none)."""
        self.index.refresh()
        return self.index

    def encode_queries(self, texts: list[str]):
        enc = self.encoder
        if self.batcher is not None:
            self.token_costs(enc)
        return enc.encode_queries(texts)

    def token_costs(self, enc=None) -> None:
        """Tell the batcher what a query text costs a forward pass: its tokens (counted by the model's tokenizer
        once loaded), the prompt's tokens each row computes on top, and the cap where the encoder truncates (from
        the encoder once loaded, else the index's recorded max_length). Other encoders: characters / 4, no
        prompt, no cap."""
        b = self.batcher
        if b is None:
            return
        if enc is not None:
            if hasattr(enc, "row_tokens"):  # hylex's encoder: the prompt's tokens a pass computes, the text's cap
                prompt, text_cap = enc.row_tokens("query")
                b.prompt_tokens, b.max_tokens = prompt, prompt + text_cap
            counter = _token_counter(getattr(enc, "tokenizer", None), b.max_tokens)
            if counter is not None:
                b.count_tokens = counter
        else:  # the index's own model, loaded on first use: its recorded max_length (the encoder's default if none)
            from hylex.engine.config import EncoderConfig

            settings = self.index.encoder_info.get("settings") or {}
            cap = settings.get("max_length", EncoderConfig.max_length)
            b.max_tokens = int(cap) if isinstance(cap, int) else None

    def calibrate(self, n: int = 64) -> None:
        """Time query encoding before serving (once alone, then in full batches), so admission starts from this
        machine's measured speed. The texts are random words: they miss the encoding cache."""
        if self.batcher is None:
            return
        enc = self.encoder
        self.token_costs(enc)
        rng = random.Random()
        # lengths spread like typed queries (median 12 words, a long tail): passes are padded as real ones are
        texts = [" ".join(rng.choice(_CALIBRATION_WORDS) for _ in range(min(60, max(3, round(
            rng.lognormvariate(math.log(12), 0.5)))))) for _ in range(n)]
        cache = getattr(enc, "encoding_cache", None)
        try:
            if cache is not None:
                enc.encoding_cache = None  # timed as served, and the cache kept free of made-up texts
            self.batcher.calibrate(texts)
        finally:
            if cache is not None:
                enc.encoding_cache = cache

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.search_thread.shutdown(wait=True)
        self.index.close()


def _token_counter(tokenizer, cap: int | None):
    """``text -> its token count`` on a private copy of the model's ``tokenizers`` tokenizer (the admission
    counts on the event loop while the model thread tokenizes; transformers' tokenizers mutate their state per
    call), reading at most the characters that can fit ``cap`` tokens, as the encoder does; None without one.
    Real counts, not characters / 4: scientific text has ~1.5x the tokens per character of plain words, which
    made the cost measured on one kind of text wrong for another."""
    backend = getattr(tokenizer, "_tok", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(backend.to_str())
    counter.no_truncation()
    counter.no_padding()
    clip = None if cap is None else 12 * cap  # about the encoder's own cut before tokenizing (Encoder._units)
    return lambda text: len(counter.encode(text[:clip], add_special_tokens=False).ids)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware counting the request body's bytes as they arrive: past ``limit`` it answers 413 at once
    and stops reading, whatever ``Content-Length`` said (chunked bodies included). It sits outside every other
    layer, so the 413 is the only response sent."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def _reject(self, send, status: int, message: str) -> None:
        body = JSONResponse({"error": message}).body
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"request body over the limit of {self.limit} bytes: send smaller batches"
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await self._reject(send, 400, "Content-Length is not a number of bytes")
            if int(length) > self.limit:
                return await self._reject(send, 413, too_big)
        seen, state = 0, {"started": False, "rejected": False}

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if not state["started"]:
                        await self._reject(send, 413, too_big)
                        state["rejected"] = True
                    raise _TooLarge
            return message

        async def guarded(message):
            if state["rejected"]:
                return  # the 413 went out: whatever the app tries after it is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            pass
        except Exception:
            # the app's catch-all has answered (and logged) whatever it could catch; anything else is answered
            # here, never with the server's plain-text 500
            if state["started"] or state["rejected"]:
                return
            logger.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            await self._reject(send, 500, "internal error: the server logged it; please report it")


class _App(FastAPI):
    """FastAPI with :class:`BodyLimit` outermost (outside Starlette's error middleware)."""

    body_limit: int = DEFAULT_MAX_BODY

    def build_middleware_stack(self):
        return BodyLimit(super().build_middleware_stack(), self.body_limit)


def _offline_docs(app: FastAPI) -> None:
    """``/docs`` from the swagger-ui assets of the ``swagger-ui-bundle`` package: no CDN, works offline."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    try:
        import swagger_ui_bundle
    except ImportError:  # pragma: no cover  (a runtime dependency; without it /docs is absent, /openapi.json stays)
        logger.warning("swagger-ui-bundle is not installed: /docs is off (the schema is at /openapi.json)")
        return
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="hylex API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")


def _security_scheme(app: FastAPI, keyed: bool, auth: str) -> None:
    """Declare the ``X-API-Key`` header scheme in the OpenAPI schema, on the routes it protects."""
    if not keyed:
        return
    base = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["ApiKey"] = {
            "type": "apiKey", "in": "header", "name": "X-API-Key"}
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                write = method in ("post", "put", "delete") and path != "/search"
                if path != "/health" and (auth == "all" or write):
                    op["security"] = [{"ApiKey": []}]
                    op.setdefault("responses", {}).setdefault("401", {
                        "description": "missing or wrong API key (X-API-Key)",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


_ID = {"type": "string", "minLength": 1, "maxLength": 511, "pattern": r"\S",
       "description": "1 to 511 UTF-8 bytes, not only whitespace"}
_NONBLANK = {"type": "string", "pattern": r"\S", "description": "not empty or only whitespace"}
_F32_MAX = float(np.finfo(np.float32).max)


def _dense_component_max(dim: int) -> float:
    """The largest dense query component over HTTP: with every component within it the norm is at most
    MAX_DENSE_NORM, the library's rule, which a JSON Schema cannot state (issue 40: the rule the schema did not
    state was most of the 400s Schemathesis got for schema-valid searches)."""
    return MAX_DENSE_NORM / float(np.sqrt(max(1, dim)))
_SCALAR = {"type": ["string", "number", "boolean", "null"]}


def _below(n: int) -> str:
    """A regex for the decimal integers 0 .. n - 1 (no leading zeros)."""
    top = str(n - 1)
    alts = [f"[1-9][0-9]{{0,{len(top) - 2}}}" if len(top) > 2 else ("[1-9]" if len(top) == 2 else "")]
    alts = ["0"] + [a for a in alts if a]
    for i, ch in enumerate(top):  # numbers of len(top) digits that are <= top
        rest = len(top) - i - 1
        lo = "1" if i == 0 else "0"
        if int(ch) > int(lo):
            alts.append(f"{top[:i]}[{lo}-{int(ch) - 1}]" + ("[0-9]" * rest))
    alts.append(top)
    return "^(" + "|".join(dict.fromkeys(alts)) + ")$"


def _nonnull(schema: dict, name: str, sub: dict) -> None:
    """Replace the non-null branch of property ``name`` (``X | None``) by ``sub``, keeping null allowed."""
    prop = schema["properties"][name]
    keep = {k: v for k, v in prop.items() if k in ("title", "description", "default")}
    if "anyOf" in prop:
        schema["properties"][name] = {**keep, "anyOf": [sub, {"type": "null"}]}
    else:
        schema["properties"][name] = {**keep, **sub}


def _contract(app: FastAPI, max_batch: int, dim: int, vocab: int, n_default_arms: int = 2,
              max_query_chars: int = DEFAULT_MAX_QUERY_CHARS) -> None:
    """Write into the OpenAPI schema the rules pydantic does not state: id and text shapes, the batch and query
    length limits, the index's dimension and vocabulary, which of ids / filter / all a delete takes.
    A client (or Schemathesis) generating from the schema then sends requests the service accepts."""
    base = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        comp = schema.get("components", {}).get("schemas", {})
        filt = {"type": "object", "propertyNames": {"pattern": "^[^$]"}, "additionalProperties": _SCALAR,
                "description": "field: value equality; operators ($in, $gte, $and, ...) are documented in the "
                               "README"}
        s = comp.get("SearchRequest")
        if s:
            texts = {"type": "array", "items": {**_NONBLANK, "maxLength": max_query_chars}, "minItems": 1,
                     "maxItems": max_batch}
            _nonnull(s, "queries", texts)
            _nonnull(s, "bm25_queries", texts)
            f32 = float(np.finfo(np.float32).max)  # vectors are float32: a larger number would be infinite
            top = _dense_component_max(dim)
            _nonnull(s, "dense", {"type": "array", "minItems": 1, "maxItems": max_batch, "items": {
                "type": "array", "items": {"type": "number", "minimum": -top, "maximum": top}, "minItems": dim,
                "maxItems": dim}})
            _nonnull(s, "sparse", {"type": "array", "minItems": 1, "maxItems": max_batch, "items": {
                "type": "object", "propertyNames": {"pattern": _below(vocab)},
                "additionalProperties": {"type": "number", "minimum": 0, "maximum": f32}}})
            _nonnull(s, "arms", {"type": "array", "items": {"enum": ["dense", "sparse", "bm25"]}, "minItems": 1,
                                 "maxItems": 3, "uniqueItems": True})
            _nonnull(s, "weights", {"type": "array", "items": {"type": "number", "minimum": 0,
                                                               "maximum": MAX_WEIGHT}, "minItems": 1, "maxItems": 3})
            _nonnull(s, "alpha", {"type": "number", "minimum": 0, "maximum": 1})
            _nonnull(s, "filter", filt)
            s["properties"]["rrf_k"].update({"minimum": 0})
            for name in ("k1", "b"):
                if name in s["properties"]:
                    _nonnull(s, name, {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_K1}
                             if name == "k1" else {"type": "number", "minimum": 0, "maximum": 1})
            for name in ("query_cut", "candidates"):
                if name in s["properties"]:
                    _nonnull(s, name, {"type": "integer", "minimum": 1})
            if "heap_factor" in s["properties"]:
                s["properties"]["heap_factor"].update({"minimum": 1})
            none, arr = {"type": "null"}, {"type": "array"}
            s["anyOf"] = [  # query texts alone, or pre-encoded vectors (and bm25 texts) without them
                {"required": ["queries"], "properties": {"dense": none, "sparse": none, "bm25_queries": none}},
                {"properties": {"queries": none}, "anyOf": [  # each searched arm needs its input
                    {"required": ["mode", "dense"], "properties": {"mode": {"const": "dense"}, "dense": arr}},
                    {"required": ["mode", "sparse"], "properties": {"mode": {"const": "sparse"}, "sparse": arr}},
                    {"required": ["mode", "bm25_queries"], "properties": {"mode": {"const": "bm25"},
                                                                          "bm25_queries": arr}},
                    {"required": ["dense", "sparse", "bm25_queries"],
                     "properties": {"dense": arr, "sparse": arr, "bm25_queries": arr}},
                    # vectors without bm25 texts and no arms: dense and sparse fused (Searcher.resolve_fusion).
                    # (A hybrid search naming its arms, each with its input, is answered too; the branches stating
                    # it left Schemathesis unable to generate any search, so it stays unstated.)
                    {"required": ["dense", "sparse"], "properties": {"mode": {"const": "hybrid"}, "arms": none,
                                                                    "dense": arr, "sparse": arr}}]}]
            s["examples"] = [  # valid on any index (also what Schemathesis' examples phase sends first)
                {"queries": ["parse json"], "k": 3},
                {"queries": ["star planet", "how to bake bread"], "mode": "bm25", "k": 10, "with_documents": False},
                {"queries": ["volcano"], "arms": ["sparse", "bm25"], "weights": [0.4, 0.6], "k": 5, "explain": True},
                {"queries": ["galaxy"], "fusion": "rrf", "k": 20, "filter": {"lang": "en"}}]
            s["not"] = {"required": ["alpha", "weights"], "properties": {"alpha": {"type": "number"},
                                                                        "weights": {"type": "array"}}}
            s["properties"]["weights"]["anyOf"][0]["contains"] = {"type": "number", "exclusiveMinimum": 0}
            s["allOf"] = [
                {"anyOf": [  # one weight per arm (the default arms: the stored fusion's)
                    {"properties": {"weights": none}},
                    {"properties": {"arms": none, "weights": {"minItems": n_default_arms,
                                                              "maxItems": n_default_arms}}},
                    *({"required": ["arms"], "properties": {"arms": {"type": "array", "minItems": n, "maxItems": n},
                                                            "weights": {"minItems": n, "maxItems": n}}}
                      for n in (1, 2, 3))]},
                {"anyOf": [  # alpha weighs dense against sparse in a convex hybrid fusion
                    {"properties": {"alpha": none}},
                    {"required": ["mode"], "properties": {"mode": {"enum": ["dense", "sparse", "bm25"]}}},
                    {"required": ["fusion"], "properties": {"fusion": {"const": "rrf"}}},
                    {"properties": {"arms": none}},
                    {"required": ["arms"], "properties": {"arms": {"type": "array", "maxItems": 2, "allOf": [
                        {"contains": {"const": "dense"}}, {"contains": {"const": "sparse"}}]}}}]}]
        d = comp.get("DocumentIn")
        if d:
            d["properties"]["id"] = {**_ID, "title": "Id"}
            d["description"] = ("a document; a blank text and title are accepted (as by hylex index and "
                                "Index.upsert): stored, found by id, with no sparse or BM25 terms")
            d["examples"] = [{"id": "doc-1", "title": "JSON", "text": "Parsing JSON in Python with json.loads.",
                              "metadata": {"lang": "en"}}]
        u = comp.get("UpsertRequest")
        if u:
            u["properties"]["documents"]["maxItems"] = max_batch
        r = comp.get("DeleteRequest")
        if r:
            _nonnull(r, "ids", {"type": "array", "items": _ID, "minItems": 1, "maxItems": max_batch})
            _nonnull(r, "filter", {**filt, "minProperties": 1})
            _nonnull(r, "all", {"const": True})
            r["oneOf"] = [{"required": [n], "properties": {n: {"not": {"type": "null"}}}}
                          for n in ("ids", "filter", "all")]
        for path, ops in schema.get("paths", {}).items():
            if path.startswith("/documents"):
                for param in ops.get("get", {}).get("parameters", []):
                    if param.get("name") in ("id", "doc_id"):
                        param["schema"] = {**_ID, "title": param["schema"].get("title", "Id")}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def _allowed(app: FastAPI, scope: dict) -> list[str]:
    """The methods some route of ``app`` serves at the request's path (the ``Allow`` header of a 405)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            probe = next(iter(route.methods))
            if route.matches({**scope, "method": probe})[0] == Match.FULL:
                methods |= set(route.methods)
    return sorted(methods)


def _hits(res, queries: list[str] | None, with_documents: bool) -> list[QueryResult]:
    out = []
    for q, hits in enumerate(res.to_list()):
        items = []
        for h in hits:
            extra = {key: h.get(key) for key in ("title", "text", "metadata")} if with_documents else {}
            items.append(Hit(rank=h["rank"], id=h["id"], score=h["score"], explain=h.get("explain"), **extra))
        out.append(QueryResult(query=queries[q] if queries else None, hits=items))
    return out


def create_app(index_dir: str | Path, *, encoder=None, api_key: str | None = None, auth: str = "writes",
               max_body_bytes: int = DEFAULT_MAX_BODY, max_batch: int = DEFAULT_MAX_BATCH,
               batching: bool = True, batch_wait_ms: float = 5.0, max_queue: int = 1024,
               model_thread: bool = True, encoder_kwargs: dict | None = None,
               write_wait: float = DEFAULT_WRITE_WAIT, worker: dict | None = None, max_batch_tokens: int = 2048,
               request_timeout: float | None = 30.0, max_hits: int = DEFAULT_MAX_HITS,
               max_response_bytes: int = int(DEFAULT_MAX_RESPONSE_MB * 2**20),
               max_query_chars: int = DEFAULT_MAX_QUERY_CHARS) -> FastAPI:
    """The FastAPI app serving ``index_dir``.

    Args:
        encoder: an encoder for query and document texts (default: the index's model, loaded on first use).
        api_key: when set, the ``X-API-Key`` header must carry it (for writes, or for all requests).
        auth: ``writes`` or ``all``: what the API key protects.
        max_body_bytes: larger request bodies get 413.
        max_batch: most queries or documents per request.
        batching: encode the query texts of concurrent searches together (one forward pass per batch), waiting
            at most ``batch_wait_ms`` for companions; off, each request encodes its own texts.
        max_queue: most query texts waiting to be encoded; beyond it searches get 503 with Retry-After.
        model_thread: run the model work (query batches, document encoding) on a thread of the app's own;
            False leaves ``app.state.service.batcher.run()`` to the caller (``hylex serve`` runs it on the main
            thread, where torch encodes ~2x faster here, with the server on another thread). Needs batching.
        write_wait: seconds a write waits for the index's writer lock held by another process (then 503).
        max_batch_tokens: most (estimated) tokens per query forward pass; requests are answered batch by batch.
        request_timeout: seconds a search may wait for its query encoding (None: no limit); a search that cannot
            make it is refused at once with 503 + Retry-After, one whose time runs out while queued likewise.
        worker: ``{"worker": i, "workers": n}``, shown by ``/stats`` (set by ``hylex serve --workers``).
        max_hits, max_response_bytes, max_query_chars: what one search may ask for (queries x k; the bytes of
            its response, documents included; characters per query text), each refused with 413 beyond
            (:mod:`hylex.service.limits`).
    """
    if auth not in ("writes", "all"):
        raise HylexError(f"auth must be 'writes' or 'all', got {auth!r}")
    if api_key is not None and not api_key.strip():
        raise HylexError("the API key is empty: pass a non-empty key, or none")
    if isinstance(write_wait, bool) or not isinstance(write_wait, (int, float)) or not write_wait >= 0:
        raise HylexError(f"write_wait must be a number of seconds >= 0, got {write_wait!r}")
    if request_timeout is not None and (isinstance(request_timeout, bool) or
                                        not isinstance(request_timeout, (int, float)) or not request_timeout > 0
                                        or request_timeout == float("inf")):
        raise HylexError(f"request_timeout must be a finite number of seconds > 0 (or None), got {request_timeout!r}")
    if isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
        raise HylexError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens!r}")
    limits = RequestLimits(max_hits, max_response_bytes, max_query_chars)
    service = Service(index_dir, encoder, encoder_kwargs, write_wait=write_wait, worker=worker)
    if not batching and not model_thread:
        raise HylexError("the model runs on the caller's thread only with batching on")
    if batching:
        service.batcher = QueryBatcher(service.encode_queries, max_wait=batch_wait_ms / 1000, max_queue=max_queue,
                                       lock=service.encoder_lock, own_thread=model_thread,
                                       max_batch_tokens=max_batch_tokens)
        service.token_costs(encoder)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        with service.lock:  # a commit in progress finishes first: nothing is half-applied
            service.close()

    app = _App(title="hylex", version=hylex.__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
               description="Hybrid dense + sparse retrieval from one LLM pass: search, documents, stats. Every "
                           "error is `{\"error\": \"...\"}` naming what was wrong and how to fix it.")
    app.body_limit = int(max_body_bytes)
    app.state.service = service
    _offline_docs(app)
    _contract(app, max_batch, service.index.dim, service.index.vocab_size,
              len(service.searcher.default_fusion["arms"]), max_query_chars)
    _security_scheme(app, api_key is not None, auth)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        write = request.method in ("POST", "PUT", "DELETE") and request.url.path != "/search"
        public = request.url.path in ("/health", "/docs", "/openapi.json") or request.url.path.startswith("/docs/")
        if api_key is not None and (auth == "all" or write) and not public:
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return JSONResponse({"error": "missing or wrong API key: send it in the X-API-Key header"},
                                    status_code=401)
        return await call_next(request)

    @app.exception_handler(HylexError)
    async def hylex_error(request: Request, exc: HylexError):
        return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 400),
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(ResultTooLargeError)
    async def too_large(request: Request, exc: ResultTooLargeError):
        return JSONResponse({"error": str(limits.too_large(str(exc)))}, status_code=413)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # a bug, not a client mistake: logged with its traceback, answered in the {"error"} shape (Starlette
        # re-raises it afterwards; BodyLimit lets it end there)
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}): the server logged it; please "
                                      f"report it"}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # 404 / 405 / a body that is not JSON: the same {"error"} body as every other mistake
        msg = {404: f"no route {request.url.path}: see /openapi.json for the routes",
               405: f"{request.method} is not allowed on {request.url.path}: see /openapi.json"}.get(
            exc.status_code, str(exc.detail))
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route matching it
            headers["Allow"] = ", ".join(_allowed(app, request.scope)) or headers.get("Allow", "")
        return JSONResponse({"error": msg}, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), (bytes, bytearray))
               for e in errors):  # a body FastAPI did not parse as JSON: its Content-Type says it is something else
            ctype = request.headers.get("content-type", "")
            return JSONResponse({"error": f"the body must be JSON, got Content-Type {ctype!r}: send "
                                          f"Content-Type: application/json"}, status_code=415)
        parts = []
        for e in errors[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where or 'body'}: {e.get('msg')}")
        # only plain fields: "input" and "ctx" may hold bytes or exceptions, which JSON cannot carry (was a 500)
        detail = [{"type": str(e.get("type")), "loc": [x if isinstance(x, (int, str)) else str(x)
                                                        for x in e.get("loc", ())], "msg": str(e.get("msg"))}
                  for e in errors[:20]]
        return JSONResponse({"error": "; ".join(parts), "detail": detail}, status_code=422)

    @app.get("/health", responses=_errors(503))
    def health() -> dict:
        # a liveness probe never waits behind a search or a commit: the count is refreshed only if the index is free
        if service.lock.acquire(blocking=False):
            try:
                service.current()
            except (HylexError, OSError) as e:  # still alive: the next read reports the problem
                logger.warning("could not take up the index's latest commit: %s", e)
            finally:
                service.lock.release()
        return {"status": "ok", "documents": service.index.n_docs}

    @app.get("/stats", responses=_errors(401))
    def stats() -> dict:
        with service.lock:
            current = service.current()
            out = current.stats()
            out["default_fusion"] = service.searcher.default_fusion
            out["devices"] = current.devices()
            enc = service.searcher._encoder  # only once loaded: /stats never loads a model
            if enc is not None and hasattr(enc, "device"):
                out["devices"]["encoder"] = {"device": str(enc.device), "dtype": getattr(enc.config, "dtype", None),
                                             "why": "the encoder's device (hylex serve --device)"}
        b = service.batcher
        out["service"] = {"batching": b is not None, "encode_batches": b.batches if b else None,
                          "encoded_query_texts": b.texts if b else None,
                          "timed_out": b.expired if b else None, "refused": b.refused if b else None,
                          "pid": os.getpid(),
                          "worker": service.worker.get("worker", 0), "workers": service.worker.get("workers", 1)}
        if b is not None and b.cost.known:  # what admission believes a pass costs (hylex serve measures it first)
            out["service"]["admission"] = {"seconds_per_pass": round(b.cost.a, 4),
                                           "ms_per_token": round(1000 * b.cost.b, 4),
                                           "search_ms": round(1000 * b.timings.get("search"), 2),
                                           "passes_measured": len(b.cost._obs)}
        return out

    @app.post("/search", response_model=SearchResponse, responses=_errors(400, 401, 413, 415, 422, 503),
              description="Give `queries` (texts), or pre-encoded `dense` and/or `sparse` vectors (with "
                          "`bm25_queries` for a bm25 arm). `mode` hybrid fuses `arms` (default: the index's stored fusion, "
                          "`default_fusion` in GET /stats); the "
                          "dense and sparse arms of text queries need the index's model.")
    async def search(req: SearchRequest) -> SearchResponse:
        # the request timeout covers the whole search: encoding and the search itself on the model's thread
        deadline = None if request_timeout is None else time.monotonic() + request_timeout
        limits.texts(req.queries, "queries")
        limits.texts(req.bm25_queries, "bm25_queries")
        if req.queries is not None:  # lone surrogates -> U+FFFD, as everywhere else (and echoable as JSON)
            req.queries = [clean_text(q) for q in req.queries]
        if req.bm25_queries is not None:
            req.bm25_queries = [clean_text(q) for q in req.bm25_queries]
        n = max(len(x) for x in (req.queries or [], req.dense or [], req.sparse or [], req.bm25_queries or []))
        if n > max_batch:
            raise ServiceError(f"{n} queries in one request, the limit is {max_batch}: split the batch", 413)
        if req.queries is not None and (req.dense, req.sparse, req.bm25_queries) != (None, None, None):
            # the texts are encoded here, and would silently replace the vectors or bm25_queries given with them
            raise ServiceError("pass query texts (queries) or pre-encoded vectors (dense / sparse, with bm25_queries "
                               "for a bm25 arm), not both")
        flt = check_filter(req.filter) if req.filter is not None else None
        dense = None
        if req.dense is not None:
            if len({len(v) for v in req.dense}) > 1:
                raise ServiceError("dense queries must all have the same length (the index's dimension)")
            with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
                dense = np.asarray(req.dense, dtype=np.float32)
            if not np.isfinite(dense).all():
                raise ServiceError("dense queries hold NaN or infinite values: send finite numbers")
            top = _dense_component_max(service.index.dim)
            if dense.size and np.abs(dense).max() > top:
                raise ServiceError(f"dense query {int(np.argmax(np.abs(dense).max(axis=1)))} has a component beyond "
                                   f"+-{top:.6g}: send L2-normalised vectors (norm 1, as the encoder gives)")
        sparse = None
        if req.sparse is not None:
            vocab = service.index.vocab_size
            rows, cols, vals = [], [], []
            for i, q in enumerate(req.sparse):
                for term, w in q.items():
                    # ASCII digits only ("²".isdigit() holds), and no more of them than the vocabulary's size has
                    if not (term.isascii() and term.isdigit()) or len(term) > len(str(vocab)) or int(term) >= vocab:
                        raise ServiceError(f"sparse query {i}: term {term[:40]!r} is not a vocabulary id in "
                                           f"[0, {vocab})")
                    if not (np.isfinite(w) and abs(w) <= _F32_MAX):
                        raise ServiceError(f"sparse query {i}: term {term} has weight {w}: send finite numbers "
                                           f"within float32's range")
                    rows.append(i)
                    cols.append(int(term))
                    vals.append(w)
            sparse = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(len(req.sparse), vocab))
        given = None if req.queries is not None else \
            {a for a, x in (("dense", req.dense), ("sparse", req.sparse), ("bm25", req.bm25_queries)) if x is not None}
        used = set(service.searcher.resolve_fusion(req.mode, req.arms, req.weights, req.alpha, req.fusion, given)[0])
        hits = limits.work(n, req.k, req.depth, len(used), service.index.n_docs, req.explain)
        budget = limits.document_budget(hits, req.queries) if req.with_documents else None
        kwargs = dict(k=req.k, mode=req.mode, fusion=req.fusion, alpha=req.alpha, rrf_k=req.rrf_k, depth=req.depth,
                      weights=req.weights, filter=flt, with_documents=req.with_documents, explain=req.explain,
                      k1=req.k1, b=req.b, query_cut=req.query_cut, heap_factor=req.heap_factor,
                      candidates=req.candidates)
        if req.arms is not None:
            kwargs["arms"] = req.arms

        def run_search(texts, dense, sparse, bm25_texts) -> list[QueryResult]:
            """The search itself, in groups of queries with the request's deadline checked between them."""
            with service.lock:
                service.current()
                n_q = max((x.shape[0] if hasattr(x, "shape") else len(x)
                           for x in (texts, dense, sparse, bm25_texts) if x is not None), default=0)
                out: list[QueryResult] = []
                left = budget  # the documents' bytes the rest of the response may hold
                for lo in range(0, max(n_q, 1), SEARCH_GROUP):
                    if lo and deadline is not None and time.monotonic() > deadline:
                        raise Busy(f"the search ran past the {request_timeout:g} s request timeout after {lo} of "
                                   f"{n_q} queries: send fewer queries per request")
                    part = slice(lo, lo + SEARCH_GROUP)
                    res = service.searcher.search(
                        None if texts is None else texts[part], dense=None if dense is None else dense[part],
                        sparse=None if sparse is None else sparse[part],
                        bm25_queries=None if bm25_texts is None else bm25_texts[part], max_document_bytes=left,
                        **kwargs)
                    if left is not None:
                        left -= sum(document_bytes(d) for row in res.documents for d in row if d is not None)
                    out += _hits(res, None if req.queries is None else req.queries[part], req.with_documents)
                return out

        texts = req.queries
        try:
            if texts is not None and used & {"dense", "sparse"} and dense is None and sparse is None:
                if any(not isinstance(t, str) or not t.strip() for t in texts):
                    raise ServiceError("a query text is empty: pass non-empty query texts")
                if service.batcher is not None:
                    # shares a forward pass with concurrent requests; the search runs right after it, on the model
                    # thread (the texts still serve the bm25 arm and explanations)
                    results = await service.batcher.encode(
                        texts, timeout=None if deadline is None else max(0.001, deadline - time.monotonic()),
                        then=lambda d, s: run_search(None, d, s, texts))
                else:
                    def encode_alone():
                        with service.encoder_lock:
                            return service.encode_queries(texts)
                    d, s = await run_in_threadpool(encode_alone)
                    results = await service.run(lambda: run_search(None, d, s, texts))
            elif service.batcher is not None:  # no encoding: before the next query batch
                results = await service.batcher.call(lambda: run_search(texts, dense, sparse, req.bm25_queries),
                                                     deadline=deadline, kind="search", urgent=True)
            else:
                results = await service.run(lambda: run_search(texts, dense, sparse, req.bm25_queries))
        except Busy as e:
            raise ServiceError(f"the service is busy ({e}): retry shortly", 503,
                               {"Retry-After": str(e.retry_after)}) from None
        except TooMuchWork as e:
            raise ServiceError(str(e), 413) from None
        return SearchResponse(results=results)

    def _get(doc_id: str) -> dict:
        check_id(doc_id)
        with service.lock:
            doc = service.current().get([doc_id])[0]
        if doc is None:
            raise ServiceError(f"no document {doc_id!r} in this index", 404)
        return doc

    @app.get("/documents", responses=_errors(400, 401, 404, 422),
             description="One document by id as a query parameter: works for every id, including ones with "
                         "`/`, `?`, `#` or `%` (URL-encode it).")
    def get_document_by_query(id: str = Query(..., min_length=1, max_length=511,
                                              description="the document id")) -> dict:
        return _get(id)

    @app.get("/documents/{doc_id:path}", responses=_errors(400, 401, 404),
             description="One document by id in the path (an id with `/` works as is or as `%2F`).")
    def get_document(doc_id: str) -> dict:
        return _get(doc_id)

    @app.post("/documents", response_model=UpsertResponse, responses=_errors(400, 401, 413, 415, 422, 503, 507))
    async def upsert(req: UpsertRequest) -> UpsertResponse:
        if len(req.documents) > max_batch:
            raise ServiceError(f"{len(req.documents)} documents in one request, the limit is {max_batch}: split "
                               f"the batch", 413)
        docs = [Document(id=d.id, text=d.text, title=d.title, metadata=d.metadata) for d in req.documents]
        seen: set[str] = set()
        for d in docs:
            if d.id in seen:
                raise ServiceError(f"document id {d.id!r} appears twice in the batch: ids must be unique")
            seen.add(d.id)
        def encode_docs(part=slice(None)):
            return service.encoder.encode_documents([d.full_text for d in docs[part]])

        if service.batcher is not None:  # on the model's thread, a few documents at a time between query batches
            parts = [await service.batcher.call(lambda part=slice(lo, lo + UPSERT_GROUP): encode_docs(part),
                                                kind="encode_documents")
                     for lo in range(0, len(docs), UPSERT_GROUP)]
            dense = np.concatenate([np.asarray(p[0], np.float32) for p in parts])
            sparse = sp.vstack([sp.csr_matrix(p[1], dtype=np.float32) for p in parts], format="csr")
        else:
            def encode_alone():
                with service.encoder_lock:
                    return encode_docs()
            dense, sparse = await run_in_threadpool(encode_alone)

        def commit(ix: Index) -> UpsertResponse:
            ix.upsert(docs, np.asarray(dense, np.float32), sp.csr_matrix(sparse, dtype=np.float32))
            return UpsertResponse(committed=len(docs), documents=ix.n_docs)

        return await service.write(commit)

    @app.delete("/documents", response_model=DeleteResponse, responses=_errors(400, 401, 413, 415, 422, 503, 507),
                description="Exactly one of `ids`, a non-empty `filter`, or `all: true` (deletes every document); "
                            "`dry_run: true` only counts them.")
    async def delete(req: DeleteRequest) -> DeleteResponse:
        given = [name for name in ("ids", "filter", "all") if getattr(req, name) is not None]
        if len(given) != 1:
            raise ServiceError("give exactly one of \"ids\", \"filter\" or \"all\": true")
        if req.all is not None and req.all is not True:
            raise ServiceError("\"all\" must be true to delete every document (or leave it out)")
        if req.filter is not None and not req.filter:
            raise ServiceError("an empty filter matches every document: to delete them all, send {\"all\": true}")
        flt = check_filter(req.filter) if req.filter is not None else None
        ids = [check_id(i) or i for i in req.ids] if req.ids is not None else None
        if ids is not None and len(ids) > max_batch:
            raise ServiceError(f"{len(ids)} ids in one request, the limit is {max_batch}: split the batch", 413)

        def commit(ix: Index) -> DeleteResponse:
            dry = req.dry_run
            if req.all:
                n = ix.delete_all(dry_run=dry)
            else:
                n = ix.delete(ids, dry_run=dry) if ids is not None else delete_where(ix, flt, dry_run=dry)
            return DeleteResponse(deleted=n, documents=ix.n_docs)

        if req.dry_run:  # only counts: no writer lock, on the current snapshot
            def count() -> DeleteResponse:
                with service.lock:
                    return commit(service.current())
            return await service.run(count)
        return await service.write(commit)

    return app
