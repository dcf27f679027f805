"""The ``hylex`` command line: ``index``, ``search``, ``eval``, ``fuse``, ``tune``, ``get``, ``delete``, ``merge``,
``stats``, ``validate`` and ``demo``.

Every user mistake ends in one line ``hylex: error: <what was wrong and how to fix it>`` and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

from hylex.engine.config import EncoderConfig
from hylex.engine.models import ZERO_SHOT_MODEL as TUNE_BASE
from hylex.engine.settings import DENSE_AGGS, DTYPES, LONG_DOCS, POOLINGS, PROMPTS
from hylex.errors import CorpusError, HylexError

logger = logging.getLogger("hylex")

EVAL_MODES = ("dense", "sparse", "bm25", "hybrid")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _float_or_auto(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.3,0.3,0.4") \
            from None


def _add_encoder_args(p: argparse.ArgumentParser, with_settings: bool = True,
                      model_default: str | None = None) -> None:
    """Encoder options; ``model_default``: what ``--model``'s help shows in brackets [EncoderConfig's]."""
    g = p.add_argument_group("encoder")
    if with_settings:
        # No defaults here: an option left out takes the index's recorded setting when adding to an index, and
        # EncoderConfig's default for a new one (shown in brackets).
        d = EncoderConfig()
        g.add_argument("--model", default=None,
                       help=f"model name (smollm2-135m-hylex, smollm2-135m, qwen2.5-0.5b), tuned or model folder, "
                            f".gguf file or hub id [{model_default or d.model}]")
        g.add_argument("--max-length", type=_positive_int, default=None,
                       help=f"tokens per text incl. the prompt [{d.max_length}]")
        g.add_argument("--prompt", default=None, choices=list(PROMPTS), help=f"[{d.prompt}]")
        g.add_argument("--pooling", default=None, choices=list(POOLINGS), help=f"[{d.pooling}]")
        g.add_argument("--sparse-topk", type=int, default=None,
                       help=f"vocabulary entries kept per text (0: all) [{d.sparse_topk}]")
        g.add_argument("--expansion", type=int, default=None,
                       help=f"expansion terms beyond the text's own words [{d.expansion}]")
        g.add_argument("--no-own-words", action="store_true", default=None,
                       help="sparse weights on any alphanumeric token, not only the text's own words")
        g.add_argument("--word-forms", default=None, choices=["bare", "both"],
                       help=f"own-word tokens: the bare word, or also its space-prefixed form (Qwen/Llama-3) "
                            f"[{d.word_forms}]")
        g.add_argument("--stopwords", default=None,
                       help=f"stopword list: english, none, or a comma-separated list of words [{d.stopwords}]")
        g.add_argument("--long-docs", default=None, choices=list(LONG_DOCS),
                       help=f"documents longer than --max-length: truncate, or chunk and aggregate [{d.long_docs}]")
        g.add_argument("--chunk-overlap", type=int, default=None,
                       help="tokens shared by consecutive chunks [64, or max-length / 4 when that is smaller]")
        g.add_argument("--dense-agg", default=None, choices=list(DENSE_AGGS),
                       help=f"dense vector of a chunked document: first chunk, mean, or maxsim at query time "
                            f"[{d.dense_agg}]")
        g.add_argument("--dtype", default=None, choices=list(DTYPES), help=f"[{d.dtype}]")
    g.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    g.add_argument("--batch-tokens", type=_positive_int, default=None,
                   help="padded tokens per forward pass [4096 on a CPU, 16384 on a GPU; at least --max-length]")
    g.add_argument("--cache-dir", default=None,
                   help="where converted models and cached encodings live (default $HYLEX_CACHE_DIR or "
                        "~/.cache/hylex)")
    g.add_argument("--no-encoding-cache", action="store_true", help="do not read or write cached encodings")


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="hybrid", choices=["dense", "sparse", "bm25", "hybrid"])
    p.add_argument("--fusion", default=None, choices=["convex", "rrf"], help="[convex]")
    p.add_argument("--arms", default=None,
                   help="arms hybrid fuses, comma-separated from dense,sparse,bm25 (default: the stored fusion's: "
                        "the index's choice from `hylex fuse`, else its model's, else dense,sparse,bm25; `hylex "
                        "stats` shows it)")
    p.add_argument("--weights", type=_float_list, default=None,
                   help="one fusion weight per arm, e.g. 0.3,0.3,0.4 (default: the stored fusion's; with --arms, "
                        "--alpha for dense,sparse, else equal; rrf: all 1)")
    p.add_argument("--alpha", type=float, default=None,
                   help="dense weight of a convex dense,sparse fusion (alone it selects the arms dense,sparse; "
                        "default 0.3)")
    p.add_argument("--rrf-k", type=float, default=60.0)
    p.add_argument("--depth", type=_positive_int, default=1000,
                   help="candidates per arm for hybrid fusion (default 1000, chosen on SciFact train)")
    p.add_argument("--bm25-k1", type=float, default=None, help="BM25 k1 (default: the index's)")
    p.add_argument("--bm25-b", type=float, default=None, help="BM25 b (default: the index's)")
    g = p.add_argument_group("approximate sparse search (default: exact)")
    g.add_argument("--query-cut", type=_positive_int, default=None,
                   help="search only each query's N heaviest terms (then rescored with the whole query)")
    g.add_argument("--heap-factor", type=float, default=1.0,
                   help=">= 1: skip blocks and candidates whose bound is within this factor of the k-th score")
    g.add_argument("--candidates", type=_positive_int, default=None,
                   help="documents collected per query before rescoring with the whole query (default k)")


def _fusion_kwargs(args) -> dict:
    """The search() arguments of the search options (arms only when given, so the default stays the library's)."""
    out = {"fusion": args.fusion, "alpha": args.alpha, "rrf_k": args.rrf_k, "depth": args.depth,
           "weights": args.weights, "k1": args.bm25_k1, "b": args.bm25_b, "query_cut": args.query_cut,
           "heap_factor": args.heap_factor, "candidates": args.candidates}
    if args.arms is not None:
        out["arms"] = args.arms
    return out


def _encoder_kwargs(args) -> dict:
    return {"device": args.device, "threads": args.threads, "batch_tokens": args.batch_tokens,
            "cache": args.cache_dir, "encoding_cache": not args.no_encoding_cache,
            "progress": args.progress}


ENCODER_OPTIONS = ("model", "max_length", "prompt", "pooling", "sparse_topk", "expansion", "word_forms",
                   "stopwords", "long_docs", "chunk_overlap", "dense_agg", "dtype")


def _encoder_options(args) -> dict:
    """The encoder settings given on the command line (only those given)."""
    out = {k: getattr(args, k) for k in ENCODER_OPTIONS if getattr(args, k, None) is not None}
    if getattr(args, "no_own_words", None):
        out["own_words"] = False
    if "stopwords" in out and out["stopwords"] not in ("english", "none"):
        out["stopwords"] = [w.strip() for w in out["stopwords"].split(",") if w.strip()]
    return out


def _make_encoder(args, base: dict | None = None):
    """The encoder of ``hylex index``: ``base`` settings (an existing index's) with the options given on top."""
    from hylex.engine.encoder import Encoder

    cfg = EncoderConfig.from_dict({**(base or {}), **_encoder_options(args)})
    return Encoder(config=cfg, **_encoder_kwargs(args))


def _print_hits(res, queries: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"query": q, "hits": hits} for q, hits in zip(queries, res.to_list())],
                         ensure_ascii=False))
        return
    for q, hits in zip(queries, res.to_list()):
        print(f"\nquery: {q}")
        if not hits:
            print("  (no hits)")
        for h in hits:
            label = h.get("title") or ""
            label = "" if label == h["id"] else label
            snippet = " ".join((h.get("text") or "").split())[:90]
            print(f"  {h['rank']:>3}  {h['score']:8.4f}  {h['id']:<30}  {label[:40] + ': ' if label else ''}"
                  f"{snippet}")


