"""Running the service: ``hylex serve`` in one process, or in N worker processes that share one socket.

Every serving process puts the model work (query batches, document encoding), the searches and the commits on
its main thread, one task after another, and runs uvicorn on a second thread: on some machines torch encodes ~2x
slower on any thread but the first one that ran it, or once numba's OpenMP layer started a team on another thread
(``benchmarks/README.md``). A process loads its model and compiles the search kernels before it reports ready.

With ``workers`` > 1 the process started by ``hylex serve`` becomes a supervisor: it binds the listening socket
once, starts the workers (``spawn``: each a fresh interpreter, with ``cores / workers`` CPU threads unless told
otherwise), and waits until every one has reported ready or one has failed (then it stops them all and reports
the worker's error). The workers accept connections from the one shared socket (as gunicorn's and uvicorn's
workers do): a worker takes connections only while its event loop runs, so one that is starting takes none and
the connections waiting when one dies stay for the others (measured here: 101 / 99 of 200 sequential
requests, 102 / 98 from 8 concurrent clients). The supervisor restarts a worker that dies while serving (at most
``MAX_RESTARTS`` times a minute), and on SIGINT/SIGTERM asks every worker to shut down gracefully (requests in
flight answered, a write in flight committed whole or not at all), killing those still running after
``shutdown_timeout`` seconds. Workers write through the index's writer lock one commit at a time
(:meth:`hylex.service.app.Service.write`) and take up each other's commits before every read.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hylex.errors import HylexError
from hylex.service.connections import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    check_limits,
    server_config,
)

logger = logging.getLogger(__name__)

MAX_RESTARTS = 5  # a worker dying more often than this within RESTART_WINDOW seconds stops the service
RESTART_WINDOW = 60.0
# thread pools read their size from these when a process starts; set for the workers unless the user did
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass
class ServeConfig:
    """What ``hylex serve`` runs (plain values only: it is sent to the worker processes).

    Attributes:
        index: the index directory.
        host, port: where to listen (port 0: a free port, printed once ready).
        workers: serving processes (1: this process serves).
        app: keyword arguments of :func:`hylex.service.app.create_app` (api_key, auth, limits, batching, ...).
        encoder: ``"module:callable"`` returning the encoder (a :class:`hylex.indexing.TextEncoder`); default:
            the index's recorded model, loaded by each process.
        threads: CPU threads per process for torch, numba, FAISS and BLAS (default: all cores with one worker,
            ``cores // workers`` with several).
        warmup: load the model and compile the kernels before reporting ready.
        shutdown_timeout: seconds the supervisor waits for its workers to finish after SIGINT/SIGTERM.
        header_timeout, body_timeout: seconds a connection has to send its request's headers (from its opening,
            or from a kept-alive connection's next byte) and then its body; past either it gets 408 and is
            closed (:mod:`hylex.service.connections`).
        max_connections: open connections per process; a request on one beyond gets 503 and its connection is
            closed.
    """

    index: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    app: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    threads: int | None = None
    log_level: str = "warning"
    warmup: bool = True
    shutdown_timeout: float = 60.0
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def serve(cfg: ServeConfig, announce: Callable[[str], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status (0 after a clean shutdown).

    ``announce`` gets one line once every process is ready (default: printed on stdout), naming the address.
    Errors found before serving (a bad index, a port in use, a worker that cannot load its model) raise
    :class:`~hylex.errors.HylexError`.
    """
    if isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1:
        raise HylexError(f"workers must be an integer >= 1, got {cfg.workers!r}")
    if cfg.threads is not None and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int)
                                    or cfg.threads < 1):
        raise HylexError(f"threads must be an integer >= 1, got {cfg.threads!r}")
    from hylex.indexing.index import read_manifest

    read_manifest(cfg.index)  # a missing or foreign directory is named before anything starts
    check_limits(cfg.header_timeout, cfg.body_timeout, cfg.max_connections)
    if cfg.encoder is not None:
        _split_spec(cfg.encoder)
    announce = announce or (lambda line: print(line, flush=True))
    sock = _listen(cfg.host, cfg.port)
    address = _address(sock)
    threads = cfg.threads or (max(1, (os.cpu_count() or 1) // cfg.workers) if cfg.workers > 1 else None)
    what = f"{cfg.workers} worker{'s' if cfg.workers > 1 else ''}"
    if threads:
        what += f", {threads} thread{'s' if threads > 1 else ''} each"

    def ready():
        announce(f"serving {cfg.index} at {address} ({what})")

    try:
        if cfg.workers == 1:
            return serve_here(cfg, sock, threads=threads, on_ready=ready)
        return _Supervisor(cfg, sock, threads).run(ready)
    finally:
        sock.close()


# -- one serving process -------------------------------------------------------------------------------------------
def serve_here(cfg: ServeConfig, sock: socket.socket, threads: int | None = None, worker: dict | None = None,
               on_ready: Callable[[], None] | None = None) -> int:
    """Serve on the listening ``sock`` in this process until SIGINT/SIGTERM (or the server stops); model and
    index work on this (the main) thread, HTTP on a second one, started once the model is loaded."""
    from hylex.service.app import create_app

    if threads is not None:
        _set_threads(threads)
    app_kwargs = dict(cfg.app)
    # a service draws no progress bars (per request they are noise in its log)
    app_kwargs["encoder_kwargs"] = {**app_kwargs.get("encoder_kwargs", {}), "progress": False,
                                    **({"threads": threads} if threads is not None else {})}
    if cfg.encoder:
        encoder = load_encoder(cfg.encoder)
    else:
        encoder = None
        _quiet_transformers()
    batching = app_kwargs.pop("batching", True)
    app = create_app(cfg.index, encoder=encoder, batching=batching, model_thread=not batching, worker=worker,
                     **app_kwargs)
    service = app.state.service
    try:
        if cfg.warmup:
            warm_up(service)
    except BaseException:
        service.close()
        raise
    _raise_fd_limit(cfg.max_connections)
    server = _make_server(server_config(app, header_timeout=cfg.header_timeout, body_timeout=cfg.body_timeout,
                                        max_connections=cfg.max_connections, log_level=cfg.log_level,
                                        timeout_graceful_shutdown=None), on_ready)
    batcher = service.batcher

    def stop(*_):
        server.should_exit = True

    def http():
        try:
            server.run(sockets=[sock])
        except BaseException:  # uvicorn exits with SystemExit when its startup fails
            logger.exception("the HTTP server failed")
        finally:
            if batcher is not None:
                batcher.close()  # ends the model loop below once the server has shut down

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=http, name="hylex-http")
    thread.start()
    try:
        if batcher is not None:
            batcher.run()  # the model's loop, on this thread
        while thread.is_alive():  # without batching: the server's own threads do the work; wake for signals
            thread.join(0.2)
    finally:
        server.should_exit = True
        thread.join()
        for sig, h in old.items():
            signal.signal(sig, h)
    return 0 if server.started else 2


def warm_up(service) -> None:
    """Load the encoder and run one search of every arm on the numba kernels, so the first request pays no model
    load or kernel compilation (and every later search uses the compiled kernels, whatever its size: see
    :func:`hylex.kernels.topk.use_numba`); then time query encoding for admission (:meth:`Service.calibrate`)."""
    from hylex.kernels import kernel_backend, load_kernels

    t = time.perf_counter()
    service.encoder  # noqa: B018 (loads the model)
    load_kernels()
    with kernel_backend("numba"):
        service.searcher.search(["warm up"], k=1, mode="hybrid", arms=("dense", "sparse", "bm25"))
    service.calibrate()  # admission starts from measured encoding speed, not from the first requests'
    logger.info("warmed up in %.1f s", time.perf_counter() - t)


def load_encoder(spec: str):
    """Build the encoder named by ``"module:callable"`` (called with no arguments)."""
    from hylex.indexing.protocols import TextEncoder

    module, name = _split_spec(spec)
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise HylexError(f"cannot import encoder {spec!r} ({e}): give it as module:callable, importable here") \
            from None
    enc = obj()
    if not isinstance(enc, TextEncoder):
        raise HylexError(f"{spec} returned a {type(enc).__name__}, which lacks the encoder interface (dim, "
                         f"vocab_size, describe, encode_queries, encode_documents: hylex.indexing.TextEncoder)")
    return enc


def _split_spec(spec: str) -> tuple[str, str]:
    module, sep, name = str(spec).partition(":")
    if not sep or not module or not name:
        raise HylexError(f"encoder {spec!r} must be given as module:callable, e.g. mypackage.encoders:make")
    return module, name


def _quiet_transformers() -> None:
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _set_threads(n: int) -> None:
    """CPU threads of this process's pools (torch, numba, FAISS)."""
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):  # pragma: no cover
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass


