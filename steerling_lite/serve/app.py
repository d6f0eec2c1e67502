"""The ASGI app (FastAPI): the OpenAI API over one loaded Steerling model.

Endpoints: ``GET /health`` (no key needed), ``GET /v1/models`` (and ``/v1/models/{id}``),
``POST /v1/completions``, ``POST /v1/chat/completions`` (instruct models), both with
``stream: true`` as server-sent events, and ``POST /v1/embeddings``. Steerling's extra
fields are described in :mod:`.schemas`; the checks and the ``max_tokens`` rounding in
:mod:`.prepare`.

Requests are checked in their handler, then queued (:class:`.queue.GenerationQueue`: one
generation at a time on the model's device, in arrival order). A client that disconnects
(mid-stream, or while waiting for a whole response) cancels its job: dropped if waiting,
stopped before its next denoising step if running.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from quant.jsonio import MAX_DEPTH, nesting_depth

from .. import ConceptCatalog, SteerlingError, SteeringBuilder, Steerling
from .errors import APIError, bad_request, describe_validation, first_param, install_handlers, log
from .prepare import ConceptNames, GenerationRequest, chat_prompt, completion_prompt, embedding_inputs, prepare
from .queue import GenerationQueue, Job, QueueFull
from .responses import Reply, error_event
from .runner import Engine
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ServeSettings:
    """How the server behaves.

    Attributes:
        model_name: the model's id in ``/v1/models`` and the ``model`` requests must name.
        aliases: other names accepted in ``model`` (e.g. the directory given on the command line).
        api_key: when set, ``/v1`` requests need ``Authorization: Bearer <key>``.
        max_body_bytes: largest request body (413 beyond).
        default_max_tokens: ``max_tokens`` when a request gives none.
        max_tokens_limit: largest ``max_tokens`` accepted (None: only the context limits it).
        max_queue: requests that may wait behind the running one (503 beyond).
    """

    model_name: str
    aliases: tuple[str, ...] = ()
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 128
    max_tokens_limit: int | None = None
    max_queue: int = 64


class ServerState:
    """What the app's handlers share: the model, its engine and names, the queue, the settings."""

    def __init__(self, lm: Steerling, settings: ServeSettings, queue: GenerationQueue | None = None):
        self.lm, self.settings = lm, settings
        self.queue = queue or GenerationQueue(settings.max_queue)
        self.started = int(time.time())
        interpretable = bool(lm.config.interpretable)
        catalog = ConceptCatalog()
        if interpretable:
            try:
                catalog = ConceptCatalog.for_model(lm)
            except SteerlingError as exc:
                log.warning("concept labels not loaded (%s): concepts are known by id only", exc)
                catalog = ConceptCatalog((), lm.config.concept.n_concepts)
        builder = SteeringBuilder(lm) if interpretable else None
        self.engine = Engine(lm, builder, catalog)
        self.names = ConceptNames(catalog, lm.config.concept.n_concepts) if interpretable else None

    def model_card(self) -> dict[str, Any]:
        """The model's entry in ``/v1/models``: OpenAI's fields, vLLM's ``max_model_len``, and ``steerling``."""
        cfg, lm = self.lm.config, self.lm
        return {
            "id": self.settings.model_name, "object": "model", "created": self.started, "owned_by": "steerling-lite",
            "max_model_len": cfg.block_size,
            "steerling": {
                "kind": "instruct" if cfg.instruct else "base", "interpretable": bool(cfg.interpretable),
                "context_length": cfg.block_size, "diffusion_block": cfg.diff_block_size,
                "known_concepts": cfg.concept.n_concepts if cfg.interpretable else 0,
                "quant": lm.quant, "dtype": str(lm.dtype).removeprefix("torch."), "device": str(lm.device),
            },
        }