class _RejectsFile:
    """``--skip-invalid``'s file: each rejected line written as it comes (memory stays flat), the first kept."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = open(path, "w", encoding="utf-8")
        self.count = 0
        self.first: dict | None = None

    def append(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        self.count += 1
        self.first = self.first or record

    def close(self) -> None:
        self._f.close()


def _custom_encoder(spec: str):
    """``--encoder module:callable``: the object ``callable()`` returns (a TextEncoder: dim, vocab_size,
    describe(), encode_documents(), encode_queries())."""
    import importlib

    from hylex.indexing.protocols import TextEncoder

    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise HylexError(f"--encoder {spec!r}: give it as module:callable, e.g. mypkg.encoders:make_encoder")
    try:
        factory = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise HylexError(f"--encoder {spec!r}: cannot load it ({e}): check the module is importable (PYTHONPATH) "
                         f"and defines {attr}") from None
    enc = factory()
    if not isinstance(enc, TextEncoder):
        raise HylexError(f"--encoder {spec!r} returned a {type(enc).__name__}, not an encoder: it needs dim, "
                         f"vocab_size, describe(), encode_documents() and encode_queries()")
    return enc


class _ImportedEncoder:
    """``--encoder module:callable`` as a picklable factory (each Ray actor imports and calls it)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __call__(self):
        return _custom_encoder(self.spec)


def _index_on_ray(args, reader, base: dict | None, bm25, sparse, merge, existing: str) -> int:
    """``hylex index --ray``: hylex.indexing.distributed with the command line's encoder settings."""
    from hylex.indexing.distributed import index_with_ray

    if args.skip_invalid:
        raise HylexError("--skip-invalid is not supported with --ray: a bad line stops the job (its error quotes "
                         "the line); check the corpus with a plain `hylex index` first")
    if args.encoder:
        factory = _ImportedEncoder(args.encoder)
    else:
        from hylex.engine.encoder import EncoderFactory, resolve_dtype

        cfg = EncoderConfig.from_dict({**(base or {}), **_encoder_options(args)})
        if cfg.dtype == "auto":  # the actors' dtype, fixed here so the index records what they encode with
            import torch

            cfg.dtype = "bfloat16" if args.ray_gpus else resolve_dtype("auto", torch.device("cpu"))
        kwargs = _encoder_kwargs(args)
        kwargs["progress"] = False
        if args.ray_gpus:
            kwargs["device"] = "cuda"
        factory = EncoderFactory(cfg.to_dict(), kwargs)

    def acknowledged(done: int, total) -> None:
        print(f"committed {done} documents", flush=True)

    rep = index_with_ray(reader.path, args.index, factory, address=args.ray or None, actors=args.ray_actors,
                         gpus_per_actor=args.ray_gpus, batch_size=args.chunk_size, segment_size=args.segment_size,
                         dense_factory=args.dense_factory, bm25=bm25, sparse=sparse, merge=merge, existing=existing,
                         on_commit=acknowledged, wait=args.write_wait_s)
    docs_s = rep.documents / rep.seconds if rep.seconds else 0.0
    print(f"indexed {rep.documents} documents into {rep.index_dir} on Ray in {rep.seconds:.1f}s ({docs_s:.1f} "
          f"docs/s; {rep.segments} segments, {rep.extra.get('orphans', 0)} staged by retried tasks and dropped)")
    return 0


# -- commands --------------------------------------------------------------------------------------------------
def cmd_index(args) -> int:
    from hylex.indexing.builder import build_index

    from hylex.indexing.bm25 import bm25_settings

    bm25 = {key: v for key, v in (("k1", args.bm25_k1), ("b", args.bm25_b), ("stemmer", args.bm25_stemmer),
                                  ("stopwords", args.bm25_stopwords)) if v is not None} or None
    if bm25 is not None:
        bm25_settings(bm25)  # bad BM25 settings fail before the model loads
    sparse = {key: v for key, v in (("bits", args.sparse_bits), ("keep_top", args.keep_top),
                                    ("keep_fraction", args.keep_fraction)) if v is not None} or None
    if sparse is not None:
        from hylex.indexing.index import sparse_settings

        sparse_settings(sparse)
    merge = {key: v for key, v in (("factor", args.merge_factor), ("auto", False if args.no_auto_merge else None),
                                   ("max_docs", args.merge_max_docs)) if v is not None} or None
    if merge is not None:
        from hylex.indexing.index import merge_settings

        merge_settings(merge)
    existing = "upsert" if args.upsert else "resume" if args.resume else "error"
    _check_wait(args.write_wait_s)
    from hylex.corpus import CorpusReader

    rejects = _RejectsFile(args.skip_invalid) if args.skip_invalid else None
    reader = CorpusReader(args.corpus, rejects=rejects)
    seen: set[str] = set()
    for lineno, d in reader.peek(args.chunk_size):  # a bad first chunk fails before the model loads
        if d.id in seen and rejects is None:
            raise CorpusError(f"{reader.path.name} line {lineno}: document id {d.id!r} appears earlier in the "
                              f"corpus: ids must be unique")
        seen.add(d.id)
    base = None
    from hylex.indexing.index import MANIFEST, read_manifest

    if not args.encoder and (Path(args.index) / MANIFEST).exists():
        # adding to an index: its recorded encoder settings, unless an option says otherwise (then the index
        # refuses the mismatch, naming the setting)
        base = read_manifest(args.index)["encoder"].get("settings", {})
        opts = _encoder_options(args)
        given = EncoderConfig.from_dict({**base, **opts})
        given.validate()
        defaults = EncoderConfig()
        # only the options given are compared here; the model's identity and an "auto" dtype are known once it
        # loads (then the whole description is checked again)
        diffs = [f"{key}: index {base.get(key, getattr(defaults, key))!r}, given {getattr(given, key)!r}"
                 for key in opts if key != "model" and not (key == "dtype" and given.dtype == "auto")
                 and base.get(key, getattr(defaults, key)) != getattr(given, key)]
        if diffs:  # fails before the model loads
            raise HylexError(f"index {args.index} was built with other encoder settings: {'; '.join(diffs)}: leave "
                             f"the option out to use the index's setting, or index into a new directory")
    if args.ray is not None:
        return _index_on_ray(args, reader, base, bm25, sparse, merge, existing)
    encoder = _custom_encoder(args.encoder) if args.encoder else _make_encoder(args, base)

    def acknowledged(done: int, total: int | None) -> None:  # printed only once the batch is durable
        share = f" ({reader.position / reader.total:.0%} of {reader.path.name})" if reader.total else ""
        print(f"committed {done} documents{share}", flush=True)

    try:
        rep = build_index(reader, args.index, encoder, dense_factory=args.dense_factory, chunk_size=args.chunk_size,
                          segment_size=args.segment_size, bm25=bm25, sparse=sparse, merge=merge, existing=existing,
                          progress=args.progress, on_commit=acknowledged, rejects=rejects, wait=args.write_wait_s)
    except CorpusError as e:
        if rejects is not None and rejects.count and "no valid document" in str(e):
            raise CorpusError(f"{e}: see {args.skip_invalid}") from None
        raise
    finally:
        if rejects is not None:
            rejects.close()
    if rejects is not None and rejects.count:
        print(f"skipped {rejects.count} invalid line(s) of {args.corpus}, written to {args.skip_invalid} "
              f"(first: line {rejects.first['line']}: {rejects.first['error']})", file=sys.stderr)
    tps = rep.tokens / rep.encode_seconds if rep.encode_seconds and rep.tokens else 0.0
    speed = f", {tps:.0f} tokens/s" if rep.tokens else ""
    skipped = rep.extra.get("skipped")
    empty = rep.extra.get("empty")
    docs_s = rep.documents / rep.seconds if rep.seconds else 0.0
    print(f"indexed {rep.documents} documents into {rep.index_dir} in {rep.seconds:.1f}s ({docs_s:.1f} docs/s; "
          f"encode {rep.encode_seconds:.1f}s{speed}; encoding cache hits {rep.cache_hits}/{rep.documents})"
          + (f"; {skipped} already indexed, skipped" if skipped else "")
          + (f"; {empty} empty (no text or title)" if empty else "")
          + (f"; {rejects.count} invalid line(s) rejected" if rejects is not None and rejects.count else ""))
    if rep.truncated:
        print(f"hylex: warning: {rep.truncated} of {rep.documents} documents were longer than max_length "
              f"({getattr(getattr(encoder, 'config', None), 'max_length', '?')} tokens with the prompt) and only their beginning was encoded (BM25 "
              f"and the stored text keep them whole); --long-docs chunk encodes them whole", file=sys.stderr)
    return 0


