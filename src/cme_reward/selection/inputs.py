"""What verifiers are compared on: labelled responses (a 0/1 or boolean label column, 1 = good) or preference pairs
(`chosen` / `rejected` columns, as preference datasets ship them). No model code.

A bad row raises [`InputError`] naming the file, the line/row, the column and what is allowed; with `skip_bad` it is
skipped and listed in `ComparisonData.skipped` instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files.pairs import load_pairs
from ..files.readers import bad_row, iter_records, json_type, warn_skipped
from ..scoring.formatting import normalize_messages

__all__ = ["ComparisonData", "load_comparison_data"]

logger = logging.getLogger(__name__)

KINDS = ("labelled", "pairs")
_TRUE, _FALSE = ("1", "true"), ("0", "false")  # label text as CSV cells hold it


@dataclass
class ComparisonData:
    """The responses to score and what is known about them, in input order.

    Labelled input holds one response per row and `labels[i]` is its label. Preference pairs hold two responses per
    row, interleaved: `responses[2k]` is row k's chosen response (label `True`), `responses[2k + 1]` its rejected one
    (label `False`); both share `prompts[2k] == prompts[2k + 1]`.
    """

    path: Path
    kind: str  # "labelled" or "pairs"
    unit: str  # "line" or "row": what `locations` count
    locations: list[int] = field(default_factory=list)  # one per input row used
    prompts: list[Any] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    columns: dict[str, str | None] = field(default_factory=dict)  # the columns read, by role

    @property
    def rows(self) -> int:
        """Input rows used (pairs count once)."""
        return len(self.locations)


def _label(value: Any, column: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"column {column!r} must be 1 / true (good) or 0 / false (bad), got {value!r}")


def _both_classes(data: ComparisonData, column: str) -> None:
    good = sum(data.labels)
    if good in (0, len(data.labels)):
        which = "1 (good)" if good else "0 (bad)"
        raise InputError(f"{data.path}: comparing verifiers needs good and bad responses, but all {data.rows} rows "
                         f"have {column!r} = {which}")  # fmt: skip


def _labelled(path: Path, *, label_column: str, skip_bad: bool, limit: int | None, **columns: Any) -> ComparisonData:
    pairs = load_pairs(path, skip_bad=skip_bad, limit=None if skip_bad else limit, **columns)
    data = ComparisonData(path=pairs.path, kind="labelled", unit=pairs.unit, skipped=list(pairs.skipped))
    data.columns = {"prompt": pairs.prompt_column, "response": pairs.response_column,
                    "messages": pairs.messages_column, "label": label_column, "as_chat": pairs.as_chat}  # fmt: skip
    for record, prompt, response in zip(pairs.records, pairs.prompts, pairs.responses, strict=True):
        if limit is not None and data.rows >= limit:
            break
        try:
            if label_column not in record.data:
                names = ", ".join(map(repr, record.data))
                raise InputError(f"missing column {label_column!r} (columns: {names}); name it with --label-column")
            label = _label(record.data[label_column], label_column)
        except InputError as err:
            if not skip_bad:
                raise InputError(f"{path}: {pairs.unit} {record.location}: {err}") from None
            logger.warning("%s: %s %d skipped: %s", path, pairs.unit, record.location, err)
            data.skipped.append((record.location, str(err)))
            continue
        data.locations.append(record.location)
        data.prompts.append(prompt)
        data.responses.append(response)
        data.labels.append(label)
    if not data.rows:
        raise InputError(f"{path}: no rows to compare on ({len(data.skipped)} bad rows skipped)")
    _both_classes(data, label_column)
    return data


def _turns(value: Any, column: str) -> tuple[str, list[dict[str, str]]]:
    """A chosen / rejected value -> (response text, the messages before it). A list of messages must end with the
    assistant's turn (e.g. `[user, assistant]`, as UltraFeedback ships them)."""
    if isinstance(value, str):
        return value, []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InputError(f"column {column!r} must be a response string or a list of messages ending with the "
                         f"assistant's turn, got {json_type(value) if value != [] else 'an empty list'}")  # fmt: skip
    try:
        messages = normalize_messages(value, f"column {column!r}, message")
    except (TypeError, ValueError) as err:
        raise InputError(str(err)) from None
    if messages[-1]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise InputError(f"column {column!r} must end with the assistant's turn, got roles {roles}")
    return messages[-1]["content"], messages[:-1]


def _prompt(row: dict[str, Any], column: str, before: list[dict[str, str]], as_chat: bool) -> Any:
    if column not in row:
        if before:
            return before  # the conversation before the chosen turn
        names = ", ".join(map(repr, row))
        raise InputError(f"missing column {column!r} (columns: {names}); name it with --prompt-column")
    value = row[column]
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if as_chat else value
    if isinstance(value, list) and value:
        try:
            return normalize_messages(value, f"column {column!r}, message")
        except (TypeError, ValueError) as err:
            raise InputError(str(err)) from None
    raise InputError(f"column {column!r} must be a string or a list of messages, got {json_type(value)}")


