"""Online RL maths: KL estimators, per-token rewards, GAE, group baselines, clipped losses.

Pure functions of tensors (torch only). Shapes: ``B`` sequences, ``T`` completion tokens; a
``mask`` [B, T] is 1 on real completion tokens and 0 on padding. Token ``t`` of a completion is the
action ``a_t`` taken in state ``s_t`` = prompt + completion[:t].

References (equations cited in each docstring):

* Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation" (GAE).
* Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (PPO).
* Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html (k1, k2, k3).
* Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (KL-penalised reward,
  adaptive KL coefficient); Ouyang et al. 2022 (InstructGPT), Eq. 2.
* Shao et al. 2024, "DeepSeekMath" (GRPO), Eq. 3 and Sec. 4.1.2.
* Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
  Human Feedback in LLMs" (RLOO), Sec. 3.
* Yu et al. 2025, "DAPO", Eq. 8 to 10 (token-level loss, clip-higher).
* Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO), Eq. 3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# ----------------------------------------------------------------------------------------------
# Masked statistics
# ----------------------------------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over everything, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return masked_sum(values, mask) / mask.sum().clamp(min=1)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked values (Bessel's correction, n - 1)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    n = mask.sum()
    return masked_sum((values - mean) ** 2, mask) / (n - 1).clamp(min=1)


def whiten(
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    shift_mean: bool = True,
    mean: torch.Tensor | float | None = None,
    var: torch.Tensor | float | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked values; with ``shift_mean=False`` the mean is
    added back (only the scale changes, as PPO implementations do for rewards).

    ``mean``/``var`` may be given (e.g. statistics gathered over all processes); otherwise they are
    those of ``values`` under ``mask``. Positions outside the mask are returned as 0.
    """
    if mask is None:
        mask = torch.ones_like(values)
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask) if mean is None else torch.as_tensor(mean, dtype=values.dtype)
    var = masked_var(values, mask) if var is None else torch.as_tensor(var, dtype=values.dtype)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ----------------------------------------------------------------------------------------------
# KL estimators (Schulman 2020)
# ----------------------------------------------------------------------------------------------


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(a) - log pi_ref(a): unbiased for KL(pi || pi_ref) with a ~ pi, high variance,
    negative for single tokens. The per-token penalty of Ziegler et al. 2019 / InstructGPT Eq. 2."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi(a) - log pi_ref(a))^2 / 2: biased, low variance, never negative."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = r - 1 - log r with r = pi_ref(a) / pi(a): unbiased for KL(pi || pi_ref) with a ~ pi
    (E[r] = 1), never negative, low variance. GRPO's KL term (DeepSeekMath Eq. 4)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


# ----------------------------------------------------------------------------------------------
# PPO for RLHF: rewards, GAE, clipped losses, adaptive KL
# ----------------------------------------------------------------------------------------------


def kl_penalised_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards r_t = -beta * KL_t, plus the sequence score on the last real token.

    InstructGPT Eq. 2 (Ouyang et al. 2022; Ziegler et al. 2019 Eq. 2): the objective
    r_phi(x, y) - beta * log(pi(y|x) / pi_ref(y|x)) spread over the tokens of y, the per-token KL
    estimate ``kl`` [B, T] as the penalty. scores [B] -> rewards [B, T] (0 on padding).
    """
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # [B] index of each sequence's last token
    rewards = rewards.clone()
    rewards[torch.arange(len(scores), device=scores.device), last] += scores.to(rewards.dtype)
    return rewards * mask


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns (advantages, returns), both [B, T].

    Schulman et al. 2016, Eq. 11-16:
        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lambda * A_{t+1}        (A = 0 and V = 0 after the last token)
        R_t     = A_t + V(s_t)                              (the value target)
    The episode ends at the last real token of each row (the mask is a prefix of ones).
    """
    rewards, values, mask = rewards.float(), values.float(), mask.float()
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        # Past the end of a row nothing flows back: its padding holds zeros.
        next_value = values[:, t] * m
        next_advantage = advantage * m
    returns = (advantages + values) * mask
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, per token (to minimise); and detached metrics.

    Schulman et al. 2017, Eq. 7, with rho_t = pi(a_t|s_t) / pi_old(a_t|s_t):
        L_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)
    ``clip_high`` defaults to ``clip_low``; a larger one is DAPO's clip-higher (Yu et al. 2025, Eq. 10).
    Metrics: ``clip_fraction`` (tokens where the clipped term is the smaller one, i.e. the gradient
    is zero) and ``approx_kl`` = mean of (rho - 1) - log rho (k3 of the old policy from the new).
    Returns loss [B, T] (0 on padding) and the metrics (scalars, means over real tokens).
    """
    clip_high = clip_low if clip_high is None else clip_high
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped) * mask
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean((clipped < unclipped).float(), mask),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Value loss with the value update clipped around the rollout's values, per token.

        L^V_t = 1/2 * max((V_t - R_t)^2, (clip(V_t, V_old,t - c, V_old,t + c) - R_t)^2)

    The clipped value objective of the PPO reference implementation (OpenAI baselines ``ppo2``;
    Schulman et al. 2017 Sec. 5 use an unclipped squared error), as used by InstructGPT-style RLHF.
    Returns loss [B, T] and ``value_clip_fraction`` (tokens where the clipped error is larger).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * torch.maximum(error, clipped_error) * mask
    with torch.no_grad():
        metrics = {"value_clip_fraction": masked_mean((clipped_error > error).float(), mask)}
    return loss, metrics


def adaptive_kl_coef(kl_coef: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """Proportional controller of the KL coefficient (Ziegler et al. 2019, Sec. 2.2):

        e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    ``kl`` is the mean KL per sequence of the rollout just made, ``n_steps`` the number of
    sequences (samples) it held.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


