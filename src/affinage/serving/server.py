"""An OpenAI-compatible HTTP server: ``affinage serve MODEL``.

Endpoints (any OpenAI client works with ``base_url="http://HOST:PORT/v1"``):

* ``POST /v1/chat/completions``: ``messages``, ``model``, ``temperature``, ``top_p``, ``max_tokens``
  (or ``max_completion_tokens``), ``n``, ``stop``, ``seed``, ``presence_penalty``,
  ``frequency_penalty``, ``logit_bias``, ``stream`` (server-sent events, ``data: {chunk}`` lines then
  ``data: [DONE]``) and ``stream_options.include_usage``;
* ``GET /v1/models``; ``GET /health`` (no key needed: for load balancers).

Every error has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad
request (the message names the field), 401 for a missing or wrong API key (when keys are configured),
404 for an unknown model or path, 429 when the queue is full (with ``Retry-After``), 504 when a request
runs past ``request_timeout_s``. Bad input is never a 500.

Generation runs in :class:`~affinage.serving.engine.BatchEngine`: one worker thread, concurrent
requests decoded together in batches of at most ``max_batch_size`` rows, at most ``max_queue``
requests waiting. Each request is written to the access log as one JSON line.

The guard (issue 6, ``affinage.safety.guard.Guard``) is on by default when that module is installed:
its ``check_input(messages)`` runs before generation (a refusal is answered with
``finish_reason="content_filter"``), and ``check_output(messages, answer)`` after it (an unsafe answer
is replaced by the guard's refusal). With a guard, streamed answers are checked whole before they are
sent, so a stream arrives in one piece. See :func:`load_guard` for the integration point.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request) at
# run time, and fastapi is imported inside create_app only.
import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from affinage.errors import ConfigError, ModelError
from affinage.serving.engine import BatchEngine, EngineStopped, Event, Job, QueueFull, SamplingParams

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("affinage.access")

SERVE_EXTRA_HINT = "pip install 'affinage[serve]'"
DEFAULT_REFUSAL = "I can't help with that request."


# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------


@dataclass
class ServeOptions:
    """Everything ``affinage serve`` can be told (flags of the same names)."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    """The name clients pass as ``model`` (default: the model directory's name or alias)."""
    api_keys: list[str] = field(default_factory=list)
    """When set, every /v1 request needs ``Authorization: Bearer KEY`` with one of them (else 401)."""
    guard: str | None = "default"
    """``default`` (the safety module's default guard when it is installed), ``off``, or a YAML file."""
    max_batch_size: int = 8
    """Rows decoded together (a request with n choices takes n): the cap on concurrent generations."""
    max_queue: int = 32
    """Requests that may wait for a batch; beyond it the server answers 429."""
    max_tokens_limit: int = 1024
    """Most tokens one answer may ask for (``max_tokens``)."""
    default_max_tokens: int | None = None
    """``max_tokens`` of a request that gives none (default: 256 or max_tokens_limit if lower; capped
    by the room left in the context)."""
    max_prompt_tokens: int | None = None
    """Longest prompt accepted, in tokens (default: the context length less one)."""
    max_request_bytes: int = 1_000_000
    request_timeout_s: float = 300.0
    """A request still unanswered after this long is cancelled and answered 504."""
    access_log: str | None = None
    """Also append the JSON access-log lines to this file."""
    dtype: str = "auto"
    int8: bool = False
    """Quantise the linear layers to int8 at load (CPU only; see ``affinage export --int8``)."""
    int8_skip: list[str] = field(default_factory=lambda: ["^lm_head$"])
    """Regular expressions of layers ``int8`` keeps in fp32."""
    chat_template: str | None = None

    def validate(self) -> None:
        def check(condition: bool, name: str, message: str) -> None:
            if not condition:
                raise ConfigError(f"serve option '{name}' {message}")

        check(0 <= self.port <= 65535, "port", f"must be in 0..65535, got {self.port}")
        check(self.max_batch_size >= 1, "max_batch_size", f"must be at least 1, got {self.max_batch_size}")
        check(self.max_queue >= 0, "max_queue", f"must be >= 0, got {self.max_queue}")
        check(self.max_tokens_limit >= 1, "max_tokens_limit", f"must be at least 1, got {self.max_tokens_limit}")
        check(
            self.default_max_tokens is None or 1 <= self.default_max_tokens <= self.max_tokens_limit,
            "default_max_tokens",
            f"must be in 1..max_tokens_limit ({self.max_tokens_limit}), got {self.default_max_tokens}",
        )
        check(
            self.max_prompt_tokens is None or self.max_prompt_tokens >= 1,
            "max_prompt_tokens",
            f"must be at least 1, got {self.max_prompt_tokens}",
        )
        check(self.max_request_bytes >= 1024, "max_request_bytes", f"must be at least 1024, got {self.max_request_bytes}")
        check(self.request_timeout_s > 0, "request_timeout_s", f"must be positive, got {self.request_timeout_s}")
        check(all(isinstance(k, str) and k for k in self.api_keys), "api_keys", "must be non-empty strings")


# ----------------------------------------------------------------------------------------------
# Errors in OpenAI's shape
# ----------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# ----------------------------------------------------------------------------------------------
# Request validation
# ----------------------------------------------------------------------------------------------

# Fields OpenAI clients may send that change nothing here.
IGNORED_FIELDS = frozenset(
    {"user", "metadata", "store", "parallel_tool_calls", "service_tier", "modalities", "prediction",
     "reasoning_effort", "verbosity", "prompt_cache_key", "safety_identifier"}
)
UNSUPPORTED_FIELDS = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "audio": "audio output",
    "web_search_options": "web search",
}
SUPPORTED_FIELDS = frozenset(
    {"model", "messages", "temperature", "top_p", "n", "max_tokens", "max_completion_tokens", "stop",
     "seed", "stream", "stream_options", "presence_penalty", "frequency_penalty", "logit_bias",
     "logprobs", "top_logprobs", "response_format"}
)
ROLES = ("system", "developer", "user", "assistant")