def _raise_fd_limit(max_connections: int) -> None:
    """Raise this process's open-file limit to fit ``max_connections`` sockets and the index's files, when the
    hard limit allows (a connection past the limit is not even accepted: the listening socket stalls)."""
    try:
        import resource
    except ImportError:  # pragma: no cover (not on Windows)
        return
    want = max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # pragma: no cover
            target = soft
    if target < want:
        logger.warning("the open-file limit (%d) is below --max-connections %d plus the index's files: raise "
                       "ulimit -n, or lower --max-connections", target, max_connections)


def _make_server(config, on_ready: Callable[[], None] | None):
    """uvicorn's Server, telling ``on_ready`` once it listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None:
                on_ready()

    return Server(config)


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free one), inheritable by the workers."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise HylexError(f"port must be an integer in [0, 65535], got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise HylexError(f"cannot listen on host {host!r} ({e}): give an address such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise HylexError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port or --host") \
            from None
    sock.set_inheritable(True)
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- several processes -----------------------------------------------------------------------------------------------
def _worker_main(cfg: ServeConfig, sock: socket.socket, worker_id: int, threads: int | None, conn) -> None:
    """A worker process: serve on the shared socket; tell the supervisor ("ready", pid) or ("error", message)."""
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.WARNING),
                        format=f"%(levelname)s worker {worker_id} %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until serving: the supervisor decides (it sends SIGTERM)
    parent = os.getppid()

    def orphaned():
        # a supervisor killed outright (SIGKILL, OOM) cannot stop its workers: they stop themselves, gracefully
        while os.getppid() == parent:
            time.sleep(1.0)
        logger.warning("the supervisor (pid %d) is gone: shutting down", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, name="hylex-orphan-watch", daemon=True).start()

    def ready():
        conn.send(("ready", os.getpid()))

    try:
        rc = serve_here(cfg, sock, threads=threads, worker={"worker": worker_id, "workers": cfg.workers},
                        on_ready=ready)
    except HylexError as e:
        conn.send(("error", str(e)))
        sys.exit(2)
    except BaseException as e:
        logger.exception("worker %d failed", worker_id)
        conn.send(("error", f"{type(e).__name__}: {e}"))
        sys.exit(2)
    sys.exit(rc)


class _Supervisor:
    def __init__(self, cfg: ServeConfig, sock: socket.socket, threads: int | None):
        self.cfg, self.sock, self.threads = cfg, sock, threads
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, Any] = {}  # worker id -> Process
        self.conns: dict[int, Any] = {}  # worker id -> the end of its pipe we read
        self.ready: set[int] = set()
        self.deaths: list[float] = []
        self.stopping = False

    def start(self, i: int) -> None:
        recv, send = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_worker_main, args=(self.cfg, self.sock, i, self.threads, send),
                             name=f"hylex-worker-{i}")
        p.start()
        send.close()
        self.procs[i], self.conns[i] = p, recv
        self.ready.discard(i)

    def run(self, on_ready: Callable[[], None]) -> int:
        saved = {k: os.environ.get(k) for k in THREAD_ENV}
        if self.threads is not None:
            for k in THREAD_ENV:  # the workers' pools size themselves from these when they start
                os.environ.setdefault(k, str(self.threads))

        def stop(*_):
            self.stopping = True

        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        announced = False
        try:
            for i in range(self.cfg.workers):
                self.start(i)
            while not self.stopping:
                waitables = [p.sentinel for p in self.procs.values()] + list(self.conns.values())
                for obj in multiprocessing.connection.wait(waitables, timeout=0.5):
                    self._handle(obj)
                if not announced and len(self.ready) == self.cfg.workers:
                    announced = True
                    on_ready()
            return 0
        finally:
            self._stop_all()
            for sig, h in old.items():
                signal.signal(sig, h)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _handle(self, obj) -> None:
        for i, conn in list(self.conns.items()):
            if obj is conn:
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    self.conns.pop(i).close()  # the worker is gone; its sentinel tells the rest
                    return
                if kind == "ready":
                    self.ready.add(i)
                    logger.info("worker %d (pid %d) is ready", i, value)
                else:
                    raise HylexError(f"worker {i} could not start: {value}")
                return
        for i, p in list(self.procs.items()):
            if obj == p.sentinel:
                p.join()
                if self.stopping:
                    return
                if i not in self.ready:
                    raise HylexError(f"worker {i} exited with code {p.exitcode} before it was ready (run with "
                                     f"--verbose for its log)")
                now = time.monotonic()
                self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
                if len(self.deaths) > MAX_RESTARTS:
                    raise HylexError(f"workers died {len(self.deaths)} times within {RESTART_WINDOW:g} s (last: "
                                     f"worker {i}, exit code {p.exitcode}): stopping the service")
                logger.warning("worker %d (pid %d) exited with code %s; starting a new one", i, p.pid, p.exitcode)
                conn = self.conns.pop(i, None)
                if conn is not None:
                    conn.close()
                self.start(i)
                return

    def _stop_all(self) -> None:
        alive = [p for p in self.procs.values() if p.is_alive()]
        for p in alive:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.cfg.shutdown_timeout
        for p in alive:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in alive:
            if p.is_alive():
                logger.warning("worker %s did not stop within %g s: killing it", p.name, self.cfg.shutdown_timeout)
                p.kill()
                p.join(5)
        for conn in self.conns.values():
            conn.close()


__all__ = ["ServeConfig", "load_encoder", "serve", "serve_here", "warm_up"]