def cmd_search(args) -> int:
    from hylex.retrieval.searcher import Searcher, check_approx_knobs

    check_approx_knobs(args.query_cut, args.heap_factor, args.candidates)
    flt = None
    if args.filter is not None:
        from hylex.retrieval.filters import check_filter

        flt = check_filter(args.filter)  # a bad filter fails before the model loads
    from hylex.corpus import clean_text

    # argv may carry lone surrogates (undecodable bytes): searched and printed as U+FFFD, like corpus texts
    args.queries = [clean_text(q) for q in args.queries]
    s = Searcher(args.index, **_encoder_kwargs(args))
    res = s.search(args.queries, k=args.k, mode=args.mode, with_documents=True, filter=flt, **_fusion_kwargs(args))
    _print_hits(res, args.queries, args.json)
    return 0


def cmd_get(args) -> int:
    from hylex.indexing.index import Index

    with Index.open(args.index) as index:
        found = index.get(args.ids)
    missing = [i for i, d in zip(args.ids, found) if d is None]
    for d in found:
        if d is not None:
            print(json.dumps(d, ensure_ascii=False))
    if missing:
        print(f"hylex: error: {len(missing)} id(s) not in {args.index}: {', '.join(missing[:5])}", file=sys.stderr)
        return 1
    return 0


def cmd_delete(args) -> int:
    from hylex.indexing.index import Index
    from hylex.retrieval.filters import check_filter, delete_where

    if sum(x is not None and x is not False for x in (args.ids, args.filter, args.all)) != 1:
        raise HylexError("say which documents to delete: --ids, --filter or --all (exactly one of them)")
    flt = check_filter(args.filter) if args.filter is not None else None
    if flt is not None and not flt:
        raise HylexError("--filter '{}' matches every document: to delete them all, pass --all")
    ids = None
    if args.ids is not None:
        if args.ids.startswith("@"):
            src = Path(args.ids[1:])
            if not src.is_file():
                raise HylexError(f"--ids {args.ids}: {src} is not a readable file (give one id per line, or pass "
                                 f"the ids as id1,id2)")
            try:
                lines = src.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise HylexError(f"--ids {args.ids}: {src} is not UTF-8 text ({e.reason}): write one id per "
                                 f"line") from None
            ids = [x.strip() for x in lines if x.strip()]
        else:
            ids = [x.strip() for x in args.ids.split(",") if x.strip()]
        if not ids:
            raise HylexError("--ids names no document: pass id1,id2 or @FILE with one id per line")
    _check_wait(args.write_wait_s)
    # a dry run only counts: read-only, no writer lock to wait for
    with Index.open(args.index, writable=not args.dry_run, wait=args.write_wait_s) as index:
        before = index.n_docs
        if args.all:
            n = index.delete_all(dry_run=args.dry_run)
        else:
            n = index.delete(ids, dry_run=args.dry_run) if ids is not None else \
                delete_where(index, flt, dry_run=args.dry_run)
        left = index.n_docs
    every = " (every document)" if n and n == before and not args.all else ""
    if args.dry_run:
        print(f"would delete {n} document(s) from {args.index}{every}; {before - n} would be left (dry run: nothing "
              f"deleted)")
    else:
        print(f"deleted {n} document(s) from {args.index}{every}; {left} left")
    return 0


def _check_wait(wait: float) -> None:
    if not wait >= 0 or wait == float("inf"):
        raise HylexError(f"--write-wait-s must be a number of seconds >= 0, got {wait}")


def cmd_merge(args) -> int:
    from hylex.indexing.index import Index

    _check_wait(args.write_wait_s)
    with Index.open(args.index, writable=True, wait=args.write_wait_s) as index:
        before = len(index.segments)
        name = index.merge(args.segments.split(",") if args.segments else None)
        after, n = len(index.segments), index.n_docs
    print(f"merged {before} segment(s) into {after} ({name or 'nothing to merge'}); {n} documents")
    return 0


def _int_or_none_list(text: str) -> list[int | None]:
    out = []
    for x in text.split(","):
        x = x.strip()
        if x in ("", "all", "none"):
            out.append(None)
            continue
        try:
            out.append(int(x))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: caps are integers or 'all', comma-separated") from None
    return out


def _dev_size(text: str) -> float | int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a fraction, or a count of queries)") from None
    return int(v) if v >= 1 and v.is_integer() else v