@dataclass
class Limits:
    """What a request may ask for; from :class:`ServeOptions` and the model."""

    served_names: tuple[str, ...]
    max_tokens_limit: int
    default_max_tokens: int
    max_n: int
    vocab_size: int


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    model: str
    messages: list[dict[str, str]]
    params: SamplingParams
    max_tokens_given: bool
    n: int = 1
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"'{name}' must be a number, got {json.dumps(value)[:60]}", name, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low:g} and {high:g}, got {value}", name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {json.dumps(value)[:60]}", name, "invalid_type")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _bad(f"'{name}' must be {bound}, got {value}", name)
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages", "invalid_type")
    messages = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object with 'role' and 'content'", where, "invalid_type")
        role = m.get("role")
        if role in ("tool", "function"):
            raise _bad(f"'{where}.role' = '{role}': tool messages are not supported by this server", f"{where}.role")
        if role not in ROLES:
            raise _bad(f"'{where}.role' must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}", f"{where}.role")
        if m.get("tool_calls"):
            raise _bad(f"'{where}.tool_calls': tool calling is not supported by this server", f"{where}.tool_calls")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise _bad(
                        f"'{where}.content[{j}]' must be a text part {{\"type\": \"text\", \"text\": ...}}; "
                        "images and audio are not supported",
                        f"{where}.content",
                    )
                parts.append(part["text"])
            content = "\n".join(parts)
        if not isinstance(content, str):
            raise _bad(f"'{where}.content' must be a string or a list of text parts", f"{where}.content", "invalid_type")
        # OpenAI's "developer" role is the newer name of "system".
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop' must be a non-empty string or a list of non-empty strings", "stop", "invalid_type")
    if len(stops) > 4:
        raise _bad(f"'stop' may hold at most 4 strings, got {len(stops)}", "stop")
    return list(stops)