# ----------------------------------------------------------------------------------------------
# Critic-free baselines: GRPO and RLOO
# ----------------------------------------------------------------------------------------------


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Group-normalised advantages of GRPO (DeepSeekMath Sec. 4.1.2, outcome supervision):

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

    for the ``group_size`` samples of one prompt (consecutive in ``rewards`` [B]); the same
    advantage goes to every token of sample i. ``scale=False`` keeps only the centring, as Dr. GRPO
    recommends (Liu et al. 2025, Sec. 3.2: dividing by the std up-weights prompts that are too easy
    or too hard). The std is the unbiased one (n - 1), as in the reference implementations.
    """
    groups = rewards.float().view(-1, group_size)  # [G, n]
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.view(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out baselines (Ahmadian et al. 2024, Sec. 3.2; Kool et al. 2019):

        A_i = r_i - 1/(k-1) * sum_{j != i} r_j  =  k/(k-1) * (r_i - mean(r_group))

    ``rewards`` [B] holds groups of ``group_size`` = k >= 2 consecutive samples of one prompt.
    """
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    groups = rewards.float().view(-1, group_size)  # [G, k]
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).view(-1)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": grpo_advantages,
    "rloo": rloo_advantages,
}


# ----------------------------------------------------------------------------------------------
# From per-token losses to the loss of one optimizer step
# ----------------------------------------------------------------------------------------------


def sequence_mean_sum(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GRPO (DeepSeekMath Eq. 3): 1/G sum_i 1/|o_i| sum_t L_{i,t}. Returns sum_i mean_t L_{i,t};
    divide by the number of sequences of the optimizer step. Every answer weighs the same, so the
    tokens of long answers weigh less (the length bias Dr. GRPO points out)."""
    return (masked_sum(loss, mask, dim=1) / mask.sum(dim=1).clamp(min=1)).sum()


def token_sum(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DAPO (Yu et al. 2025, Eq. 8-9, token-level policy gradient loss): 1/sum_i |o_i| * sum_{i,t} L_{i,t}.
    Returns the sum over tokens; divide by the number of tokens of the optimizer step. Also the
    token mean of PPO implementations for RLHF."""
    return masked_sum(loss, mask)


LOSS_AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "grpo": sequence_mean_sum,
    "dapo": token_sum,
    "dr_grpo": token_sum,
}
"""Numerator of each normalisation; :func:`aggregation_denominator` gives the matching divisor.
``dr_grpo`` (Liu et al. 2025, Eq. 3) sums over tokens and divides by a constant, the number of
sequences times the generation budget (max new tokens), so no answer length biases the gradient."""


def aggregation_denominator(mode: str, *, num_sequences: int, num_tokens: int, max_new_tokens: int) -> float:
    """The divisor of :data:`LOSS_AGGREGATIONS` ``[mode]`` for one optimizer step, counted over its
    whole (global) batch: dividing each micro-batch's sum by it makes gradient accumulation and data
    parallelism give exactly the gradient of one large batch."""
    if mode == "grpo":
        return float(max(num_sequences, 1))
    if mode == "dapo":
        return float(max(num_tokens, 1))
    if mode == "dr_grpo":
        return float(max(num_sequences * max_new_tokens, 1))
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")


# ----------------------------------------------------------------------------------------------
# Token log-probabilities and entropy from logits
# ----------------------------------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] without materialising the whole log-softmax.  [B, T, V], [B, T] -> [B, T]"""
    logits = logits.float()
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax at each position: H = logsumexp(z) - sum_v p_v z_v.  [B, T, V] -> [B, T]"""
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
