"""The HTTP endpoints: OpenAI's generation API, classification and NER for fine-tuned runs, health
and metrics. Every refusal is an OpenAI-style error object with the right 4xx status, so clients
raise their own typed exceptions and the server stays up."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..decode.text import TextStream
from ..errors import SpectuneError
from .scheduler import Job, QueueFull
from .schemas import ChatRequest, CompletionRequest, TextsRequest, error_body

ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify", "/v1/ner")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, kind, param, code), headers


def _error(status: int, message: str, **kw) -> JSONResponse:
    return JSONResponse(error_body(message, **kw), status_code=status)


class Guard:
    """ASGI middleware in front of every route: the API key, the body size cap, and the request
    counters and latencies (by route, so a scanner's random paths cannot flood the labels)."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cfg, metrics = self.state.cfg, self.state.metrics
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"
        t0, status = time.perf_counter(), [500]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if cfg.api_key and scope["path"] != "/health":
                given = headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                    why = "missing" if not given else "wrong"
                    reply = _error(401, f"{why} API key: send the header 'Authorization: Bearer <key>'",
                                   code="invalid_api_key")
                    return await reply(scope, receive, send_counted)
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cfg.max_body_bytes:
                return await self._too_large(scope, receive, send_counted)
            body, more = b"", True  # the whole (capped) body first, then handed to the route
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > cfg.max_body_bytes:
                    return await self._too_large(scope, receive, send_counted)
            delivered = False

            async def replay():
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: disconnects reach streaming responses

            await self.app(scope, replay, send_counted)
        finally:
            metrics.requests.labels(endpoint, str(status[0])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    async def _too_large(self, scope, receive, send):
        cap = self.state.cfg.max_body_bytes
        await _error(413, f"request body over this server's cap of {cap} bytes")(scope, receive, send)


def create_app(state, lifespan=None) -> FastAPI:
    app = FastAPI(title="spectune", version="1", lifespan=lifespan)
    app.add_middleware(Guard, state=state)
    cfg = state.cfg

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse(e.body, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            why = (first.get("ctx") or {}).get("error", "")
            return _error(400, f"invalid JSON body{': ' + why if why else ''}")
        where = ".".join(str(x) for x in first.get("loc", ())[1:])
        if not where:
            return _error(400, "expected a JSON object body (Content-Type: application/json)")
        return _error(400, f"{where}: {first.get('msg', 'invalid')}", param=where)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return _error(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):
        return _error(500, f"internal error: {type(e).__name__}", kind="server_error")

    def ready():
        if state.error:
            raise ApiError(503, f"the server failed to load its models: {state.error}", "server_error")
        if not state.ready.is_set():
            raise ApiError(503, "models are still loading; retry shortly", "server_error",
                           headers={"Retry-After": "2"})

    @app.get("/health")
    def health():
        if state.error:
            return JSONResponse({"status": "failed", "error": state.error}, status_code=503)
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "models": state.names()}

    @app.get("/metrics")
    def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def models():
        ready()
        created = int(state.started)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "spectune",
                                            "task": kind} for name, kind in state.names().items()]}

    def generator_for(name: str):
        ready()
        if state.generator is None or name != state.lm_name:
            served = [n for n, k in state.names().items() if k == "lm"]
            raise ApiError(404, f"model {name!r} is not served here for generation; served: {served}",
                           param="model", code="model_not_found")
        return state.generator

    def submit(body, prompt, raw: bool) -> Job:
        gen = generator_for(body.model)
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > cfg.max_tokens:
            raise ApiError(400, f"max_tokens {asked} is over this server's cap of {cfg.max_tokens}",
                           param="max_tokens")
        try:
            settings = gen.settings(max_new_tokens=asked or min(cfg.default_max_tokens, cfg.max_tokens),
                                    temperature=body.temperature, top_p=body.top_p, seed=body.seed, raw=raw)
            request = gen.request(prompt, settings)
        except SpectuneError as e:
            code = "context_length_exceeded" if "context" in e.message else None
            raise ApiError(400, e.message, param=e.where, code=code) from None
        if len(request.prompt) > cfg.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {len(request.prompt)} tokens, over this server's cap of "
                           f"{cfg.max_prompt_tokens}", param="messages" if not raw else "prompt",
                           code="context_length_exceeded")
        job = Job(request, TextStream(gen.tokenizer, body.stops()), asyncio.get_running_loop())
        try:
            state.scheduler.submit(job)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy ({e}); retry after a second", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        return job

    def usage(job: Job) -> dict:
        m, r = job.request.metrics, job.request
        out = {"prompt_tokens": len(r.prompt), "completion_tokens": m.new_tokens,
               "total_tokens": len(r.prompt) + m.new_tokens, "target_passes": m.target_passes}
        if state.generator.drafter is not None:
            out.update(drafted_tokens=m.drafted, accepted_tokens=m.accepted, tau=round(m.tau, 3))
        return out

    def finished(job: Job) -> str:
        state.metrics.finished(len(job.request.prompt), job.request.metrics)
        if job.first_token is not None:
            state.metrics.ttft.observe(job.first_token - job.submitted)
        return "length" if job.request.finish_reason == "length" else "stop"

    async def collect(job: Job) -> str:
        parts = []
        try:
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    parts.append(value)
                elif kind == "error":
                    raise ApiError(500, value, "server_error")
                else:
                    return "".join(parts)
        finally:
            job.request.cancelled = True  # no-op once ended; frees the row if the client left mid-way

    async def stream(job: Job, chunk, include_usage: bool):
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        def event(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            first = chunk(None, None)
            if first is not None:
                yield event(first)
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    yield event(chunk(value, None))
                elif kind == "error":
                    yield event(error_body(value, "server_error"))
                    return
                else:
                    break
            yield event(chunk("", finished(job)))
            if include_usage:
                yield event({**chunk("", None), "choices": [], "usage": usage(job)})
            yield "data: [DONE]\n\n"
        finally:
            job.request.cancelled = True

    def respond(body, job: Job, chunk) -> StreamingResponse:
        include = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream(job, chunk, include), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        job = submit(body, messages, raw=False)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}

        if body.stream:
            def chunk(piece, reason):
                if piece is None:  # the opening chunk names the role
                    delta = {"role": "assistant", "content": ""}
                else:
                    delta = {"content": piece} if piece else {}
                return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]}

            return respond(body, job, chunk)
        text = await collect(job)
        reason = finished(job)
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": reason, "logprobs": None}], "usage": usage(job)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        job = submit(body, body.prompt, raw=True)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": body.model}

        if body.stream:
            def chunk(piece, reason):
                if piece is None:
                    return None  # completions have no opening chunk
                return {**head, "choices": [{"index": 0, "text": piece, "finish_reason": reason, "logprobs": None}]}

            return respond(body, job, chunk)
        text = await collect(job)
        reason = finished(job)
        return {**head, "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
                "usage": usage(job)}

    def predictor_for(name: str, kind: str):
        ready()
        found = state.predictors.get(name)
        if found is None or found.kind != kind:
            served = [n for n, k in state.names().items() if k == kind]
            raise ApiError(404, f"model {name!r} is not a {kind} model served here; served: {served}",
                           param="model", code="model_not_found")
        return found

    def predictions(body: TextsRequest, kind: str) -> list[dict]:
        p = predictor_for(body.model, kind)
        with state.lock(body.model):  # one batch at a time per model: they share the CPU anyway
            return p.classify(body.input) if kind == "classify" else p.ner(body.input)

    @app.post("/v1/classify")
    def classify(body: TextsRequest):
        results = predictions(body, "classify")
        return {"object": "list", "model": body.model,
                "data": [{"index": i, "label": r["label"], "score": r["probability"], "scores": r["probabilities"]}
                         for i, r in enumerate(results)]}

    @app.post("/v1/ner")
    def ner(body: TextsRequest):
        results = predictions(body, "ner")
        return {"object": "list", "model": body.model,
                "data": [{"index": i, "entities": [{k: e[k] for k in ("type", "text", "start", "end")}
                                                   for e in r["entities"]]} for i, r in enumerate(results)]}

    return app