def _pairs(path: Path, *, prompt_column: str, chosen_column: str, rejected_column: str, as_chat: bool,
           split: str | None, skip_bad: bool, limit: int | None) -> ComparisonData:  # fmt: skip
    unit, items = iter_records(path, split=split)
    data = ComparisonData(path=path, kind="pairs", unit=unit)
    data.columns = {"prompt": prompt_column, "chosen": chosen_column, "rejected": rejected_column,
                    "as_chat": as_chat}  # fmt: skip
    for location, row, problem in items:
        if limit is not None and data.rows >= limit:
            break
        if problem is None:
            try:
                missing = [c for c in (chosen_column, rejected_column) if c not in row]
                if missing:
                    names = ", ".join(map(repr, row))
                    raise InputError(f"missing column {missing[0]!r} (columns: {names})")
                chosen, before = _turns(row[chosen_column], chosen_column)
                rejected, _ = _turns(row[rejected_column], rejected_column)
                prompt = _prompt(row, prompt_column, before, as_chat)
            except InputError as err:
                problem = str(err)
        if problem is not None:
            data.skipped.append(bad_row(path, unit, location, problem, skip_bad=skip_bad))
            continue
        data.locations.append(location)
        data.prompts += [prompt, prompt]
        data.responses += [chosen, rejected]
        data.labels += [True, False]
    warn_skipped(path, unit, data.skipped)
    if not data.rows:
        raise InputError(f"{path}: no preference pairs to compare on ({len(data.skipped)} bad rows skipped)")
    return data


def _detect(path: Path, split: str | None, label_column: str, chosen: str, rejected: str) -> str:
    """ "pairs" when the first readable row has both pair columns, "labelled" when it has the label column."""
    unit, items = iter_records(path, split=split)
    location, row = next(((loc, row) for loc, row, problem in items if problem is None), (None, None))
    if row is None:
        raise InputError(f"{path}: no readable row")
    if chosen in row and rejected in row:
        return "pairs"
    if label_column in row:
        return "labelled"
    names = ", ".join(map(repr, row))
    raise InputError(
        f"{path}: {unit} {location}: neither a label column {label_column!r} (labelled responses) nor "
        f"{chosen!r} and {rejected!r} columns (preference pairs); columns: {names}. Name them with --label-column "
        "or --chosen-column / --rejected-column"
    )


def load_comparison_data(
    path: str | Path,
    *,
    kind: str | None = None,
    label_column: str = "label",
    prompt_column: str = "prompt",
    response_column: str | None = None,
    messages_column: str | None = None,
    as_chat: bool = False,
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    split: str | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
) -> ComparisonData:
    """Read labelled responses or preference pairs to compare verifiers on.

    Args:
        path (`str` or `Path`): a `.jsonl`, `.json`, `.csv` or `.parquet` file, or a `save_to_disk` directory.
        kind (`str`, *optional*): `"labelled"` or `"pairs"`; `None` decides from the first readable row (both pair
            columns: pairs; else the label column: labelled).
        label_column (`str`, *optional*, defaults to `"label"`): labelled input: 1 / `true` is good, 0 / `false` bad
            (booleans, integers, or their text in CSV); both classes must occur.
        prompt_column (`str`, *optional*, defaults to `"prompt"`): the prompt, text or a list of messages. Pairs whose
            chosen value is a conversation (`[user, assistant]`) may leave it out: the turns before the answer are
            the prompt.
        response_column, messages_column (`str`, *optional*): labelled input, as in `cme_reward.files.pairs`.
        as_chat (`bool`, *optional*, defaults to `False`): a plain-text prompt becomes one user message (the
            verifier's chat template applies).
        chosen_column, rejected_column (`str`, *optional*, defaults to `"chosen"` / `"rejected"`): pairs: each a
            response string or a list of messages ending with the assistant's turn.
        split (`str`, *optional*): split of a saved `DatasetDict`.
        skip_bad (`bool`, *optional*, defaults to `False`): skip bad rows (listed in `skipped`) instead of raising.
        limit (`int`, *optional*): use only the first `limit` usable rows (pairs).

    Returns:
        [`ComparisonData`]

    Raises:
        `InputError`: a bad row (without `skip_bad`), a bad label, no usable row, or labelled rows of one class only
            (the message names the file, line and column).

    Example:
        ```python
        >>> data = load_comparison_data("labelled.jsonl")
        >>> data.kind, data.rows, sum(data.labels)
        ('labelled', 120, 60)
        ```
    """
    path = Path(path)
    if kind not in (None, *KINDS):
        raise ValueError(f"`kind` must be None or one of {KINDS}, got {kind!r}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be a positive integer, got {limit}")
    kind = kind or _detect(path, split, label_column, chosen_column, rejected_column)
    if kind == "pairs":
        if response_column or messages_column:
            raise InputError("preference pairs take their responses from --chosen-column / --rejected-column, not "
                             "--response-column / --messages-column")  # fmt: skip
        data = _pairs(path, prompt_column=prompt_column, chosen_column=chosen_column, rejected_column=rejected_column,
                      as_chat=as_chat, split=split, skip_bad=skip_bad, limit=limit)  # fmt: skip
    else:
        data = _labelled(path, label_column=label_column, prompt_column=prompt_column, response_column=response_column,
                         messages_column=messages_column, as_chat=as_chat, split=split, skip_bad=skip_bad,
                         limit=limit)  # fmt: skip
    return data
