"""`cme-reward serve`: an HTTP reward server over [`CrossModelEntropyReward.score`], with micro-batching.

Needs the `serve` extra (`pip install "cme-reward[serve]"`: Starlette + uvicorn).

Endpoints (JSON in, JSON out):
    `GET /health` -> `{"status": "ok", "verifier": "...", "pairs_scored": n, "batches": n}` (no auth).
    `POST /score` `{"prompts": [...], "responses": [...]}` -> `{"scores": [...]}`. Prompts are strings or lists of
        `{"role", "content"}` messages, responses strings or one assistant message; a score is `null` for an empty
        response or non-finite verifier log-probs.
    `POST /get_reward` (OpenRLHF remote reward, `--reward.remote_url http://HOST:PORT/get_reward`)
        `{"query": [...], "prompts": [...], "labels": [...]}` -> `{"rewards": [...], "scores": [...],
        "extra_logs": {"cme": [...], "cme_scored": [...]}}`. `labels` is optional (absent or null) and ignored. The
        response is `query[i]` minus its `prompts[i]` prefix, minus trailing end-of-sequence / end-of-turn text
        (`strip_suffixes`, whitespace after each one included). The verifier's context is `prompts[i]` as PLAIN TEXT:
        it is already rendered by the policy's chat template, so the verifier tokenizes it like a plain prompt (its own
        BOS, no verifier chat template; its template markers keep the plain-prompt warning of
        `cme_reward.scoring.formatting` silent). A missing score becomes `missing_reward` (default -20.0, see
        `cme_reward.integrations.protocol`). Empty lists get empty lists.

Micro-batching (`cme_reward.server.batcher`): concurrent requests are scored together in one `reward.score` call of
at most `max_batch_pairs` pairs, requests for the same prompt in the same call. Requests that arrive while a batch is
being scored go out as soon as it ends; an idle engine waits for company (at most `batch_wait_ms`) only while fewer
pairs are queued than in recent batches.

Errors: every bad request gets a 4xx JSON `{"error": "..."}` naming the field: 400 body not JSON / not an object,
401 missing or wrong bearer token, 413 body over `max_body_bytes` or more than `max_request_pairs` pairs, 422 fields
of the wrong type or length, a `query` that does not start with its prompt, or a message the verifier rejects. An
unexpected error is a 500 JSON error with a logged traceback.

Auth: with `api_key` set (or env `CME_API_KEY` when `serve` gets none) `/score` and `/get_reward` need
`Authorization: Bearer KEY` (constant-time compare). The server binds 127.0.0.1 by default and warns when it binds
another address without a key.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import RequestError
from .batcher import MicroBatcher
from .requests import check_items, check_lengths, list_field, read_json
from .wire import DEFAULT_MISSING_REWARD, DEFAULT_STRIP_SUFFIXES, openrlhf_answer, split_query

__all__ = ["create_app", "serve", "serve_in_thread"]

logger = logging.getLogger(__name__)


def _require_serve() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"the reward server needs Starlette and uvicorn ({err.name} is missing): pip install 'cme-reward[serve]'"
        ) from err


def create_app(
    reward: Any,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 8 << 20,
    max_batch_pairs: int = 256,
    max_request_pairs: int = 1024,
    batch_wait_ms: float = 5.0,
    strip_suffixes: Sequence[str] | None = None,
    missing_reward: float = DEFAULT_MISSING_REWARD,
) -> Any:
    """Build the Starlette app serving `reward` (see the module docstring for the protocol).

    Args:
        reward (`CrossModelEntropyReward`): the reward to serve.
        api_key (`str`, *optional*): bearer token required on `/score` and `/get_reward`; `None`: no auth.
        max_body_bytes (`int`, *optional*, defaults to `8 << 20`): larger bodies get 413.
        max_batch_pairs (`int`, *optional*, defaults to `256`): most pairs merged into one `reward.score` call.
        max_request_pairs (`int`, *optional*, defaults to `1024`): more pairs in one request get 413.
        batch_wait_ms (`float`, *optional*, defaults to `5.0`): longest wait of an idle engine for more requests to
            batch with (none while the queue holds as many pairs as recent batches).
        strip_suffixes (`Sequence[str]`, *optional*): special-token texts cut from the end of OpenRLHF responses;
            `None` uses `DEFAULT_STRIP_SUFFIXES` (`<|im_end|>`, `<|endoftext|>`, `</s>`, `<|eot_id|>`, ...).
        missing_reward (`float`, *optional*, defaults to `-20.0`): `/get_reward` reward of an unscored pair.

    Returns:
        `starlette.applications.Starlette`: an ASGI app (run it with uvicorn, or [`serve`]).

    Example:

    ```python
    >>> from starlette.testclient import TestClient
    >>> app = create_app(CrossModelEntropyReward("HuggingFaceTB/SmolLM2-135M-Instruct"))
    >>> with TestClient(app) as client:
    ...     client.post("/score", json={"prompts": ["2 + 2 ="], "responses": [" 4"]}).json()
    {'scores': [-0.61...]}
    ```
    """
    _require_serve()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    for name, value, low in (("max_body_bytes", max_body_bytes, 1), ("max_batch_pairs", max_batch_pairs, 1),
                             ("max_request_pairs", max_request_pairs, 1)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    if not isinstance(batch_wait_ms, (int, float)) or not 0 <= batch_wait_ms <= 10_000:
        raise ValueError(f"`batch_wait_ms` must be a number of milliseconds in [0, 10000], got {batch_wait_ms!r}")
    if (
        isinstance(missing_reward, bool)
        or not isinstance(missing_reward, (int, float))
        or not math.isfinite(missing_reward)
    ):
        raise ValueError(f"`missing_reward` must be a finite float, got {missing_reward!r}")
    suffixes = tuple(DEFAULT_STRIP_SUFFIXES if strip_suffixes is None else strip_suffixes)
    if isinstance(strip_suffixes, str) or not all(isinstance(s, str) for s in suffixes):
        raise TypeError(f"`strip_suffixes` must be a sequence of strings, got {strip_suffixes!r}")
    reduction = getattr(getattr(reward, "config", None), "reduction", "mean")
    if reduction != "mean" and missing_reward == DEFAULT_MISSING_REWARD:
        logger.warning(
            "missing_reward=%s is sized for the 'mean' reduction, not %r: set it", missing_reward, reduction
        )
    key = api_key.encode("utf-8") if api_key else None
    batcher = MicroBatcher(reward, max_batch_pairs=max_batch_pairs, batch_wait_ms=batch_wait_ms)

    def error(status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def check_auth(request: Any) -> None:
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), key):
            raise RequestError(401, "missing or wrong API key: send `Authorization: Bearer <key>`")

    def endpoint(handler):
        async def wrapped(request: Any) -> JSONResponse:
            try:
                check_auth(request)
                return JSONResponse(await handler(await read_json(request, max_body_bytes)))
            except RequestError as err:
                # clients may drop the answer (OpenRLHF retries a 4xx and logs none of it): the reason is in our log
                logger.warning(
                    "%s %s refused (HTTP %d): %s", request.method, request.url.path, err.status, err.message
                )
                return error(err.status, err.message)
            except ClientDisconnect:  # nobody is left to answer
                return error(400, "the client disconnected while sending the request")
            except Exception:
                logger.exception("Unexpected error on %s %s", request.method, request.url.path)
                return error(500, "internal server error (the traceback is in the server log)")

        return wrapped

    async def score(data: dict) -> dict:
        prompts, responses = list_field(data, "prompts"), list_field(data, "responses")
        check_lengths({"prompts": prompts, "responses": responses}, max_request_pairs)
        check_items("prompts", prompts, kinds="prompt")
        check_items("responses", responses, kinds="response")
        return {"scores": await batcher.score(prompts, responses)}

    async def get_reward(data: dict) -> dict:
        queries, prompts = list_field(data, "query"), list_field(data, "prompts")
        labels = list_field(data, "labels", required=False)
        lists = {"query": queries, "prompts": prompts} | ({} if labels is None else {"labels": labels})
        check_lengths(lists, max_request_pairs)
        check_items("query", queries, kinds="text")
        check_items("prompts", prompts, kinds="text")
        try:
            responses = [
                split_query(q, p, index=i, strip_suffixes=suffixes) for i, (q, p) in enumerate(zip(queries, prompts))
            ]
        except ValueError as err:
            raise RequestError(422, str(err)) from None
        return openrlhf_answer(await batcher.score(prompts, responses), missing_reward=missing_reward)

    async def health(request: Any) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "verifier": repr(reward),
                "pairs_scored": batcher.pairs_scored,
                "batches": batcher.batches,
            }
        )

    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:  # 404, 405 as JSON too
        return error(exc.status_code, exc.detail)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        yield
        await batcher.close()  # uvicorn has already waited for in-flight requests

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/score", endpoint(score), methods=["POST"]),
            Route("/get_reward", endpoint(get_reward), methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    reward: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    access_log: bool = False,
    **app_options: Any,
) -> None:
    """Serve `reward` over HTTP until SIGINT/SIGTERM (in-flight requests finish first).

    Args:
        reward (`CrossModelEntropyReward`): the reward to serve.
        host (`str`, *optional*, defaults to `"127.0.0.1"`): address to bind; loopback unless told otherwise.
        port (`int`, *optional*, defaults to `8000`): TCP port.
        api_key (`str`, *optional*): bearer token; `None` reads env `CME_API_KEY` (unset or empty: no auth).
        access_log (`bool`, *optional*, defaults to `False`): log every request (OpenRLHF sends one per sample).
        **app_options: passed to [`create_app`] (`max_batch_pairs`, `batch_wait_ms`, `missing_reward`, ...).

    Example:

    ```python
    >>> serve(CrossModelEntropyReward("HuggingFaceTB/SmolLM2-135M-Instruct"), port=8000)
    ```
    """
    _require_serve()
    import uvicorn

    if api_key is None:
        api_key = os.environ.get("CME_API_KEY") or None
    if not _is_loopback(host) and not api_key:
        logger.warning("Serving on %s without an API key: anyone who can reach it can use the verifier", host)
    app = create_app(reward, api_key=api_key, **app_options)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log, timeout_graceful_shutdown=None)


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run `app` with uvicorn in a daemon thread; yields its base URL (`port=0`: a free port) and stops it on exit.

    Example:

    ```python
    >>> with serve_in_thread(create_app(reward)) as url:
    ...     post_json(url + "/score", {"prompts": ["Hi"], "responses": [" there"]})
    ```
    """
    _require_serve()
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="cme-reward-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the reward server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
