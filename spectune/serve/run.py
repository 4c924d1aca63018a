"""Starting and stopping the server: check what to serve, bind, load the models in the background
(/health says "loading" until they are ready), run uvicorn, and on SIGTERM stop accepting, let
in-flight requests finish (up to --shutdown-timeout), stop the engine thread, exit 0."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from ..config import ServeConfig
from ..errors import SpectuneError
from .metrics import ServerMetrics


class ServerState:
    """What the endpoints read: the loaded models, the engine's scheduler, readiness, metrics."""

    def __init__(self, cfg: ServeConfig):
        self.cfg, self.metrics, self.started = cfg, ServerMetrics(), time.time()
        self.ready, self.error = threading.Event(), None
        self.generator = self.scheduler = None
        self.lm_name = cfg.name or (None if cfg.model == "none" else cfg.model)
        self.tasks = dict(spec.split("=", 1) for spec in cfg.task_model or [])  # name -> run folder
        self.predictors: dict = {}
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in self.tasks}

    def names(self) -> dict[str, str]:
        """Served model names -> task (lm, classify, ner)."""
        out = {self.lm_name: "lm"} if self.lm_name else {}
        return out | {name: p.kind for name, p in self.predictors.items()}

    def lock(self, name: str) -> threading.Lock:
        return self._locks[name]

    def check(self) -> None:
        """Fail fast, before binding, on what can be checked without loading weights."""
        from ..models import resolve_model
        from ..run import RUN_FILE, read_run

        if self.cfg.model != "none" and not (Path(self.cfg.model) / RUN_FILE).is_file():
            resolve_model(self.cfg.model)
        for name, path in self.tasks.items():
            kind = read_run(path).get("task")
            if kind not in ("classify", "ner"):
                raise SpectuneError(f"{name}={path} is a {kind} run; --task-model serves classify and ner runs "
                                    "(serve an lm run with --model RUN_DIR)", where="task_model")
        if self.lm_name in self.tasks:
            raise SpectuneError(f"{self.lm_name!r} names both the generation model and a task model", where="name")

    def load(self) -> None:
        from ..generate import Generator
        from ..predict import Predictor
        from .scheduler import Scheduler

        cfg = self.cfg
        if cfg.model != "none":  # a model spec, or a fine-tuned lm run (full or LoRA)
            self.generator = Generator(cfg.model, dtype=cfg.dtype, draft=cfg.draft, quantize=cfg.quantize,
                                       compile=cfg.compile, batched=cfg.max_batch > 1)
            self.scheduler = Scheduler(self.generator, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                                       metrics=self.metrics)
        for name, path in self.tasks.items():
            self.predictors[name] = Predictor(path)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SpectuneError(f"cannot listen on {host}:{port}: {e.strerror}", where="port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class():
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """SIGTERM is the orchestrator's "please stop": drain, then exit 0 (uvicorn would re-raise
        the signal after draining, so the process would end as killed)."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                self._captured_signals.remove(sig)
                print("spectune: SIGTERM: finishing in-flight requests, accepting no new ones", file=sys.stderr,
                      flush=True)

    return Server


def serve(cfg: ServeConfig) -> int:
    import uvicorn

    from .app import create_app

    if cfg.api_key is None:
        cfg.api_key = os.environ.get("SPECTUNE_API_KEY") or None
    state = ServerState(cfg)
    state.check()
    sock = _bind(cfg.host, cfg.port)
    server: uvicorn.Server | None = None

    def load() -> None:
        try:
            state.load()
            state.ready.set()
            print(f"spectune: ready: {', '.join(f'{n} ({k})' for n, k in state.names().items())}", file=sys.stderr,
                  flush=True)
        except SpectuneError as e:
            state.error = str(e)
        except Exception as e:  # noqa: BLE001 - any failure to load ends the server with one line
            state.error = f"{type(e).__name__}: {e}"
        if state.error:
            print(f"spectune: error: {state.error}", file=sys.stderr, flush=True)
            server.should_exit = True

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=load, name="spectune-load", daemon=True).start()
        yield
        if state.scheduler is not None:  # uvicorn has drained the connections: let the engine finish too
            import asyncio

            await asyncio.to_thread(state.scheduler.close, cfg.shutdown_timeout)

    app = create_app(state, lifespan=lifespan)
    host, port = sock.getsockname()[:2]
    auth = "API key required" if cfg.api_key else "no API key"
    print(f"spectune: serving on http://{host}:{port} ({auth}); loading models...", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=cfg.shutdown_timeout,
                            access_log=False)
    server = _server_class()(config)
    server.run(sockets=[sock])
    return 2 if state.error else 0
