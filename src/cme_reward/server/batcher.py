"""Micro-batching for the reward server: concurrent requests are queued and scored together in one `reward.score` call.

When to score (the engine is idle and requests are queued):

- at once, when the queue holds at least as many pairs as the largest of the last few batches (the recent
  concurrency; 1 before the first batch), or `max_batch_pairs`: requests that arrived while a batch was being scored
  go out as soon as it ends, and a lone client never waits;
- otherwise the batcher waits for company, at most `batch_wait_ms` after the engine became idle or the oldest queued
  request arrived (whichever is later): when a batch's clients send their next requests, they go out together.

What to score: requests for the same prompt go in the same call, so the engine encodes the prompt once for all of its
samples (a GRPO group whose G samples arrive as G requests): the queue is taken prompt by prompt, the prompt of the
oldest request first, up to `max_batch_pairs` pairs (a single larger request is scored whole). Each request gets its
own scores, in its own order.

One batch is scored at a time, in a worker thread, so the event loop keeps accepting requests. A pair the reward
rejects fails only its own request (422); an unexpected error fails the batch (500, logged). A request whose client
went away before its batch started is not scored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import RequestError

__all__ = ["MicroBatcher", "prompt_key", "take_batch"]

logger = logging.getLogger(__name__)

RECENT_BATCHES = 8  # how many batch sizes the recent concurrency is taken from


def prompt_key(prompt: Any) -> tuple[str, str]:
    """What identifies a prompt in the queue: its text, or the `repr` of its chat messages.

    Example:

    ```python
    >>> prompt_key("2 + 2 =") == prompt_key("2 + 2 =")
    True
    ```
    """
    return ("text", prompt) if isinstance(prompt, str) else ("messages", repr(prompt))


@dataclass
class _Job:
    prompts: list
    responses: list
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    key: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.key = prompt_key(self.prompts[0])


def take_batch(pending: deque, max_pairs: int) -> list:
    """Take the next batch out of `pending` (queued jobs with `prompts` and `key`, oldest first), in place.

    Jobs are taken by prompt (`key`), prompts in the order of their oldest job: a prompt's jobs all go when they fit in
    the room left, and none of them otherwise (they lead a later batch). The oldest job always goes; when its prompt's
    jobs exceed `max_pairs`, as many of them as fit do (at least that one).

    Args:
        pending (`deque`): the queue; the taken jobs are removed from it, the others keep their order.
        max_pairs (`int`): most pairs in the batch, unless its first job alone has more.

    Returns:
        `list`: the batch's jobs.
    """
    by_prompt: dict[tuple[str, str], list] = {}
    for job in pending:
        by_prompt.setdefault(job.key, []).append(job)
    batch, room = [], max_pairs
    for jobs in by_prompt.values():
        size = sum(len(job.prompts) for job in jobs)
        if size > room and batch:
            continue
        for job in jobs:
            if batch and len(job.prompts) > room:
                break
            batch.append(job)
            room -= len(job.prompts)
        if room <= 0:
            break
    taken = {id(job) for job in batch}
    kept = [job for job in pending if id(job) not in taken]
    pending.clear()
    pending.extend(kept)
    return batch


class MicroBatcher:
    """Queue of scoring requests, scored together by one worker task; one `reward.score` call at a time.

    Args:
        reward (`CrossModelEntropyReward`): anything with a thread-safe `score(prompts, responses)`.
        max_batch_pairs (`int`, *optional*, defaults to `256`): most pairs merged into one call.
        batch_wait_ms (`float`, *optional*, defaults to `5.0`): longest wait for company once the engine is idle (see
            the module docstring: no wait when the queue already holds the recent concurrency).
    """

    def __init__(self, reward: Any, *, max_batch_pairs: int = 256, batch_wait_ms: float = 5.0):
        self.reward = reward
        self.max_batch_pairs = max_batch_pairs
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.pairs_scored = 0
        self.batches = 0
        self._pending: deque[_Job] = deque()
        self._pending_pairs = 0
        self._recent: deque[int] = deque(maxlen=RECENT_BATCHES)  # pairs of the last batches
        self._idle_since = 0.0  # when the last batch ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._busy = False  # a batch is being scored

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._wakeup = loop, asyncio.Event()
            self._task = loop.create_task(self._work(), name="cme-micro-batcher")

    async def score(self, prompts: list, responses: list) -> list[float | None]:
        """Queue one request's pairs; returns their scores, in order, once its batch is scored."""
        if not prompts:
            return []
        self._ensure_worker()
        job = _Job(prompts, responses, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pending_pairs += len(prompts)
        self._wakeup.set()
        return await job.future

    async def close(self) -> None:
        """Stop the worker once the queue is empty (in-flight batches finish)."""
        if self._task is None or self._loop is not asyncio.get_running_loop():
            return
        while (self._pending or self._busy) and not self._task.done():
            await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _enough_queued(self) -> bool:
        """The queue holds the recent concurrency (or a full batch): scoring it now loses nothing by waiting."""
        return self._pending_pairs >= min(self.max_batch_pairs, max(self._recent, default=1))

    async def _wait_for_company(self) -> None:
        while not self._enough_queued():
            start = max(self._pending[0].arrived, self._idle_since)
            remaining = start + self.batch_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _next_batch(self) -> list[_Job]:
        """The next batch's jobs; requests whose client went away are dropped from the queue unscored."""
        live = [job for job in self._pending if not job.future.done()]
        self._pending = deque(live)
        jobs = take_batch(self._pending, self.max_batch_pairs)
        self._pending_pairs = sum(len(job.prompts) for job in self._pending)
        return jobs

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._wait_for_company()
            jobs = self._next_batch()
            if not jobs:
                continue
            pairs = sum(len(job.prompts) for job in jobs)
            self._recent.append(pairs)
            self._busy = True
            try:
                results = await loop.run_in_executor(None, self._score_jobs, jobs)
            except Exception as err:  # unexpected: every request of the batch gets a 500
                logger.exception("Scoring a batch of %d pairs failed", pairs)
                failure = RequestError(500, f"scoring failed ({type(err).__name__}), see the server log")
                results = [failure] * len(jobs)
            finally:
                self._busy = False
                self._idle_since = time.monotonic()
            for job, result in zip(jobs, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _score_jobs(self, jobs: list[_Job]) -> list[list[float | None] | Exception]:
        """Worker thread: one `score` call for all jobs; on a bad pair, each job alone (so only its sender fails)."""
        prompts = [p for job in jobs for p in job.prompts]
        responses = [r for job in jobs for r in job.responses]
        try:
            scores = self.reward.score(prompts, responses)
        except (TypeError, ValueError, FloatingPointError) as err:
            if len(jobs) == 1 and not isinstance(err, FloatingPointError):
                return [RequestError(422, str(err))]
            return [self._score_alone(job) for job in jobs]
        self.pairs_scored += len(prompts)
        self.batches += 1
        out, start = [], 0
        for job in jobs:
            out.append(list(scores[start : start + len(job.prompts)]))
            start += len(job.prompts)
        return out

    def _score_alone(self, job: _Job) -> list[float | None] | Exception:
        try:
            scores = self.reward.score(job.prompts, job.responses)
        except FloatingPointError:  # non-finite log-probs: the TRL entry point scores those pairs None
            scores = self.reward(prompts=job.prompts, completions=job.responses)
        except (TypeError, ValueError) as err:
            return RequestError(422, str(err))
        self.pairs_scored += len(job.prompts)
        self.batches += 1
        return list(scores)
