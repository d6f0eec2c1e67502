"""``steerling-lite serve``: the OpenAI API (completions, chat, embeddings, streaming) over one
loaded Steerling model, with steering and per-token attribution as extra request fields.

A client of steerling_lite's public API. Modules: :mod:`.app` (the FastAPI app and its
routes), :mod:`.schemas` (request bodies, the extra fields), :mod:`.prepare` (checks,
``max_tokens`` rounding, steering specs), :mod:`.queue` (one generation at a time),
:mod:`.runner` (generation to text deltas), :mod:`.responses` (bodies and SSE chunks),
:mod:`.errors` (the OpenAI error shape), :mod:`.server` (uvicorn).
"""

from .app import ServeSettings, ServerState, create_app
from .queue import GenerationQueue, Job
from .server import BackgroundServer, ServeError

__all__ = ["create_app", "ServeSettings", "ServerState", "GenerationQueue", "Job", "BackgroundServer", "ServeError"]