def create_app(lm: Steerling, settings: ServeSettings, queue: GenerationQueue | None = None) -> FastAPI:
    """The ASGI app serving ``lm``; its :class:`ServerState` is ``app.state.steerling``.

    The queue's worker thread starts and stops with the app (ASGI lifespan).
    """
    state = ServerState(lm, settings, queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.queue.start()
        try:
            yield
        finally:
            state.queue.stop()

    app = FastAPI(title="steerling-lite", version="0.1.0", lifespan=lifespan,
                  description="The OpenAI API over a local Steerling model, with steering and attribution.")
    app.state.steerling = state
    install_handlers(app)

    async def require_key(request: Request) -> None:
        key = settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>'")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        q = state.queue
        return {"status": "ok", "model": settings.model_name, "queue_length": len(q), "waiting": q.waiting,
                "running": q.running, "completed": q.completed, "cancelled": q.cancelled}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [state.model_card()]}

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model(settings, model_id)
        return state.model_card()

    @v1.post("/completions")
    async def completions(request: Request):
        req = await read_body(request, CompletionRequest, settings.max_body_bytes)
        check_model(settings, req.model)

        def build() -> GenerationRequest:
            ids, text = completion_prompt(lm, req)
            return prepare(lm, state.names, req, ids, max_tokens=req.max_tokens, echo=text if req.echo else "",
                           **_limits(state))

        return await generate(state, request, await run_in_threadpool(build), req, chat=False)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        req = await read_body(request, ChatCompletionRequest, settings.max_body_bytes)
        check_model(settings, req.model)

        def build() -> GenerationRequest:
            ids = chat_prompt(lm, req, settings.model_name)
            max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
            return prepare(lm, state.names, req, ids, max_tokens=max_tokens, **_limits(state))

        return await generate(state, request, await run_in_threadpool(build), req, chat=True)

    @v1.post("/embeddings")
    async def embeddings(request: Request):
        req = await read_body(request, EmbeddingRequest, settings.max_body_bytes)
        check_model(settings, req.model)
        width = lm.config.n_embd
        if req.dimensions is not None and req.dimensions != width:
            raise APIError(400, f"dimensions is {req.dimensions}; this model's embeddings have {width}", "dimensions")
        if req.encoding_format == "base64" and req.pooling == "none":
            raise APIError(400, "encoding_format base64 needs pooled embeddings (pooling mean, last or first)",
                           "encoding_format")
        inputs = await run_in_threadpool(embedding_inputs, lm, req.input)
        job = submit(state, lambda job: state.engine.embeddings(inputs, req.kind, req.pooling, req.encoding_format))
        vectors = await wait_result(request, job, "kind")
        if vectors is None:
            return JSONResponse({}, status_code=499)
        n = sum(len(i) for i in inputs)
        return {"object": "list", "model": settings.model_name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n, "total_tokens": n}, "steerling": {"kind": req.kind, "pooling": req.pooling}}

    app.include_router(v1)
    return app


def _limits(state: ServerState) -> dict[str, Any]:
    s = state.settings
    return {"default_max_tokens": s.default_max_tokens, "max_tokens_limit": s.max_tokens_limit,
            "builder": state.engine.builder}


def check_model(settings: ServeSettings, name: str | None) -> None:
    """Accept no model, the served name or an alias; else 404 ``model_not_found``."""
    if name is not None and name not in (settings.model_name, *settings.aliases):
        raise APIError(404, f"the model {name!r} does not exist; this server serves {settings.model_name!r} "
                            "(GET /v1/models)", "model", "model_not_found")


async def read_body(request: Request, schema: type[M], limit: int) -> M:
    """The JSON body as ``schema``, whatever its content type, at most ``limit`` bytes.

    Raises:
        APIError: 413 over the limit; 400 for invalid JSON or a body that does not fit ``schema``.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; this server accepts at most {limit} (--max-body-size)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is over {limit} bytes, the most this server accepts (--max-body-size)")
    try:
        text = bytes(body).decode("utf-8")
        depth = nesting_depth(text)  # json.loads recurses per level: a deep body would be a RecursionError
        if depth > MAX_DEPTH:
            raise APIError(400, f"the request body is JSON nested {depth} levels deep; expected at most {MAX_DEPTH}")
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise APIError(400, describe_validation(exc.errors()), first_param(exc.errors())) from None


def submit(state: ServerState, fn) -> Job:
    """Queue ``fn`` (see :class:`.queue.Job`).

    Raises:
        APIError: 503 when the queue is full.
    """
    try:
        return state.queue.submit(fn)
    except QueueFull as exc:
        raise APIError(503, f"the server is busy: {exc}") from None


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_result(request: Request, job: Job, param: str | None = None) -> Any:
    """The job's result, or None (the job cancelled) when the client disconnects first.

    Raises:
        APIError: 400 for a :class:`SteerlingError` raised by the job (naming ``param``).
    """
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not job.future.done():
        job.cancel()
        return None
    try:
        return job.future.result()
    except SteerlingError as exc:
        raise bad_request(exc, param) from None


async def generate(state: ServerState, request: Request, greq: GenerationRequest, params, chat: bool):
    """Queue a checked generation and answer with the whole response or a stream."""
    reply = Reply(("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, int(time.time()),
                  state.settings.model_name, chat)
    job = submit(state, lambda job: state.engine.generate(greq, job))
    if params.stream:
        include_usage = bool(params.stream_options and params.stream_options.include_usage)
        return StreamingResponse(_stream(job, reply, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    outcome = await wait_result(request, job)
    if outcome is None:
        return JSONResponse({}, status_code=499)  # nobody reads it: the client is gone
    return reply.body(outcome)


async def _stream(job: Job, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of a job; the job is cancelled if the stream ends early (the
    client disconnected: Starlette cancels this generator)."""
    try:
        if reply.chat:
            yield reply.role_event()
        try:
            async for delta in job.stream():
                yield reply.delta_event(delta)
            outcome = job.future.result()
        except SteerlingError as exc:
            yield error_event(bad_request(exc).body())
            return
        except Exception as exc:  # after the status line: report it in the stream
            log.exception("generation failed")
            yield error_event(APIError(500, f"internal error: {type(exc).__name__}: {exc}").body())
            return
        yield reply.final_events(outcome, include_usage)
    finally:
        job.cancel()
