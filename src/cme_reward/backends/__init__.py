"""Building a scorer (`factory.load_scorer`, for either backend) and the scorers that run the verifier outside this
process: [`VLLMBackend`] (`cme_reward.backends.vllm`), a `vllm serve` process whose per-token log-probs come from
`POST /v1/completions` with `prompt_logprobs`. The in-process scorer is `cme_reward.engine.ScoringEngine`; both
implement `cme_reward.scorer.Scorer`."""

from .vllm import VLLMBackend

__all__ = ["VLLMBackend"]
