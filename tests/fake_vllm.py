"""A loopback fake of `vllm serve` for the vLLM backend's tests: the tiny verifier behind vLLM's HTTP format.

`FakeVLLMServer(model_dir)` loads a verifier saved by `tiny_models.save_verifier` with transformers and serves, on
127.0.0.1 and an ephemeral port, in a background thread (`http.server.ThreadingHTTPServer`, HTTP/1.1 keep-alive):

- `GET /v1/models`: `{"object": "list", "data": [ModelCard]}`, a card being `{"id", "object": "model", "created",
  "owned_by": "vllm", "root", "parent", "max_model_len", "permission"}`.
- `POST /tokenize`: `{"model"?, "prompt": str, "add_special_tokens": true}` -> `{"count", "max_model_len", "tokens",
  "token_strs"}` (mounted at the root, not under `/v1`).
- `POST /v1/completions` with `prompt` a string, a token-id list or a list of token-id lists: one greedy token per
  prompt and, with `prompt_logprobs: k`, one entry per prompt token: entry 0 is `null`, entry `t` maps token-id strings
  to `{"logprob", "rank", "decoded_token"}`: the actual token first (rank = number of vocabulary entries with a
  log-prob >= its own), then the top k with ranks 1..k (an actual token among them keeps its first slot); `-inf` is
  clamped to `-9999.0`; `decoded_token` is `tokenizer.decode([id])`. Log-probs come from the plain reference: one
  sequence at a time, full float32 `log_softmax`. Choices carry `index` = prompt position.
- Errors as vLLM sends them: `{"error": {"message", "type", "param", "code"}}` (404 for an unknown model, 400 for an
  out-of-vocabulary id, a too-long prompt or too many logprobs); with `api_key`, `/v1/*` answers 401
  `{"error": "Unauthorized"}` without `Authorization: Bearer <key>`; an unknown path answers 404 `{"detail": ...}`.

Failure injection (attributes, reset by `reset()`): `fail_first` scoring requests answer `fail_status` (503);
`drop_first` scoring requests are read and their connection closed without an answer; `delay` seconds before answering
(the first `delay_first` requests only, when set); `neg_inf_tokens` get a `-inf` logit (hence `-9999.0` on the wire);
`shuffle_choices` answers choices out of order; `mutate(choice)` edits each choice before sending; `served` ids;
`tokenize_tokenizer` tokenizes `/tokenize` with another tokenizer; `has_tokenize=False` removes that endpoint.
Every request is recorded in `requests` (method, path, headers, JSON body, client port); `max_in_flight` is the most
scoring requests handled at once.

vLLM source checked for the format (vllm-project/vllm, 2026): vllm/entrypoints/openai/completion/protocol.py
(CompletionRequest, CompletionResponseChoice.prompt_logprobs: list[dict[int, Logprob] | None]),
vllm/entrypoints/openai/completion/serving.py (request_output_to_completion_response: choice index = position,
clamp_prompt_logprobs), vllm/entrypoints/generate/base/serving.py (clamp_prompt_logprobs: -inf -> -9999.0),
vllm/logprobs.py (Logprob{logprob, rank, decoded_token}; create_prompt_logprobs puts None first;
append_logprobs_for_next_position: actual token then top-k ranks 1..k, a duplicate overwrites in place),
vllm/tokenizers/detokenizer_utils.py (convert_ids_list_to_tokens: decode([id]) per token),
vllm/entrypoints/serve/tokenize/{api_router,protocol}.py (POST /tokenize at the root; TokenizeCompletionRequest,
TokenizeResponse), vllm/entrypoints/serve/engine/protocol.py (ErrorResponse/ErrorInfo, ModelCard, ModelList),
vllm/entrypoints/serve/middleware/authenticate.py (401 on /v1 paths only).
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

__all__ = ["FakeVLLMServer"]


class FakeVLLMServer:
    """See the module docstring. Use as a context manager, or call `close()`."""

    def __init__(self, model_dir: str | Path, *, api_key: str | None = None, max_logprobs: int = 20):
        self.model_dir = str(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.vocab = self.model.get_output_embeddings().weight.shape[0]
        self.max_model_len = self.model.config.max_position_embeddings
        self.api_key = api_key
        self.max_logprobs = max_logprobs
        self._lock = threading.Lock()  # counters
        self._model_lock = threading.Lock()  # one forward at a time
        self.reset()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so the client can reuse connections

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-vllm", daemon=True)
        self._thread.start()

    def reset(self) -> None:
        """Default behaviour, empty records."""
        self.served = [self.model_dir]
        self.fail_first, self.fail_status, self.drop_first = 0, 503, 0
        self.delay, self.delay_first = 0.0, None
        self.neg_inf_tokens: list[int] = []
        self.shuffle_choices = False
        self.mutate = None
        self.tokenize_tokenizer = None
        self.has_tokenize = True
        self.requests: list[dict[str, Any]] = []
        self.completion_calls = 0
        self.in_flight = self.max_in_flight = 0

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeVLLMServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- HTTP ---------------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        with self._lock:
            self.requests.append(
                {
                    "method": method,
                    "path": h.path,
                    "headers": dict(h.headers),
                    "body": body,
                    "port": h.client_address[1],
                }
            )
        route = (method, h.path)
        if self.api_key and h.path.startswith("/v1") and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._send(h, 401, {"error": "Unauthorized"})
        if route == ("GET", "/v1/models"):
            return self._send(h, 200, self._models())
        if route == ("POST", "/tokenize") and self.has_tokenize:
            return self._send(h, *self._tokenize(body))
        if route == ("POST", "/v1/completions"):
            return self._completions(h, body)
        self._send(h, 404, {"detail": "Not Found"})

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _error(status: int, kind: str, message: str, param: str | None = None) -> tuple[int, dict]:
        return status, {"error": {"message": message, "type": kind, "param": param, "code": status}}

    def _models(self) -> dict:
        now = int(time.time())
        cards = [
            {"id": name, "object": "model", "created": now, "owned_by": "vllm", "root": self.model_dir,
             "parent": None, "max_model_len": self.max_model_len,
             "permission": [{"id": "modelperm-0", "object": "model_permission", "created": now,
                             "allow_sampling": True, "allow_logprobs": True}]}
            for name in self.served
        ]  # fmt: skip
        return {"object": "list", "data": cards}

    def _check_model(self, body: dict) -> tuple[int, dict] | None:
        model = body.get("model")
        if model is not None and model not in self.served:
            return self._error(404, "NotFoundError", f"The model `{model}` does not exist.", "model")
        return None

    def _tokenize(self, body: Any) -> tuple[int, dict]:
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            return self._error(400, "BadRequestError", "`prompt` must be a string", "prompt")
        if (error := self._check_model(body)) is not None:
            return error
        tokenizer = self.tokenize_tokenizer or self.tokenizer
        ids = tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
        strs = tokenizer.convert_ids_to_tokens(ids) if body.get("return_token_strs") else None
        return 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": strs}

    def _completions(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        with self._lock:
            self.completion_calls += 1
            call = self.completion_calls
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if call <= self.drop_first:
                h.close_connection = True  # no answer: the client sees the connection dropped
                return
            if call <= self.fail_first:
                return self._send(h, *self._error(self.fail_status, "ServiceUnavailable", "injected failure"))
            if self.delay and (self.delay_first is None or call <= self.delay_first):
                time.sleep(self.delay)
            self._send(h, *self._complete(body))
        finally:
            with self._lock:
                self.in_flight -= 1

    # ---- scoring ------------------------------------------------------------------------------------------------

    def _prompts(self, prompt: Any) -> list[list[int]] | str:
        """vLLM's accepted prompt forms -> token-id lists, or an error message."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            return "Either prompt or prompt_embeds must be provided and non-empty."
        out = []
        for p in prompt:
            if isinstance(p, str):
                p = self.tokenizer(p)["input_ids"]
            if not isinstance(p, list) or not p or not all(isinstance(t, int) and t >= 0 for t in p):
                return "prompt must be a string, a list of token ids or a list of those"
            if max(p) >= self.vocab:
                return f"Token id {max(p)} is out of vocabulary"
            out.append(p)
        return out

    def _complete(self, body: Any) -> tuple[int, dict]:
        if not isinstance(body, dict):
            return self._error(400, "BadRequestError", "the body must be a JSON object")
        if (error := self._check_model(body)) is not None:
            return error
        prompts = self._prompts(body.get("prompt"))
        if isinstance(prompts, str):
            return self._error(400, "BadRequestError", prompts, "prompt")
        k = body.get("prompt_logprobs")
        if k is not None and (k > self.max_logprobs or k == -1 and self.max_logprobs != -1 or k < -1):
            return self._error(400, "BadRequestError",
                               f"Requested prompt logprobs of {k}, which is greater than max allowed: "
                               f"{self.max_logprobs}", "prompt_logprobs")  # fmt: skip
        max_tokens = body.get("max_tokens", 16) or 16
        for p in prompts:
            if len(p) + max_tokens > self.max_model_len:
                return self._error(400, "BadRequestError",
                                   f"This model's maximum context length is {self.max_model_len} tokens. However, "
                                   f"your request has {len(p)} input tokens.", "input_tokens")  # fmt: skip
        choices = []
        for index, p in enumerate(prompts):
            logprobs = self._logprobs(p)  # (T, V)
            token = int(logprobs[-1].argmax())  # temperature 0: greedy; max_tokens is served as 1
            choices.append({
                "index": index, "text": self.tokenizer.decode([token]), "logprobs": None, "finish_reason": "length",
                "stop_reason": None, "token_ids": None, "prompt_token_ids": None,
                "prompt_logprobs": None if k is None else self._prompt_logprobs(p, logprobs, k),
            })  # fmt: skip
            if self.mutate is not None:
                self.mutate(choices[-1])
        if self.shuffle_choices and len(choices) > 1:
            order = choices[:]
            while choices == order:
                random.shuffle(choices)
        tokens = sum(map(len, prompts))
        return 200, {
            "id": f"cmpl-{random.getrandbits(64):016x}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model") or self.served[0], "choices": choices,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens + len(prompts),
                      "completion_tokens": len(prompts)},
        }  # fmt: skip

    @torch.inference_mode()
    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        """(T, V) float32 log-probs; row t is the distribution of token t + 1 (the plain reference, one sequence)."""
        with self._model_lock:
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()  # (T, V)
        if self.neg_inf_tokens:
            logits[:, self.neg_inf_tokens] = -torch.inf
        return torch.log_softmax(logits, dim=-1)

    def _prompt_logprobs(self, ids: list[int], logprobs: torch.Tensor, k: int) -> list[dict | None]:
        k = logprobs.shape[-1] if k == -1 else k
        out: list[dict | None] = [None]
        for t in range(1, len(ids)):
            row = logprobs[t - 1]  # (V,)
            actual = ids[t]
            value = float(row[actual])
            entry = {str(actual): self._logprob(actual, value, int((row >= value).sum()))}
            if k:
                top = row.topk(k)
                for rank, (v, tid) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
                    entry[str(tid)] = self._logprob(tid, v, rank)
            out.append(entry)
        return out

    def _logprob(self, token: int, value: float, rank: int) -> dict:
        value = -9999.0 if value == float("-inf") else value  # vLLM's clamp_prompt_logprobs
        return {"logprob": value, "rank": rank, "decoded_token": self.tokenizer.decode([token])}