def _logit_bias(value: Any, vocab_size: int) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("'logit_bias' must be an object mapping token ids to biases", "logit_bias", "invalid_type")
    bias = {}
    for key, b in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _bad(f"'logit_bias' key {key!r} is not a token id", "logit_bias") from None
        if not 0 <= token < vocab_size:
            raise _bad(f"'logit_bias' token id {token} is outside the vocabulary (0..{vocab_size - 1})", "logit_bias")
        if isinstance(b, bool) or not isinstance(b, int | float) or not -100 <= b <= 100:
            raise _bad(f"'logit_bias' value for {token} must be a number in [-100, 100], got {b!r}", "logit_bias")
        bias[token] = float(b)
    return bias


def parse_chat_request(body: Any, limits: Limits) -> ChatRequest:
    """Validate a chat-completions body; raise :class:`APIError` (400/404) naming the field."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    for name in body:
        if name in UNSUPPORTED_FIELDS and body[name] not in (None, [], {}):
            raise _bad(f"'{name}': {UNSUPPORTED_FIELDS[name]} is not supported by this server", name, "unsupported")
        if name not in SUPPORTED_FIELDS and name not in IGNORED_FIELDS and name not in UNSUPPORTED_FIELDS:
            raise _bad(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: the name of the served model (see GET /v1/models)", "model", "missing")
    if model not in limits.served_names:
        raise APIError(
            404, f"The model '{model}' does not exist on this server; it serves '{limits.served_names[0]}'",
            param="model", code="model_not_found",
        )
    if "messages" not in body:
        raise _bad("'messages' is required", "messages", "missing")
    messages = _messages(body["messages"])
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        param = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise _bad(f"'{param}': log-probabilities are not supported by this server", param, "unsupported")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _bad("'response_format': only {\"type\": \"text\"} is supported", "response_format", "unsupported")

    n = _integer(body, "n", 1, limits.max_n) or 1
    max_tokens = _integer(body, "max_completion_tokens", 1, limits.max_tokens_limit)
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = _integer(body, "max_tokens", 1, limits.max_tokens_limit), "max_tokens"
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream", "invalid_type")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise _bad("'stream_options' must be {\"include_usage\": true|false}", "stream_options", "invalid_type")
        include_usage = options.get("include_usage", False)
    seed = _integer(body, "seed", -(2**62), 2**62)
    params = SamplingParams(
        max_tokens=max_tokens or limits.default_max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=_stop(body.get("stop")),
        seed=seed,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body.get("logit_bias"), limits.vocab_size),
    )
    if params.top_p == 0:
        raise _bad("'top_p' must be greater than 0", "top_p")
    del name
    return ChatRequest(model, messages, params, max_tokens is not None, n, stream, include_usage)


# ----------------------------------------------------------------------------------------------
# Guard (issue 6) integration point
# ----------------------------------------------------------------------------------------------


class GuardLike(Protocol):
    """What the server needs of a guard: ``affinage.safety.guard.Guard`` or any object alike.

    Each method returns a verdict that :func:`guard_verdict` reads: ``None``/``True`` (allowed),
    ``False`` (refused), or an object or dict with a boolean ``allowed``/``safe`` (or
    ``blocked``/``flagged``/``unsafe``) and an optional refusal text in ``refusal``/``response``/
    ``message``/``text``. A guard may also carry a ``system_prompt`` string, prepended to
    conversations that have no system message.
    """

    def check_input(self, messages: list[dict[str, str]]) -> Any: ...

    def check_output(self, messages: list[dict[str, str]], answer: str) -> Any: ...


_ALLOW_KEYS = ("allowed", "safe", "ok", "passed")
_BLOCK_KEYS = ("blocked", "flagged", "unsafe", "refused")
_TEXT_KEYS = ("refusal", "response", "replacement", "message", "text")


def guard_verdict(result: Any) -> tuple[bool, str | None]:
    """(allowed, refusal text or None) from whatever a guard method returned."""
    if result is None or result is True:
        return True, None
    if result is False:
        return False, None
    get = result.get if isinstance(result, dict) else (lambda key: getattr(result, key, None))
    allowed: bool | None = None
    for key in _ALLOW_KEYS:
        if isinstance(get(key), bool):
            allowed = get(key)
            break
    if allowed is None:
        for key in _BLOCK_KEYS:
            if isinstance(get(key), bool):
                allowed = not get(key)
                break
    if allowed is None:
        raise TypeError(f"cannot read a guard verdict from {type(result).__name__}: {result!r:.120}")
    text = next((get(k) for k in _TEXT_KEYS if isinstance(get(k), str) and get(k)), None)
    return allowed, text


def load_guard(spec: str | None, model: Any = None, tokenizer: Any = None) -> GuardLike | None:
    """The guard ``--guard`` asks for: ``None``/``off`` (none), ``default`` or a guard YAML file.

    Integration point with issue 6 (``affinage.safety.guard``, imported lazily): ``default`` is
    ``Guard.from_config(GuardConfig(), model=, tokenizer=)`` (safety system prompt, input and output
    moderation by self-reflection: the served model judges); a file is read with
    ``load_guard_config`` (the ``guard:`` keys, strictly validated). Without the safety module,
    ``default`` serves unguarded and says so in the log; a file is an error.
    """
    if spec is None or spec.lower() in ("off", "none", "false", "no"):
        return None
    try:
        from affinage.safety.guard import Guard, GuardConfig, load_guard_config
    except ImportError as exc:
        if spec == "default":
            logger.warning("no guard: affinage.safety.guard is not available (%s); serving unguarded", exc)
            return None
        raise ConfigError(f"--guard {spec} needs affinage.safety.guard, which cannot be imported: {exc}") from exc
    if spec == "default":
        config = GuardConfig()
    else:
        if not Path(spec).expanduser().is_file():
            raise ConfigError(f"--guard {spec}: no such file; give a guard YAML config, 'default' or 'off'")
        config = load_guard_config(str(Path(spec).expanduser()))
    return Guard.from_config(config, model=model, tokenizer=tokenizer)


# ----------------------------------------------------------------------------------------------
# The application
# ----------------------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class ServerState:
    """What the request handlers share: the engine, the tokenizer, the limits, the guard, counters."""

    def __init__(self, model: Any, tokenizer: Any, options: ServeOptions, guard: GuardLike | None, name: str):
        from affinage import __version__

        self.options, self.tokenizer, self.guard, self.name = options, tokenizer, guard, name
        self.engine = BatchEngine(
            model, tokenizer, max_batch_size=options.max_batch_size, max_queue=options.max_queue
        )
        self.context_length = self.engine.context_length
        self.max_prompt_tokens = min(options.max_prompt_tokens or self.context_length - 1, self.context_length - 1)
        names = [name] + ([options.served_model_name] if options.served_model_name else [])
        self.limits = Limits(
            served_names=tuple(dict.fromkeys(names)),
            max_tokens_limit=options.max_tokens_limit,
            default_max_tokens=options.default_max_tokens or min(256, options.max_tokens_limit),
            max_n=options.max_batch_size,
            vocab_size=self.engine.vocab_size,
        )
        self.created = int(time.time())
        self.fingerprint = f"affinage-{__version__}"
        self.key_digests = [hashlib.sha256(k.encode()).digest() for k in options.api_keys]
        self.requests = 0
        self.log_handler: logging.Handler | None = None
        if options.access_log:
            Path(options.access_log).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.log_handler = logging.FileHandler(Path(options.access_log).expanduser(), encoding="utf-8")
            self.log_handler.setFormatter(logging.Formatter("%(message)s"))
            access_logger.addHandler(self.log_handler)
        access_logger.setLevel(logging.INFO)

    def key_id(self, authorization: str | None) -> str | None:
        """The first 8 hex digits of the key's SHA-256 when it is valid (logged instead of the key)."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = hashlib.sha256(authorization[7:].strip().encode()).digest()
        # Compare against every key, in constant time each, so timing says nothing about which.
        valid = [hmac.compare_digest(digest, d) for d in self.key_digests]
        return digest.hex()[:8] if any(valid) else None

    def close(self) -> None:
        self.engine.stop()
        if self.log_handler is not None:
            access_logger.removeHandler(self.log_handler)
            self.log_handler.close()


