"""Micro-batching for the reward server: concurrent requests are queued and scored together in one `reward.score`
call, collected for at most `batch_wait_ms` after the oldest queued request arrived or until `max_batch_pairs` pairs (a
single larger request is scored whole). One batch is scored at a time, in a worker thread, so the event loop keeps
accepting requests. A pair the reward rejects fails only its own request (422); an unexpected error fails the batch
(500, logged).
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

__all__ = ["MicroBatcher"]

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    prompts: list
    responses: list
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Queue of scoring requests, scored together by one worker task; one `reward.score` call at a time.

    Args:
        reward (`CrossModelEntropyReward`): anything with a thread-safe `score(prompts, responses)`.
        max_batch_pairs (`int`, *optional*, defaults to `256`): most pairs merged into one call.
        batch_wait_ms (`float`, *optional*, defaults to `5.0`): longest wait after the oldest queued request.
    """

    def __init__(self, reward: Any, *, max_batch_pairs: int = 256, batch_wait_ms: float = 5.0):
        self.reward = reward
        self.max_batch_pairs = max_batch_pairs
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.pairs_scored = 0
        self.batches = 0
        self._pending: deque[_Job] = deque()
        self._pending_pairs = 0
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
        """Queue one request's pairs; returns their scores once its batch is scored."""
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

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # wait for company: until max_batch_pairs, or batch_wait_ms after the oldest request arrived
            while self._pending_pairs < self.max_batch_pairs:
                remaining = self._pending[0].arrived + self.batch_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            jobs, pairs = [], 0
            while self._pending and (not jobs or pairs + len(self._pending[0].prompts) <= self.max_batch_pairs):
                job = self._pending.popleft()
                self._pending_pairs -= len(job.prompts)
                if not job.future.done():  # a client that went away is not scored
                    jobs.append(job)
                    pairs += len(job.prompts)
            if not jobs:
                continue
            self._busy = True
            try:
                results = await loop.run_in_executor(None, self._score_jobs, jobs)
            except Exception as err:  # unexpected: every request of the batch gets a 500
                logger.exception("Scoring a batch of %d pairs failed", pairs)
                failure = RequestError(500, f"scoring failed ({type(err).__name__}), see the server log")
                results = [failure] * len(jobs)
            finally:
                self._busy = False
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
