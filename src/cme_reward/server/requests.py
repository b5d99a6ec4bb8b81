"""The reward server's requests: the JSON body, its list fields and their items, checked with a clear client error.

[`RequestError`] is answered with its HTTP status and `{"error": message}`: 400 body not JSON / not an object, 413
body or list over its limit, 422 a field missing or of the wrong type or length.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import RequestError

__all__ = ["check_items", "check_lengths", "list_field", "read_json"]


async def read_json(request: Any, max_body_bytes: int) -> dict:
    """The request body as a JSON object, read in chunks and refused (413) once over `max_body_bytes`."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, f"invalid Content-Length header {length!r}")
        if int(length) > max_body_bytes:
            raise RequestError(413, f"request body of {int(length)} bytes is over the limit of {max_body_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise RequestError(413, f"request body is over the limit of {max_body_bytes} bytes")
    try:
        data = json.loads(bytes(body))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(400, f"request body is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(data).__name__}")
    return data


def list_field(data: dict, name: str, *, required: bool = True) -> list | None:
    """`data[name]`, which must be a list; `None` when it is absent or `null` and not `required`."""
    if data.get(name) is None and not required:
        return None
    if name not in data:
        raise RequestError(422, f"missing field `{name}`")
    value = data[name]
    if not isinstance(value, list):
        raise RequestError(422, f"`{name}` must be a list, got {type(value).__name__}")
    return value


def check_lengths(fields: dict[str, list], max_pairs: int) -> int:
    """The common length of the `fields` lists (name -> list), at most `max_pairs`."""
    (first, n), *rest = ((k, len(v)) for k, v in fields.items())
    for name, m in rest:
        if m != n:
            raise RequestError(422, f"`{first}` and `{name}` must have the same length, got {n} and {m}")
    if n > max_pairs:
        raise RequestError(413, f"`{first}` has {n} items, more than the limit of {max_pairs} per request")
    return n


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def check_items(name: str, values: list, *, kinds: str) -> None:
    """`kinds`: "text" (strings), "prompt" (string or messages), "response" (string, a message or one-message list)."""
    allowed = {
        "text": "a string",
        "prompt": "a string or a non-empty list of {role, content} messages",
        "response": "a string or one assistant message",
    }[kinds]
    for i, value in enumerate(values):
        if isinstance(value, str):
            continue
        if kinds == "prompt" and _is_messages(value):
            continue
        if kinds == "response" and (isinstance(value, dict) or _is_messages(value)):
            continue
        raise RequestError(422, f"`{name}[{i}]` must be {allowed}, got {type(value).__name__}")