def cmd_tune(args) -> int:
    from hylex.tuning.data import TrainingDataError
    from hylex.tuning.trainer import ALL_LINEAR, TuneArgs, TuneInterrupted
    from hylex.tuning.tune import DataArgs, tune

    beir = pairs = None
    if args.data:
        if len(args.data) == 1 and Path(args.data[0]).is_dir():
            beir = args.data[0]
        else:
            pairs = list(args.data)
    data = DataArgs(beir=beir, split=args.split, pairs=pairs or (), caps=args.cap, weights=args.source_weights,
                    total=args.total, from_corpus=args.from_corpus, pair_method=args.pairs_from,
                    generator=args.generator, generate=args.generate,
                    mine=not args.no_mine, skip=args.mine_skip, depth=args.mine_depth, n=args.mine_n,
                    mine_index=args.mine_index, mine_mode=args.mine_mode, dev=args.dev,
                    max_dev=args.max_dev, dev_distractors=args.dev_distractors, seed=args.seed).check()
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else ALL_LINEAR
    targs = TuneArgs(steps=args.steps, queries_per_step=args.batch, negatives=args.negatives, lr=args.lr,
                     warmup=args.warmup, weight_decay=args.weight_decay, accumulate=args.accumulate,
                     lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=targets, full=args.full,
                     query_max_length=args.query_tokens, passage_max_length=args.passage_tokens,
                     temperature=args.temperature, dense_weight=args.dense_weight, sparse_weight=args.sparse_weight,
                     sparse_temperature=args.sparse_temperature, flops_q=args.flops, flops_p=args.flops,
                     gradient_checkpointing=args.gradient_checkpointing,
                     mask_false_negatives=args.mask_false_negatives, grad_cache=args.grad_cache,
                     float32_loss=args.float32_loss, bf16=args.bf16, seed=args.seed, save_every=args.save_every,
                     eval_every=args.eval_every).check()
    options = _encoder_options(args)
    model = options.pop("model", None) or TUNE_BASE
    options.pop("dtype", None)
    if args.resume and not Path(args.workdir or f"{args.out}.work").is_dir():
        raise TrainingDataError(f"nothing to resume: {args.workdir or str(args.out) + '.work'} does not exist")
    try:
        res = tune(data, args.out, model=model, args=targs, encoder_options=options, workdir=args.workdir,
                   resume=args.resume, select_on=args.select_on, patience=args.patience, device=args.device,
                   threads=args.threads, progress=args.progress, adapter_dtype=args.adapter_dtype,
                   fusion_from=args.fusion_from, allow_test=args.allow_test)
    except TuneInterrupted as e:  # the shell's convention for a process ended by a signal: 128 + its number
        print(f"hylex: {e}", file=sys.stderr)
        return 128 + e.signum
    print(json.dumps({"out": str(res.out), "steps": res.steps, "fusion": res.fusion,
                      "dev_before": res.dev.get("before"), "dev_after": res.dev.get("after")}))
    return 0


def cmd_eval(args) -> int:
    from hylex.corpus import load_beir
    from hylex.indexing.bm25 import check_b, check_k1
    from hylex.retrieval.evaluation import evaluate_run, judged_coverage, run_from_results, write_trec_run
    from hylex.retrieval.searcher import Searcher, check_approx_knobs

    # bad search options fail before the model loads and the queries are encoded
    fusion = _fusion_kwargs(args)
    check_approx_knobs(args.query_cut, args.heap_factor, args.candidates)
    if args.bm25_k1 is not None:
        check_k1(args.bm25_k1)
    if args.bm25_b is not None:
        check_b(args.bm25_b)
    _, queries, qrels = load_beir(args.beir_dir, args.split)
    s = Searcher(args.index, **_encoder_kwargs(args))
    hy_arms, hy_weights, hy_method = s.resolve_fusion("hybrid", fusion.get("arms"), args.weights, args.alpha,
                                                      args.fusion)
    coverage = judged_coverage(s.index, qrels)
    if coverage["missing"]:  # the numbers would still print, but they would not mean what they seem to
        print(f"hylex: warning: {coverage['missing']} of the {coverage['judged']} documents judged in "
              f"{args.split} ({coverage['relevant_missing']} of them relevant; e.g. {coverage['example']!r}) are "
              f"not in {args.index}: they count as misses, so the metrics are lower than the collection's; index "
              f"the whole corpus.jsonl to compare with published numbers", file=sys.stderr)
    qids = sorted(queries)
    texts = [queries[q] for q in qids]
    t = time.perf_counter()
    q_dense, q_sparse = s.encoder.encode_queries(texts)
    encode_s = time.perf_counter() - t
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(args.index) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    name = Path(args.beir_dir).name
    out: dict = {}
    for mode in EVAL_MODES:
        t = time.perf_counter()
        res = s.search(None, k=args.k, mode=mode, dense=q_dense, sparse=q_sparse, bm25_queries=texts, **fusion)
        search_s = time.perf_counter() - t
        write_trec_run(runs_dir / f"{name}.{args.split}.{mode}.trec", qids, res.ids, res.scores, tag=f"hylex-{mode}")
        metrics = evaluate_run(run_from_results(qids, res.ids, res.scores), qrels)
        out[mode] = {**{m: round(v, 4) for m, v in metrics.items()}, "search_seconds": round(search_s, 3)}
    out["hybrid"]["fusion"] = {"method": hy_method, "arms": list(hy_arms), "weights": hy_weights,
                               "source": "given" if (args.arms or args.weights or args.alpha is not None or args.fusion)
                               else s.default_fusion.get("source")}
    out["queries"] = len(qids)
    out["judged_missing"] = coverage["missing"]
    out["query_encode_seconds"] = round(encode_s, 2)
    out["runs_dir"] = str(runs_dir)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{name} ({args.split}, {len(qids)} queries; runs in {runs_dir})")
        for mode in EVAL_MODES:
            print(f"  {mode:<7} nDCG@10 {out[mode]['ndcg@10']:.4f}  Recall@100 {out[mode]['recall@100']:.4f}")
        f = out["hybrid"]["fusion"]
        print(f"  (hybrid: {f['method']} {', '.join(f'{a} {w:g}' for a, w in zip(f['arms'], f['weights']))}; "
              f"{f['source']})")
    return 0


def cmd_fuse(args) -> int:
    """Choose the fusion a plain hybrid search of this index uses, on a training split's queries and qrels."""
    from hylex.corpus import is_test_split, load_beir
    from hylex.indexing.index import Index
    from hylex.retrieval.evaluation import evaluate_run, judged_coverage, run_from_results
    from hylex.retrieval.fusion import choose_fusion, weight_grid
    from hylex.retrieval.searcher import Searcher, check_arms

    if is_test_split(args.split) and not args.allow_test:
        raise HylexError(f"--split {args.split}: a fusion chosen on test queries makes every later test score "
                         f"meaningless; choose it on a training or dev split (or pass --allow-test knowingly)")
    arms = check_arms(args.arms) if args.arms else ("dense", "sparse", "bm25")
    weight_grid(len(arms), args.step)  # a bad step fails before the model loads
    _, queries, qrels = load_beir(args.beir_dir, args.split)
    s = Searcher(args.index, **_encoder_kwargs(args))
    coverage = judged_coverage(s.index, qrels)
    if coverage["missing"]:
        print(f"hylex: warning: {coverage['missing']} of the {coverage['judged']} documents judged in "
              f"{args.split} are not in {args.index}: the choice is made on incomplete judgments", file=sys.stderr)
    qids = sorted(queries)
    texts = [queries[q] for q in qids]
    need_model = any(a in arms for a in ("dense", "sparse"))
    q_dense = q_sparse = None
    if need_model:
        q_dense, q_sparse = s.encoder.encode_queries(texts)
    results = {a: s.search(None, k=args.depth, mode=a, dense=q_dense if a == "dense" else None,
                           sparse=q_sparse if a == "sparse" else None,
                           bm25_queries=texts if a == "bm25" else None) for a in arms}
    arm_lists = {a: (r.scores, r.rows) for a, r in results.items()}
    metric = args.metric
    ids_of = s.index.documents

    def score(D, I) -> float:
        docs = ids_of(I.ravel().tolist())
        ids = [[None if d is None else d["id"] for d in docs[q * I.shape[1]:(q + 1) * I.shape[1]]]
               for q in range(I.shape[0])]
        return float(next(iter(evaluate_run(run_from_results(qids, ids, D), qrels, (metric,)).values())))

    best, table = choose_fusion(arm_lists, score, k=10, step=args.step)
    record = {"method": "convex", "arms": best["arms"], "weights": best["weights"], "metric": metric,
              "score": round(best["score"], 4), "depth": args.depth,
              "chosen_on": f"{Path(args.beir_dir).name} {args.split} ({len(qids)} queries)",
              "model": s.index.encoder_info.get("model_id"),
              "singles": {a: round(next(r["score"] for r in table if r["arms"] == [a]), 4) for a in arms}}
    if not args.dry_run:
        with Index.open(args.index, writable=True, wait=args.wait) as ix:
            ix.set_fusion(record)
    if args.json:
        print(json.dumps({**record, "written": not args.dry_run, "top": table[:args.show]}))
    else:
        print(f"{record['chosen_on']}: best {metric} {best['score']:.4f} with "
              f"{', '.join(f'{a} {w:g}' for a, w in zip(best['arms'], best['weights']))}"
              + ("" if args.dry_run else f" (stored in {args.index}: plain hybrid searches use it)"))
        for r in table[:args.show]:
            print(f"  {r['score']:.4f}  {', '.join(f'{a} {w:g}' for a, w in zip(r['arms'], r['weights']))}")
    return 0