def _with_guard_system_prompt(guard: GuardLike | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    system = getattr(guard, "system_prompt", None) if guard is not None else None
    if isinstance(system, str) and system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def create_app(model: Any, tokenizer: Any, options: ServeOptions | None = None, *, guard: GuardLike | None = None,
               name: str = "model") -> Any:
    """The FastAPI application serving ``model``; its engine starts with the app and stops with it."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as exc:
        raise ConfigError(f"serving needs fastapi and uvicorn: {SERVE_EXTRA_HINT} ({exc})") from exc

    options = options or ServeOptions()
    options.validate()
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the tokenizer has no chat template, so chat messages cannot be rendered; pass one "
            "(--chat-template chatml) or serve a chat (instruct) model"
        )
    state = ServerState(model, tokenizer, options, guard, name)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state.engine.start()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="affinage", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.affinage = state

    def error_response(error: APIError, request_id: str | None = None) -> Any:
        headers = dict(error.headers)
        if request_id:
            headers["x-request-id"] = request_id
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Any:
        info = request.scope.get("affinage", {})
        info["error"] = exc.code or exc.type
        return error_response(exc, info.get("request_id"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        message = {404: f"Unknown path {request.url.path}: this server has /v1/chat/completions, /v1/models, /health",
                   405: f"Method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Any:
        request_id = request.scope.get("affinage", {}).get("request_id")
        logger.exception("request %s failed", request_id)
        return error_response(
            APIError(500, f"internal error (request {request_id}); see the server log", type="server_error"),
            request_id,
        )

    # -------------------------------------------------------------- access log, size limit
    class AccessLog:
        """ASGI middleware: request id, body size limit, one JSON log line when the response ends."""

        def __init__(self, app: Any):
            self.inner = app

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.inner(scope, receive, send)
                return
            start = time.perf_counter()
            info: dict[str, Any] = {"request_id": secrets.token_hex(8)}
            scope["affinage"] = info
            status = {"code": 500}
            length = dict(scope.get("headers") or []).get(b"content-length")
            limit = options.max_request_bytes
            if length is not None and length.isdigit() and int(length) > limit:
                info["error"] = "request_too_large"
                status["code"] = 400
                await _send_json(send, 400, APIError(400, _too_large(int(length), limit), code="request_too_large").body(),
                                 info["request_id"])
                self.log(scope, info, status["code"], start)
                return
            received = 0

            async def limited_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _BodyTooLarge(received)
                return message

            async def tracking_send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    message.setdefault("headers", []).append((b"x-request-id", info["request_id"].encode()))
                await send(message)

            try:
                await self.inner(scope, limited_receive, tracking_send)
            finally:
                self.log(scope, info, status["code"], start)

        @staticmethod
        def log(scope: dict, info: dict, code: int, start: float) -> None:
            client = scope.get("client")
            record = {
                "ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                "request_id": info.get("request_id"),
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": code,
                "latency_ms": round(1000 * (time.perf_counter() - start), 1),
                "client": f"{client[0]}:{client[1]}" if client else None,
                **{k: v for k, v in info.items() if k != "request_id"},
            }
            access_logger.info(json.dumps(record, ensure_ascii=False))

    app.add_middleware(AccessLog)

    # -------------------------------------------------------------- endpoints
    def authorize(request: Request) -> None:
        if not state.key_digests:
            return
        key = state.key_id(request.headers.get("authorization"))
        if key is None:
            given = "no API key" if not request.headers.get("authorization") else "an invalid API key"
            raise APIError(401, f"Request with {given}: send 'Authorization: Bearer KEY' with a key this server "
                                "was started with", type="invalid_request_error", code="invalid_api_key")
        request.scope["affinage"]["key"] = key

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": state.name,
            "queued": state.engine.queued,
            "running": state.engine.running_rows,
            "completed": state.engine.completed_jobs,
            "guard": state.guard is not None,
            "max_batch_size": options.max_batch_size,
            "max_queue": options.max_queue,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            "object": "list",
            "data": [{"id": state.name, "object": "model", "created": state.created, "owned_by": "affinage",
                      "context_length": state.context_length}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        info = request.scope["affinage"]
        authorize(request)
        try:
            raw = await request.body()
        except _BodyTooLarge as exc:
            raise APIError(400, _too_large(exc.args[0], options.max_request_bytes), code="request_too_large") from None
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
        req = parse_chat_request(body, state.limits)
        info.update(stream=req.stream, n=req.n)
        messages = _with_guard_system_prompt(state.guard, req.messages)
        prompt_ids = await asyncio.to_thread(_encode, state.engine, messages)
        info["prompt_tokens"] = len(prompt_ids)
        if len(prompt_ids) > state.max_prompt_tokens:
            raise _bad(
                f"the prompt is {len(prompt_ids)} tokens long, more than this server accepts "
                f"({state.max_prompt_tokens}, max_prompt_tokens); shorten 'messages'",
                "messages", "context_length_exceeded",
            )
        room = state.context_length - len(prompt_ids)
        if req.max_tokens_given and req.params.max_tokens > room:
            raise _bad(
                f"This model's maximum context length is {state.context_length} tokens. However, you requested "
                f"{len(prompt_ids) + req.params.max_tokens} tokens ({len(prompt_ids)} in the messages, "
                f"{req.params.max_tokens} in the completion). Reduce the length of the messages or the completion.",
                "max_tokens", "context_length_exceeded",
            )
        req.params.max_tokens = min(req.params.max_tokens, room)
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        deadline = time.monotonic() + options.request_timeout_s

        if state.guard is not None:
            allowed, refusal = await asyncio.to_thread(_guard_call, state, "check_input", req.messages)
            if not allowed:
                info["guard"] = "input_refused"
                text = refusal or DEFAULT_REFUSAL
                with state.engine.tokenizer_lock:
                    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                choices = [(text, "content_filter", tokens)] * req.n
                return _respond(req, state, completion_id, created, len(prompt_ids), choices, info)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
                loop.call_soon_threadsafe(events.put_nowait, event)

        # With a guard the answer is checked whole before anything is sent.
        live = req.stream and state.guard is None
        job = Job(prompt_ids, req.params, emit, n=req.n, stream_text=live)
        try:
            state.engine.submit(job)
        except QueueFull as exc:
            raise APIError(429, f"The server is busy: {exc}. Retry in a moment.", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except EngineStopped as exc:
            raise APIError(503, str(exc), type="server_error", code="unavailable") from None
        state.requests += 1

        if live:
            return StreamingResponse(
                _stream(req, state, job, events, completion_id, created, len(prompt_ids), deadline, info),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            texts, reasons, counts = await _collect(job, events, req.n, deadline)
        except TimeoutError:
            job.cancel()
            info["timeout"] = True
            raise APIError(504, f"The request did not finish within {options.request_timeout_s:g} s "
                                "(request_timeout_s); ask for fewer tokens or retry later",
                           type="timeout_error", code="timeout") from None
        finally:
            job.cancel()  # no-op when finished; stops the rows if the handler is cancelled
        if job.started is not None:
            info["queue_ms"] = round(1000 * (job.started - job.submitted), 1)
        if state.guard is not None:
            for i, text in enumerate(texts):
                allowed, refusal = await asyncio.to_thread(_guard_call, state, "check_output", req.messages, text)
                if not allowed:
                    info["guard"] = "output_replaced"
                    texts[i], reasons[i] = refusal or DEFAULT_REFUSAL, "content_filter"
        choices = list(zip(texts, reasons, counts, strict=True))
        return _respond(req, state, completion_id, created, len(prompt_ids), choices, info)

    return app


def _too_large(size: int, limit: int) -> str:
    return f"The request body is {size} bytes, more than this server accepts ({limit}, max_request_bytes)"


async def _send_json(send: Any, status: int, body: dict, request_id: str) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": payload})


def _encode(engine: BatchEngine, messages: list[dict[str, str]]) -> list[int]:
    from affinage.data.tokenize import encode_prompt
    from affinage.errors import AffinageError

    try:
        with engine.tokenizer_lock:
            ids = encode_prompt(engine.tokenizer, messages)
    except AffinageError as exc:  # the chat template refused these messages (e.g. role order)
        raise _bad(f"the chat template cannot render 'messages': {exc}", "messages") from None
    except Exception as exc:
        raise _bad(f"the chat template cannot render 'messages': {type(exc).__name__}: {exc}", "messages") from None
    if not ids:
        raise _bad("'messages' is empty once tokenised", "messages")
    return ids


def _guard_call(state: ServerState, method: str, *args: Any) -> tuple[bool, str | None]:
    with state.engine.exclusive():
        return guard_verdict(getattr(state.guard, method)(*args))


async def _next_event(events: asyncio.Queue[Event], deadline: float) -> Event:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return await asyncio.wait_for(events.get(), remaining)


async def _collect(job: Job, events: asyncio.Queue[Event], n: int, deadline: float):
    texts, reasons, counts = [""] * n, ["stop"] * n, [0] * n
    while True:
        event = await _next_event(events, deadline)
        if event.kind == "delta":
            texts[event.index] += event.text
        elif event.kind == "finish":
            reasons[event.index], counts[event.index] = event.finish_reason or "stop", event.completion_tokens
        elif event.kind == "error":
            raise APIError(503 if isinstance(event.error, EngineStopped) else 500,
                           f"generation failed: {event.error}", type="server_error")
        elif event.kind == "done":
            return texts, reasons, counts


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _chunk(completion_id: str, created: int, state: ServerState, choices: list[dict], usage: dict | None = None) -> str:
    body: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                            "model": state.name, "system_fingerprint": state.fingerprint, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _respond(req: ChatRequest, state: ServerState, completion_id: str, created: int, prompt_tokens: int,
             choices: list[tuple[str, str, int]], info: dict) -> Any:
    """The answer of a request whose choices are all known (non-streaming, or checked by the guard)."""
    from fastapi.responses import JSONResponse, StreamingResponse

    completion_tokens = sum(c[2] for c in choices)
    info.update(completion_tokens=completion_tokens, finish_reasons=[c[1] for c in choices])
    if not req.stream:
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": state.name,
            "system_fingerprint": state.fingerprint,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason} for i, (text, reason, _) in enumerate(choices)],
            "usage": _usage(prompt_tokens, completion_tokens),
        })

    async def events() -> AsyncIterator[str]:
        for i, (text, reason, _) in enumerate(choices):
            yield _chunk(completion_id, created, state, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                          "logprobs": None, "finish_reason": None}])
            if text:
                yield _chunk(completion_id, created, state, [{"index": i, "delta": {"content": text},
                                                              "logprobs": None, "finish_reason": None}])
            yield _chunk(completion_id, created, state, [{"index": i, "delta": {}, "logprobs": None,
                                                          "finish_reason": reason}])
        if req.include_usage:
            yield _chunk(completion_id, created, state, [], _usage(prompt_tokens, completion_tokens))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream(req: ChatRequest, state: ServerState, job: Job, events: asyncio.Queue[Event], completion_id: str,
                  created: int, prompt_tokens: int, deadline: float, info: dict) -> AsyncIterator[str]:
    """Server-sent events as the engine produces text: a role chunk per choice, content chunks, a
    finish chunk per choice, the usage chunk when asked, then ``[DONE]``."""
    completion_tokens = 0
    reasons: dict[int, str] = {}
    try:
        for i in range(req.n):
            yield _chunk(completion_id, created, state, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                          "logprobs": None, "finish_reason": None}])
        while True:
            try:
                event = await _next_event(events, deadline)
            except TimeoutError:
                info["timeout"] = True
                error = APIError(504, f"the request did not finish within {state.options.request_timeout_s:g} s "
                                      "(request_timeout_s)", type="timeout_error", code="timeout")
                yield f"data: {json.dumps(error.body())}\n\n"
                break
            if event.kind == "delta":
                yield _chunk(completion_id, created, state, [{"index": event.index, "delta": {"content": event.text},
                                                              "logprobs": None, "finish_reason": None}])
            elif event.kind == "finish":
                completion_tokens += event.completion_tokens
                reasons[event.index] = event.finish_reason or "stop"
                yield _chunk(completion_id, created, state, [{"index": event.index, "delta": {}, "logprobs": None,
                                                              "finish_reason": reasons[event.index]}])
            elif event.kind == "error":
                error = APIError(500, f"generation failed: {event.error}", type="server_error")
                yield f"data: {json.dumps(error.body())}\n\n"
                break
            elif event.kind == "done":
                if req.include_usage:
                    yield _chunk(completion_id, created, state, [], _usage(prompt_tokens, completion_tokens))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client left, or we are done: either way the rows stop
        if job.started is not None:
            info["queue_ms"] = round(1000 * (job.started - job.submitted), 1)
        info.update(completion_tokens=completion_tokens, finish_reasons=[reasons.get(i) for i in range(req.n)])


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def check_serve_dependencies() -> None:
    """Raise a :class:`ConfigError` naming the extra to install when fastapi or uvicorn is missing."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"`affinage serve` needs {' and '.join(missing)}: {SERVE_EXTRA_HINT}")


def load_for_serving(model_name: str, options: ServeOptions) -> tuple[Any, Any]:
    """Load the model (int8-quantised when asked) and its tokenizer."""
    from affinage.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name, chat_template=options.chat_template)
    model = load_model(model_name, dtype="float32" if options.int8 else options.dtype)
    if options.int8:
        from affinage.export import quantize_int8

        model = quantize_int8(model, options.int8_skip)
    return model, tokenizer


