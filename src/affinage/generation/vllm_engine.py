"""Rollouts on vLLM, for large models on GPUs (optional: ``pip install 'affinage[vllm]'``).

At 7B-70B parameters sampling dominates an RL step, and a serving engine (paged attention,
continuous batching, CUDA graphs) samples several times faster than a training framework's decode
loop. :class:`VLLMRollouts` runs a ``vllm.LLM`` *colocated* with training, on the same GPU(s): it is
built once from the starting weights, and before each rollout the policy's current weights (LoRA
merged in) are copied into it. The RL recipes then compute every log-probability with their own
training forward pass, as with the built-in loop, so vLLM's numerics never enter the PPO ratio.

Select it with ``rollout.engine: vllm`` (``rollout.vllm_gpu_memory_utilization`` is the share of GPU
memory vLLM may take; training uses the rest). A separate inference server (vLLM on other GPUs,
weights sent over NCCL) is the next step for multi-node runs; docs/rl.md describes the layout.

This module imports vLLM only inside :class:`VLLMRollouts`; it is never needed on a CPU, and the
test suite cannot exercise it (no GPU, no vLLM): it is written against vLLM's public ``LLM``,
``SamplingParams`` and ``TokensPrompt`` API; the weight update reaches into the engine's model the
way vLLM's own RLHF examples do, and fails with a clear message when a vLLM version moves it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from affinage.errors import ConfigError
from affinage.generation.rollout import Completions, SamplingParams


class VLLMRollouts:
    """A colocated vLLM engine that samples with the policy's current weights."""

    def __init__(self, model_path: str, *, dtype: torch.dtype, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, seed: int = 0) -> None:
        try:
            import vllm
        except ImportError:
            raise ConfigError(
                "rollout.engine=vllm needs vLLM, which is not installed: pip install 'affinage[vllm]' "
                "(Linux with a CUDA GPU); or use rollout.engine=affinage"
            ) from None
        if not torch.cuda.is_available():
            raise ConfigError("rollout.engine=vllm needs a CUDA GPU; on a CPU use rollout.engine=affinage")
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model_path, dtype=str(dtype).removeprefix("torch."), gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, seed=seed, enable_prefix_caching=True,
        )

    def _engine_model(self) -> Any:
        """The ``nn.Module`` inside vLLM's engine (single process, in-process executor)."""
        engine = self.llm.llm_engine
        paths = (
            ("model_executor", "driver_worker", "model_runner", "model"),
            ("model_executor", "driver_worker", "worker", "model_runner", "model"),
        )
        for path in paths:
            node: Any = engine
            for attr in path:
                node = getattr(node, attr, None)
                if node is None:
                    break
            if node is not None and hasattr(node, "load_weights"):
                return node
        raise ConfigError(
            "cannot reach the model inside this vLLM version's engine to update its weights; set "
            "VLLM_ENABLE_V1_MULTIPROCESSING=0, use a vLLM version with an in-process executor, or "
            "rollout.engine=affinage"
        )

    @torch.no_grad()
    def load_policy(self, policy: torch.nn.Module) -> None:
        """Copy the policy's weights (LoRA merged into the base weights) into the engine."""
        from affinage.models.adapters import _lora_base_state_dict, _peft_model, _strip_wrappers

        peft_model = _peft_model(policy)
        state = (
            _lora_base_state_dict(peft_model, merge=True) if peft_model is not None
            else {k: v.detach() for k, v in _strip_wrappers(policy).state_dict().items()}
        )
        self._engine_model().load_weights(weights=list(state.items()))
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()  # cached prefixes hold keys and values of the old weights

    def decode(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, *, n: int,
               stop_token_ids: Sequence[int]) -> Completions:
        """Sample ``n`` answers per prompt; the same result layout as :func:`~affinage.generation.rollout.decode_ids`."""
        vllm = self._vllm
        sampling = vllm.SamplingParams(
            n=n, temperature=params.temperature, top_k=params.top_k if params.top_k > 0 else -1, top_p=params.top_p,
            repetition_penalty=params.repetition_penalty, max_tokens=params.max_new_tokens, seed=params.seed,
            stop=list(params.stop) or None, stop_token_ids=list(stop_token_ids), include_stop_str_in_output=True,
        )
        start = time.perf_counter()
        prompts = [vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        result = Completions(decode_seconds=0.0)
        for out in outputs:
            for choice in out.outputs:
                tokens = list(choice.token_ids)
                finished = choice.finish_reason == "stop"
                result.token_ids.append(tokens)
                result.finished.append(finished)
                result.stopped_by_string.append(finished and isinstance(choice.stop_reason, str))
                result.new_tokens += len(tokens)
        result.decode_seconds = time.perf_counter() - start
        return result