def cmd_demo(args) -> int:
    from hylex.engine.models import cache_dir
    from hylex.indexing.builder import build_index
    from hylex.indexing.index import FORMAT, FORMAT_VERSION, MANIFEST
    from hylex.retrieval.searcher import Searcher
    from hylex.sample import EXAMPLE_QUERIES, stdlib_corpus

    work = Path(args.workdir) if args.workdir else cache_dir(args.cache_dir) / "demo"
    # another model's sample index sits beside the default's, so comparing two models does not rebuild either
    slug = "" if args.model is None else "-" + re.sub(r"[^\w.-]+", "_", Path(str(args.model)).name or "model")
    index_dir = work / f"stdlib-{args.limit}{slug}"
    docs = stdlib_corpus(limit=args.limit)
    from hylex.engine.encoder import Encoder

    # the packaged default model and settings, or --model's (a tuned folder brings its card's settings)
    encoder = Encoder(**({} if args.model is None else {"model": args.model}), **_encoder_kwargs(args))
    if (index_dir / MANIFEST).exists():
        try:
            old = json.loads((index_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("format") == FORMAT and old.get("format_version") != FORMAT_VERSION:
            # the demo's own sample index, written by an older hylex: rebuild it in this version's format
            print(f"rebuilding the sample index at {index_dir} (index format {old.get('format_version')} -> "
                  f"{FORMAT_VERSION})")
            shutil.rmtree(index_dir)
        elif isinstance(old, dict) and old.get("format") == FORMAT and \
                (old.get("encoder") or {}).get("fingerprint") != encoder.describe()["fingerprint"]:
            # built with another model (an older default, or --model): its vectors do not fit this model's queries
            print(f"rebuilding the sample index at {index_dir} for {encoder.config.model} (it was built with "
                  f"{(old.get('encoder') or {}).get('model_id')})")
            shutil.rmtree(index_dir)
    if (index_dir / MANIFEST).exists():
        print(f"using the sample index at {index_dir} ({len(docs)} Python standard library docstrings)")
    else:
        print(f"indexing {len(docs)} docstrings of Python's standard library with {encoder.config.model} "
              f"into {index_dir} ...")
        rep = build_index(docs, index_dir, encoder, progress=args.progress)
        print(f"indexed {rep.documents} documents in {rep.seconds:.1f}s")
    s = Searcher(index_dir, encoder=encoder)
    from hylex.corpus import clean_text

    queries = [clean_text(q) for q in args.queries] if args.queries else list(EXAMPLE_QUERIES)
    res = s.search(queries, k=args.k, mode=args.mode, with_documents=True)
    _print_hits(res, queries, False)
    return 0


def cmd_serve(args) -> int:
    import math
    import os

    from hylex.service.workers import ServeConfig, serve

    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise HylexError(f"environment variable {args.api_key_env} is unset or empty: export the API key there")
    else:
        key = None
    if not args.write_wait_s >= 0:
        raise HylexError(f"--write-wait-s must be >= 0, got {args.write_wait_s}")
    for name in ("max_response_mb", "header_timeout", "body_timeout"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise HylexError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    kwargs = _encoder_kwargs(args)
    threads = kwargs.pop("threads")
    cfg = ServeConfig(index=str(args.index), host=args.host, port=args.port, workers=args.workers,
                      encoder=args.encoder, threads=threads, log_level="info" if args.verbose else "warning",
                      header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                      max_connections=args.max_connections,
                      app=dict(api_key=key, auth=args.auth, max_body_bytes=int(args.max_body_mb * 2**20),
                               max_batch=args.max_batch, batching=not args.no_batching,
                               batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                               max_batch_tokens=args.max_batch_tokens, request_timeout=args.request_timeout,
                               write_wait=args.write_wait_s, encoder_kwargs=kwargs, max_hits=args.max_hits,
                               max_response_bytes=max(1, int(args.max_response_mb * 2**20)),
                               max_query_chars=args.max_query_chars))
    return serve(cfg)


def cmd_stats(args) -> int:
    # from the manifest alone: no FAISS, SciPy or Numba to import, no segment to open
    from hylex.indexing.manifest import index_stats, read_manifest

    st = index_stats(args.index)
    try:
        from hylex.retrieval.fusion import stored_fusion

        st["fusion"] = stored_fusion(read_manifest(args.index))
    except HylexError as e:  # a damaged stored fusion: say so, show the rest
        st["fusion"] = None
        print(f"hylex: warning: {e}", file=sys.stderr)
    from hylex.indexing.placement import arm_devices  # no FAISS import for a CPU build; faiss-gpu is probed

    st["devices"] = arm_devices(st["dense"]["factory"])
    if args.json:
        print(json.dumps(st))
        return 0
    enc = st["encoder"]
    print(f"{st['path']}: {st['documents']} documents ({st['deleted']} deleted) in {len(st['segments'])} "
          f"segment(s), {st['segment_bytes'] / 2**20:.1f} MiB segments + {st['store_bytes'] / 2**20:.1f} MiB "
          f"documents; format {st['format_version']} (hylex {st['hylex_version']}), updated {st['updated']}")
    print(f"  encoder: {enc['model_id']} (fingerprint {enc.get('fingerprint')}), dim {enc['dim']}, "
          f"vocab {enc['vocab_size']}")
    print("  settings: " + ", ".join(f"{k}={v}" for k, v in sorted(enc.get("settings", {}).items())))
    print(f"  dense: FAISS {st['dense']['factory']} ({st['dense']['metric']}); bm25: k1 {st['bm25']['k1']}, "
          f"b {st['bm25']['b']}, {st['bm25']['analyzer']}")
    d = st["devices"]["dense"]
    print(f"  devices here: dense on {d['device']} ({d['why']}); sparse and BM25 on the CPU (Numba kernels)")
    f = st.get("fusion")
    if f:
        print(f"  default search: {f['method']} fusion of {', '.join(f'{a} {w:g}' for a, w in zip(f['arms'], f['weights']))}"
              f" ({f.get('source')}{'; chosen on ' + str(f['chosen_on']) if f.get('chosen_on') else ''})")
    for seg in st["segments"]:
        print(f"  {seg['name']}: {seg['documents']} docs ({seg['deleted']} deleted), {seg['dense_vectors']} "
              f"vectors, {seg['sparse_postings']} sparse / {seg['bm25_postings']} BM25 postings, "
              f"{seg['bytes'] / 2**20:.1f} MiB")
    m = st["merge"]
    print(f"  merge policy: {'automatic' if m['auto'] else 'manual'}, factor {m['factor']}, segments up to "
          f"{m['max_docs']:,} documents, rewrite segments over {m['max_deleted']:.0%} deleted; "
          f"generation {st['generation']}")
    return 0


def cmd_validate(args) -> int:
    from hylex.indexing.integrity import check_directory

    # every read defensive: a damaged file, record or manifest is a problem line, never a traceback
    report = check_directory(args.index)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.problems:
        for p in report.problems:
            print(f"problem: {p}", file=sys.stderr)
        print(f"hylex: error: {args.index} has {len(report.problems)} problem(s); restore the damaged files from a "
              f"copy or rebuild the index", file=sys.stderr)
        return 1
    print(f"{args.index}: ok ({report.n_docs} documents, every file's and every stored document's checksum "
          f"matches)")
    return 0


def _add_global_args(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=False if default is None else default,
                   help="log progress details")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   default=None if default is None else default, help="no progress bars")
    g.add_argument("--progress", dest="progress", action="store_const", const=True,
                   default=None if default is None else default,
                   help="progress bars even when stderr is not a terminal (default: only on a terminal)")


def build_parser() -> argparse.ArgumentParser:
    from hylex import __version__

    p = argparse.ArgumentParser(prog="hylex", description="Hybrid dense + sparse retrieval from one LLM pass.")
    p.add_argument("--version", action="version", version=f"hylex {__version__}")
    _add_global_args(p, None)
    # the same flags after the subcommand (`hylex index C --index D --no-progress`); SUPPRESS keeps a flag given
    # before the subcommand when it is not repeated after it
    common = argparse.ArgumentParser(add_help=False)
    _add_global_args(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    _sub_add = sub.add_parser

    def add_parser(name, **kw):
        return _sub_add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    pi = sub.add_parser("index", help="encode a corpus and build (or add to) an index, streaming")
    pi.add_argument("corpus", help="JSONL (BEIR {_id,title,text} or {id,text[,title][,metadata]} per line), gzipped "
                                   "or zstd JSONL, or Parquet with those columns")
    pi.add_argument("--index", required=True, help="index directory (created, or added to)")
    pi.add_argument("--dense-factory", default="Flat", help="FAISS index-factory string (default Flat: exact)")
    pi.add_argument("--chunk-size", type=_positive_int, default=256, help="documents per encoding call")
    pi.add_argument("--segment-size", type=_positive_int, default=100_000, help="documents per segment")
    pi.add_argument("--bm25-k1", type=float, default=None, help="BM25 k1, the searches' default (default 0.9)")
    pi.add_argument("--bm25-b", type=float, default=None, help="BM25 b, the searches' default (default 0.4)")
    pi.add_argument("--bm25-stemmer", default=None,
                    help="BM25 Snowball stemmer (english, porter, german, ...) or none (default english)")
    pi.add_argument("--bm25-stopwords", default=None, help="BM25 stopwords: english or none (default english)")
    ex = pi.add_mutually_exclusive_group()
    ex.add_argument("--upsert", action="store_true", help="replace documents whose id is already in the index")
    ex.add_argument("--resume", action="store_true",
                    help="skip documents already indexed unchanged (finish an interrupted run of the same corpus)")
    pi.add_argument("--write-wait-s", type=float, default=10.0, metavar="S",
                    help="seconds to wait for another writer of the index (hylex serve commits, another hylex command) before giving up [10]")
    pi.add_argument("--skip-invalid", metavar="REJECTS", default=None,
                    help="skip malformed lines instead of stopping; write them (line, error, text) to this JSONL")
    pi.add_argument("--encoder", metavar="MODULE:CALLABLE", default=None,
                    help="index with the encoder this callable returns instead of an LLM (e.g. a stub for "
                         "throughput tests); the encoder options are then ignored")
    g = pi.add_argument_group("Ray (pip install 'hylex[ray]'): encode on an actor pool, commit staged segments")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="index on a Ray cluster (ADDRESS, or a local one when left out); the corpus and the index "
                        "directory must be on storage every node reaches")
    g.add_argument("--ray-actors", type=_positive_int, default=1, help="encoder actors (one model each) [1]")
    g.add_argument("--ray-gpus", type=float, default=0, help="GPUs per actor (0: CPU actors) [0]")
    pi.add_argument("--merge-factor", type=int, default=None,
                    help="a new index's merge policy: merge once this many segments share a size tier (default 10)")
    pi.add_argument("--merge-max-docs", type=int, default=None,
                    help="a new index's merge policy: automatic merges write segments of at most this many "
                         "documents (default 250,000; bounds indexing memory)")
    pi.add_argument("--no-auto-merge", action="store_true", help="a new index merges only on `hylex merge`")
    g = pi.add_argument_group("sparse postings (a new index's storage; default: 16-bit impacts, no pruning)")
    g.add_argument("--sparse-bits", type=int, choices=[8, 16], default=None, help="impact precision (default 16)")
    g.add_argument("--keep-top", type=_positive_int, default=None,
                   help="static pruning: keep each term's N largest postings (approximate, smaller, faster)")
    g.add_argument("--keep-fraction", type=float, default=None,
                   help="static pruning: keep this fraction (0, 1] of each term's largest postings")
    _add_encoder_args(pi)
    pi.set_defaults(func=cmd_index)

    ps = sub.add_parser("search", help="search an index with one or more query texts")
    ps.add_argument("index", help="index directory")
    ps.add_argument("queries", nargs="+", help="query text(s)")
    ps.add_argument("-k", type=int, default=10, help="hits per query")
    ps.add_argument("--json", action="store_true", help="print JSON")
    ps.add_argument("--filter", default=None,
                    help='metadata filter as JSON, e.g. \'{"lang": "en", "year": {"$gte": 2020}}\'')
    _add_search_args(ps)
    _add_encoder_args(ps, with_settings=False)
    ps.set_defaults(func=cmd_search)

    pe = sub.add_parser("eval", help="evaluate dense, sparse, BM25 and hybrid search on a BEIR dataset")
    pe.add_argument("beir_dir", help="folder with queries.jsonl and qrels/<split>.tsv")
    pe.add_argument("--index", required=True, help="index built from the dataset's corpus.jsonl")
    pe.add_argument("--split", default="test")
    pe.add_argument("-k", type=int, default=100, help="hits per query in the run files")
    pe.add_argument("--runs-dir", default=None, help="where TREC run files go (default INDEX/runs)")
    pe.add_argument("--json", action="store_true", help="print one JSON object")
    _add_search_args(pe)
    _add_encoder_args(pe, with_settings=False)
    pe.set_defaults(func=cmd_eval)

    pg = sub.add_parser("get", help="print stored documents by id (JSON lines)")
    pg.add_argument("index", help="index directory")
    pg.add_argument("ids", nargs="+", help="document ids")
    pg.set_defaults(func=cmd_get)

    pdl = sub.add_parser("delete", help="delete documents by id or by metadata filter (durable on return)")
    pdl.add_argument("index", help="index directory")
    pdl.add_argument("--ids", default=None, help="comma-separated ids, or @FILE with one id per line")
    pdl.add_argument("--filter", default=None, help='metadata filter as JSON, e.g. \'{"source": "old"}\'')
    pdl.add_argument("--all", action="store_true", help="delete every document (an empty filter is refused)")
    pdl.add_argument("--dry-run", action="store_true",
                     help="only count the documents the command would delete (nothing is written)")
    pdl.add_argument("--write-wait-s", type=float, default=10.0, metavar="S",
                     help="seconds to wait for another writer of the index (hylex serve commits, another hylex command) before giving up [10]")
    pdl.set_defaults(func=cmd_delete)

    pm = sub.add_parser("merge", help="merge segments into one, dropping deleted documents")
    pm.add_argument("index", help="index directory")
    pm.add_argument("--segments", default=None, help="comma-separated segment names (default: all)")
    pm.add_argument("--write-wait-s", type=float, default=10.0, metavar="S",
                    help="seconds to wait for another writer of the index (hylex serve commits, another hylex command) before giving up [10]")
    pm.set_defaults(func=cmd_merge)

    pv2 = sub.add_parser("serve", help="serve an index over HTTP (FastAPI + uvicorn)")
    pv2.add_argument("index", help="index directory")
    pv2.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    pv2.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one, printed)")
    pv2.add_argument("--workers", type=_positive_int, default=1,
                     help="serving processes sharing the port, each with its own model and cores/workers threads "
                          "(default 1)")
    pv2.add_argument("--encoder", default=None, metavar="MODULE:CALLABLE",
                     help="build the query/document encoder with this callable instead of loading the index's "
                          "model (it must match the index's dimension and vocabulary)")
    pv2.add_argument("--write-wait-s", type=float, default=10.0,
                     help="how long a write waits for another writer of the index (then 503 with Retry-After)")
    pv2.add_argument("--api-key-env", default=None, metavar="VAR",
                     help="require the API key held in this environment variable (X-API-Key header)")
    pv2.add_argument("--auth", default="writes", choices=["writes", "all"],
                     help="what the API key protects: writes only, or every request")
    pv2.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (413 above)")
    pv2.add_argument("--max-batch", type=_positive_int, default=1024, help="most queries or documents per request")
    pv2.add_argument("--max-hits", type=_positive_int, default=100_000,
                     help="most hits (queries x k) one search may ask for; beyond, 413 [100000]")
    pv2.add_argument("--max-response-mb", type=float, default=64.0,
                     help="largest search response, documents included; beyond, 413 [64]")
    pv2.add_argument("--max-query-chars", type=_positive_int, default=10_000,
                     help="longest query text, for every arm; beyond, 413 [10000]")
    pv2.add_argument("--header-timeout", type=float, default=10.0,
                     help="seconds a connection has to send its request line and headers; then 408 and closed [10]")
    pv2.add_argument("--body-timeout", type=float, default=60.0,
                     help="seconds a request has to send its body once its headers are in; then 408 and closed [60]")
    pv2.add_argument("--max-connections", type=_positive_int, default=1000,
                     help="open connections per serving process; a request on one beyond gets 503 [1000]")
    pv2.add_argument("--no-batching", action="store_true",
                     help="encode each request's queries alone (default: concurrent requests share a forward pass)")
    pv2.add_argument("--batch-wait-ms", type=float, default=5.0,
                     help="how long a query waits for companions to share its forward pass")
    pv2.add_argument("--max-queue", type=_positive_int, default=1024,
                     help="most query texts waiting to be encoded; beyond, 503 with Retry-After")
    pv2.add_argument("--max-batch-tokens", type=_positive_int, default=2048,
                     help="most tokens (prompt included, estimated) per query forward pass: requests are answered "
                          "batch by batch [2048]")
    pv2.add_argument("--request-timeout", type=float, default=30.0,
                     help="seconds a search may wait for its query encoding; one that cannot make it gets 503 with "
                          "Retry-After at once [30]")
    _add_encoder_args(pv2, with_settings=False)
    pv2.set_defaults(func=cmd_serve)

    pt = sub.add_parser("tune", help="fine-tune the encoder's dense and sparse representations (LoRA) on "
                                     "labelled pairs, a BEIR train split, or a bare corpus")
    pt.add_argument("data", nargs="*", help="a BEIR folder (with --split), or JSONL pair files (.gz or .zst too) "
                                            '{"query", "pos": [...], "neg": [...]}')
    pt.add_argument("--out", required=True, help="the tuned model folder to write (must not exist)")
    pt.add_argument("--split", default="train", help="BEIR qrels split to train on (never test) [train]")
    pt.add_argument("--allow-test", action="store_true", help=argparse.SUPPRESS)
    pt.add_argument("--from-corpus", default=None, metavar="CORPUS",
                    help="no labels: build pairs from a corpus's documents (see --pairs-from)")
    pt.add_argument("--pairs-from", default="auto", metavar="{auto,title,crop,lead,generate}[+...]",
                    help="--from-corpus pairs: title -> body, two random spans of a document, its opening 4-12 "
                         "words -> the rest, a question an instruct LLM writes for it (--generator) -> the "
                         "document, or auto (title where most documents have one, else lead); several joined by "
                         "+ (e.g. lead+generate) mix them in equal shares, each on its own documents [auto]")
    pt.add_argument("--generator", default="qwen2.5-0.5b",
                    help="--pairs-from generate: the instruct model that writes the queries [qwen2.5-0.5b]")
    pt.add_argument("--generate", type=_positive_int, default=None, metavar="N",
                    help="--pairs-from generate: documents to write queries for (~0.5 s each on 2 CPU cores) "
                         "[steps x batch + the dev queries, or its equal share of them in a + mix, where "
                         "questions dropped as generic are made up by further documents]")
    pt.add_argument("--cap", type=_int_or_none_list, default=None, help="per pair file, most groups (e.g. 2000,all)")
    pt.add_argument("--source-weights", type=_float_list, default=None,
                    help="per pair file, sampling weights (with --total)")
    pt.add_argument("--total", type=_positive_int, default=None, help="groups sampled by --source-weights")
    pt.add_argument("--no-mine", action="store_true", help="no mined hard negatives (in-batch and labelled ones only)")
    pt.add_argument("--mine-skip", type=int, default=3,
                    help="ranks left out at the top when mining (unjudged positives) [3]")
    pt.add_argument("--mine-depth", type=_positive_int, default=50, help="deepest rank mined [50]")
    pt.add_argument("--mine-n", type=_positive_int, default=7, help="negatives mined per query [7]")
    pt.add_argument("--mine-index", default=None, metavar="INDEX",
                    help="mine with this hylex index's search (its own model: e.g. a first tuned model's index of "
                         "the corpus, for a second round) instead of BM25 over the corpus; the --mine-skip/depth/n "
                         "window applies")
    pt.add_argument("--mine-mode", default="hybrid", choices=["hybrid", "dense", "sparse", "bm25"],
                    help="the --mine-index search: hybrid (its stored fusion) or one arm [hybrid]")
    pt.add_argument("--dev", type=_dev_size, default=0.1,
                    help="training queries held out for model selection: a fraction or a count [0.1]")
    pt.add_argument("--max-dev", type=_positive_int, default=200, help="most dev queries [200]")
    pt.add_argument("--dev-distractors", type=int, default=300,
                    help="random passages added to the dev pool (corpus, or other queries' positives) [300]")
    g = pt.add_argument_group("training")
    g.add_argument("--steps", type=_positive_int, default=500)
    g.add_argument("--batch", type=_positive_int, default=16, help="queries per step [16]")
    g.add_argument("--negatives", type=int, default=3, help="hard negatives per query in a step [3]")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps warming up [0.1]")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--accumulate", type=_positive_int, default=1,
                   help="split each step into this many passes (memory; in-batch negatives stay per pass unless "
                        "--grad-cache)")
    g.add_argument("--grad-cache", action="store_true",
                   help="with --accumulate N: every query sees the whole step's passages, as one batch, in one "
                        "pass's memory (GradCache: one extra forward pass per step)")
    g.add_argument("--float32-loss", action="store_true",
                   help="compute the loss's scores in float32 outside the bf16 autocast (off: bfloat16 score "
                        "matmuls where autocast runs)")
    g.add_argument("--lora-rank", type=_positive_int, default=16)
    g.add_argument("--lora-alpha", type=float, default=32.0)
    g.add_argument("--lora-targets", default=None, help="comma-separated layer names [all linear layers]")
    g.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    g.add_argument("--adapter-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the saved LoRA adapter (bfloat16: half the file) [float32]")
    g.add_argument("--query-tokens", type=_positive_int, default=64, help="query text tokens in training [64]")
    g.add_argument("--passage-tokens", type=_positive_int, default=128, help="passage text tokens in training [128]")
    g.add_argument("--temperature", type=float, default=0.01, help="dense InfoNCE temperature [0.01]")
    g.add_argument("--dense-weight", type=float, default=1.0)
    g.add_argument("--sparse-weight", type=float, default=1.0)
    g.add_argument("--sparse-temperature", type=_float_or_auto, default="auto",
                   help="divide the sparse dot products by this in the InfoNCE (1 = unscaled, PromptReps; auto = "
                        "the lowest starting loss of 1/3/10/30/100 on the first 8 training batches: 10 on SciFact "
                        "and NFCorpus, where 1 lost the sparse arm) [auto]")
    g.add_argument("--flops", type=float, default=0.0, help="FLOPS regularisation weight (with --expansion) [0]")
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute activations in the backward pass: ~half the peak memory, about the same "
                        "step time on this CPU [on]")
    g.add_argument("--mask-false-negatives", action=argparse.BooleanOptionalAction, default=True,
                   help="leave a query's other known positives that come into its batch out of its InfoNCE "
                        "softmax [on]")
    g.add_argument("--bf16", default="auto", choices=["auto", "on", "off"],
                   help="bfloat16 autocast: auto = where fast (CUDA, AMX or AVX512-BF16 CPUs)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--save-every", type=_positive_int, default=100, help="checkpoint every N steps [100]")
    g.add_argument("--eval-every", type=_positive_int, default=100, help="dev evaluation every N steps [100]")
    g.add_argument("--patience", type=_positive_int, default=None,
                   help="stop after N evaluations without a better dev score")
    g.add_argument("--select-on", default="dense+sparse",
                   help="dev score that picks the kept evaluation: an arm or a fusion [dense+sparse]")
    g.add_argument("--fusion-from", default="auto", choices=["auto", "dev", "base"],
                   help="the fusion the model card stores: dev = the best on the dev queries; base = the one the "
                        "base model carries; auto = base when the dev holds pseudo-queries built from a corpus "
                        "(--from-corpus), else dev [auto]")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the work folder")
    g.add_argument("--workdir", default=None, help="checkpoints and log [OUT.work]")
    # tuning starts from the zero-shot base (as every measured run did), not the default
    _add_encoder_args(pt, with_settings=True, model_default=f"{TUNE_BASE}: the zero-shot base; smollm2-135m-hylex "
                                                            f"continues the shipped adapter")
    pt.set_defaults(func=cmd_tune)

    pf = sub.add_parser("fuse", help="choose the fusion plain hybrid searches of an index use (arms and weights), "
                                     "on a training split's queries and qrels, and store it in the index")
    pf.add_argument("index", help="index directory (holding the collection's corpus)")
    pf.add_argument("beir_dir", help="BEIR folder with queries.jsonl and qrels/<split>.tsv")
    pf.add_argument("--split", default="train", help="qrels split to choose on (never test) [train]")
    pf.add_argument("--arms", default=None, help="arms to consider, comma-separated [dense,sparse,bm25]")
    pf.add_argument("--step", type=float, default=0.1, help="weight grid step [0.1]")
    pf.add_argument("--metric", default="nDCG@10", help="metric to maximise [nDCG@10]")
    pf.add_argument("--depth", type=_positive_int, default=1000, help="candidates per arm [1000]")
    pf.add_argument("--show", type=_positive_int, default=5, help="grid points printed [5]")
    pf.add_argument("--dry-run", action="store_true", help="print the choice without storing it")
    pf.add_argument("--allow-test", action="store_true", help=argparse.SUPPRESS)
    pf.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the index's writer lock [10]")
    pf.add_argument("--json", action="store_true", help="print JSON")
    _add_encoder_args(pf, with_settings=False)
    pf.set_defaults(func=cmd_fuse)

    pst = sub.add_parser("stats", help="show an index's segments, counts, sizes, model and settings")
    pst.add_argument("index", help="index directory")
    pst.add_argument("--json", action="store_true", help="print JSON")
    pst.set_defaults(func=cmd_stats)

    pv = sub.add_parser("validate", help="check every file of an index (checksums, counts); non-zero exit on a problem")
    pv.add_argument("index", help="index directory")
    pv.set_defaults(func=cmd_validate)

    pd = sub.add_parser("demo", help="index a sample of Python's own docstrings with the default model and search")
    pd.add_argument("queries", nargs="*", help="queries (default: a few examples)")
    pd.add_argument("--limit", type=_positive_int, default=300, help="sample documents")
    pd.add_argument("--workdir", default=None, help="where the sample index goes (default CACHE/demo)")
    pd.add_argument("-k", type=int, default=3)
    pd.add_argument("--mode", default="hybrid", choices=["dense", "sparse", "bm25", "hybrid"])
    pd.add_argument("--model", default=None,
                    help="another model to try on the sample (a packaged name or a tuned folder); its index goes "
                         "beside the default's [the packaged default]")
    _add_encoder_args(pd, with_settings=False)
    pd.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except HylexError as e:
        print(f"hylex: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`hylex stats IDX | head -1`): stop quietly, as other Unix tools do; stdout goes to
        # /dev/null so the interpreter's final flush does not complain either
        _silence_stdout()
        return 141
    except OSError as e:  # a file the user named cannot be read or written
        import errno

        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # not a path or permission problem
            print(f"hylex: error: no space left on the device{where}: free space and run again", file=sys.stderr)
            return 2
        print(f"hylex: error: {e.strerror or e}{where}: check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hylex: interrupted; committed segments are kept", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
