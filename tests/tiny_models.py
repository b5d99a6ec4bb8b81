"""Offline builders for tiny verifiers: random-init Qwen2 / Llama models and byte-level BPE tokenizers.

Nothing here touches the Hugging Face hub. Models and tokenizers are saved with `save_pretrained` and meant to be
loaded back by path, exactly as a user would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "def add(a, b):\n    return a + b\n",
    "Reinforcement learning from verifier feedback uses a frozen language model as a judge.",
    "Héllo wörld, ünïcode façade — naïve café, 東京, Привет мир, 🙂🚀 emoji!",
    "1 + 1 = 2, 2 * 3 = 6, 10 / 4 = 2.5",
    "Write a short poem about the sea. The sea is blue and deep and wide.",
] * 20


def build_tokenizer(vocab_size: int = 400, *, bos: bool = True, chat_template: bool = True) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a small built-in corpus."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if bos:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>" if bos else None,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model(arch: str, vocab_size: int, *, seed: int = 0, hidden: int = 32, layers: int = 2, max_pos: int = 512):
    """A tiny random-init causal LM of the given architecture (`"qwen2"`, `"llama"` or `"gemma3"`)."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_pos,
        tie_word_embeddings=False,
    )
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "gemma3":  # sliding-window + global layers, final logit soft-capping: the unusual paths
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(**common, head_dim=hidden // 4, sliding_window=8, final_logit_softcapping=30.0)
        config.layer_types = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (
            layers % 2
        )
        model = Gemma3ForCausalLM(config)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    # Random init is nearly uniform; sharpen the output so log-probs spread out and comparisons mean something.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    return model.eval()


def save_verifier(
    path: Path, arch: str = "qwen2", *, seed: int = 0, bos: bool = True, chat_template: bool = True, max_pos: int = 512
) -> Path:
    """Build a tiny verifier + tokenizer and save both to `path`; returns `path`."""
    tok = build_tokenizer(bos=bos, chat_template=chat_template)
    model = build_model(arch, len(tok), seed=seed, max_pos=max_pos)
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.bos_token_id = tok.bos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def load_tokenizer(path: Path):
    return AutoTokenizer.from_pretrained(path)