def default_served_name(model_name: str) -> str:
    path = Path(model_name).expanduser()
    if path.exists():
        return path.name if path.name != "final" else f"{path.parent.name}"
    return model_name


class RunningServer:
    """A uvicorn server running in a background thread (tests, notebooks): ``url``, ``stop()``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(model_name: str, options: ServeOptions) -> None:
    """Load ``model_name`` and serve it until Ctrl-C."""
    check_serve_dependencies()
    import uvicorn
    from rich.console import Console

    options.validate()
    console = Console(stderr=True, highlight=False)
    keys = list(options.api_keys)
    if env := os.environ.get("AFFINAGE_API_KEYS"):
        keys += [k.strip() for k in env.split(",") if k.strip()]
    options.api_keys = keys
    model, tokenizer = load_for_serving(model_name, options)
    guard = load_guard(options.guard, model, tokenizer)
    name = options.served_model_name or default_served_name(model_name)
    app = create_app(model, tokenizer, options, guard=guard, name=name)
    if not keys and options.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {options.host} without API keys: anyone who reaches "
                      "this port can use the model (--api-key KEY or AFFINAGE_API_KEYS)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    console.print(
        f"serving [bold]{name}[/] on http://{options.host}:{options.port}/v1  (batch ≤ {options.max_batch_size}, "
        f"queue ≤ {options.max_queue}, max_tokens ≤ {options.max_tokens_limit}, guard "
        f"{'on' if guard is not None else 'off'}, API keys {len(keys) or 'off'}"
        f"{', int8' if options.int8 else ''})"
    )
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", access_log=False)
