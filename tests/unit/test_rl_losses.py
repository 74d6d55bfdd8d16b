"""RL maths by value: KL estimators, KL-penalised rewards, GAE, GRPO/RLOO advantages, clipped losses,
loss aggregations, the adaptive KL controller. Each expected value is derived in the test."""

from __future__ import annotations

import math

import pytest
import torch

from affinage.losses.rl import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    adaptive_kl_coef,
    aggregation_denominator,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae_advantages,
    grpo_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalised_rewards,
    masked_mean,
    masked_var,
    rloo_advantages,
    token_logprobs,
    whiten,
)


def test_kl_estimators_by_value():
    # log pi = log 0.5, log pi_ref = log 0.25: log(pi/pi_ref) = log 2, r = pi_ref/pi = 1/2
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    # k3 = r - 1 - log r = 0.5 - 1 + log 2
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 - 1 + math.log(2))
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_k1_and_k3_are_unbiased_estimates_of_the_kl():
    """Averaged over tokens drawn from pi, k1 and k3 both give KL(pi || pi_ref); k3 is never negative."""
    pi = torch.tensor([0.6, 0.3, 0.1])
    ref = torch.tensor([0.2, 0.5, 0.3])
    exact = (pi * (pi / ref).log()).sum().item()
    # The expectation under pi of a per-token estimate f(a) is sum_a pi(a) f(a): no sampling noise.
    k1 = (pi * kl_k1(pi.log(), ref.log())).sum().item()
    k3_values = kl_k3(pi.log(), ref.log())
    k3 = (pi * k3_values).sum().item()
    assert k1 == pytest.approx(exact, rel=1e-6)
    assert k3 == pytest.approx(exact, rel=1e-6)
    assert (k3_values >= 0).all()
    assert (kl_k1(pi.log(), ref.log()) < 0).any()  # k1 is negative for single tokens where pi < pi_ref


def test_kl_penalised_rewards_put_the_score_on_the_last_token():
    # r_t = -beta * kl_t, plus the score on the last real token (row 0 has 3 tokens, row 1 has 2).
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    rewards = kl_penalised_rewards(torch.tensor([1.0, -2.0]), kl, mask, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 - 2.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_gae_by_hand():
    """One row of 3 tokens, gamma = 0.9, lambda = 0.8, V = (0.5, 0.2, 0.1), r = (0, 0, 1):
        delta_2 = 1 + 0.9 * 0 - 0.1 = 0.9                        A_2 = 0.9
        delta_1 = 0 + 0.9 * 0.1 - 0.2 = -0.11                    A_1 = -0.11 + 0.72 * 0.9 = 0.538
        delta_0 = 0 + 0.9 * 0.2 - 0.5 = -0.32                    A_0 = -0.32 + 0.72 * 0.538 = 0.06736
    returns = A + V. A second row ends after 2 tokens: its padding must not leak into it.
    """
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.1], [1.0, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    a0 = [-0.32 + 0.72 * 0.538, 0.538, 0.9]
    # row 2: delta_1 = 2 - 1 = 1, A_1 = 1; delta_0 = 0 + 0.9 * 1 - 1 = -0.1, A_0 = -0.1 + 0.72 = 0.62
    a1 = [0.62, 1.0, 0.0]
    torch.testing.assert_close(advantages, torch.tensor([a0, a1]))
    torch.testing.assert_close(returns, torch.tensor([[a0[0] + 0.5, 0.538 + 0.2, 1.0], [1.62, 2.0, 0.0]]))


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    """lambda = 1: A_t = sum_k gamma^k r_{t+k} - V(s_t), whatever the values."""
    torch.manual_seed(0)
    rewards, values = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.ones(2, 5)
    advantages, _ = gae_advantages(rewards, values, mask, gamma=0.7, lam=1.0)
    for t in range(5):
        ret = sum(0.7**k * rewards[:, t + k] for k in range(5 - t))
        torch.testing.assert_close(advantages[:, t], ret - values[:, t])


def test_grpo_advantages_by_value():
    # group 1: rewards (1, 0, 0, 1): mean 0.5, unbiased std sqrt(1/3) -> +-0.5 * sqrt(3)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = grpo_advantages(rewards, 4, eps=0.0)
    half_root3 = 0.5 * math.sqrt(3)
    torch.testing.assert_close(adv[:4], torch.tensor([half_root3, -half_root3, -half_root3, half_root3]))
    # group 2: all equal -> zero advantage (0 / (0 + eps))
    torch.testing.assert_close(grpo_advantages(rewards, 4)[4:], torch.zeros(4))
    # Dr. GRPO: centring only
    torch.testing.assert_close(grpo_advantages(rewards, 4, scale=False)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_rloo_leave_one_out_by_value():
    # rewards (3, 1, 2): baselines are the mean of the two others: (1.5, 2.5, 2) -> (1.5, -1.5, 0)
    adv = rloo_advantages(torch.tensor([3.0, 1.0, 2.0]), 3)
    torch.testing.assert_close(adv, torch.tensor([1.5, -1.5, 0.0]))
    # Equivalently k/(k-1) * (r - mean)
    r = torch.tensor([0.3, -1.0, 2.0, 0.5])
    torch.testing.assert_close(rloo_advantages(r, 4), 4 / 3 * (r - r.mean()))
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(r, 1)
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "rloo"}


def test_clipped_policy_loss_by_value():
    """eps = 0.2. Token 0: ratio 1.5, A = +1 -> min(1.5, 1.2) = 1.2 (clipped, zero gradient).
    Token 1: ratio 1.5, A = -1 -> min(-1.5, -1.2) = -1.5 (unclipped: a bad action made likelier is
    never clipped). Token 2: ratio 0.5, A = -2 -> min(-1, -1.6) = -1.6 (clipped). Token 3: padding."""
    ratio = torch.tensor([[1.5, 1.5, 0.5, 3.0]])
    old = torch.zeros(1, 4)
    logp = ratio.log().requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, -2.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, metrics = clipped_policy_loss(logp, old, adv, mask, clip_low=0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 1.5, 1.6, 0.0]]))
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 3)
    # approx_kl = mean over real tokens of (ratio - 1) - log ratio
    approx = sum((r - 1) - math.log(r) for r in (1.5, 1.5, 0.5)) / 3
    assert metrics["approx_kl"].item() == pytest.approx(approx)
    loss.sum().backward()
    # d(-ratio * A)/d logp = -ratio * A where unclipped, 0 where clipped or padded
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.5, 0.0, 0.0]]))


def test_clip_higher_widens_the_upper_bound_only():
    logp = torch.tensor([[math.log(1.25), math.log(0.7)]])
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    symmetric, _ = clipped_policy_loss(logp, torch.zeros(1, 2), adv, mask, 0.2)
    higher, _ = clipped_policy_loss(logp, torch.zeros(1, 2), adv, mask, 0.2, clip_high=0.28)
    # upper: 1.25 clipped to 1.2 vs not clipped under 1.28; lower: 0.7 -> 0.8 in both
    torch.testing.assert_close(symmetric, torch.tensor([[-1.2, 0.8]]))
    torch.testing.assert_close(higher, torch.tensor([[-1.25, 0.8]]))


def test_clipped_value_loss_by_value():
    """c = 0.2, V_old = 0. Token 0: V = 1, R = 2 -> errors (1-2)^2 = 1 and (0.2-2)^2 = 3.24: the max
    3.24 (the clipped move counts). Token 1: V = 1, R = 0.5 -> 0.25 vs 0.09 -> 0.25. Halved."""
    values = torch.tensor([[1.0, 1.0]])
    loss, metrics = clipped_value_loss(values, torch.zeros(1, 2), torch.tensor([[2.0, 0.5]]), torch.ones(1, 2), clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([[0.5 * 3.24, 0.5 * 0.25]]))
    assert metrics["value_clip_fraction"].item() == pytest.approx(0.5)


def test_loss_aggregations_by_value():
    """Per-token losses of two answers of 1 and 3 tokens: (4) and (1, 1, 1).
    grpo: mean per answer (4 and 1), then over answers: 2.5.
    dapo: over tokens: 7 / 4 = 1.75.
    dr_grpo: sum / (answers * max_new_tokens) = 7 / (2 * 4) = 0.875."""
    loss = torch.tensor([[4.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    expected = {"grpo": 2.5, "dapo": 1.75, "dr_grpo": 0.875}
    for mode, value in expected.items():
        denominator = aggregation_denominator(mode, num_sequences=2, num_tokens=4, max_new_tokens=4)
        assert (LOSS_AGGREGATIONS[mode](loss, mask) / denominator).item() == pytest.approx(value)


@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo"])
def test_aggregation_over_micro_batches_equals_one_batch(mode):
    """Dividing each micro-batch's numerator by the global denominator makes accumulation exact."""
    torch.manual_seed(1)
    loss = torch.rand(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    denominator = aggregation_denominator(mode, num_sequences=6, num_tokens=int(mask.sum()), max_new_tokens=5)
    whole = LOSS_AGGREGATIONS[mode](loss, mask) / denominator
    parts = sum(LOSS_AGGREGATIONS[mode](loss[i : i + 2], mask[i : i + 2]) / denominator for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregation_denominator("nope", num_sequences=1, num_tokens=1, max_new_tokens=1)


def test_adaptive_kl_controller():
    # KL twice the target: error clipped to +0.2; K = 64 / 1000 -> beta * (1 + 0.2 * 0.064)
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=1000, n_steps=64) == pytest.approx(0.1 * (1 + 0.0128))
    # KL at 5.7 for target 6: error -0.05
    assert adaptive_kl_coef(0.1, kl=5.7, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1 * (1 - 0.005))


def test_whiten_and_masked_statistics():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_var(x, mask).item() == pytest.approx(1.0)  # unbiased: (1 + 0 + 1) / 2
    torch.testing.assert_close(whiten(x, mask, eps=0.0), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(whiten(x, mask, shift_mean=False, eps=0.0), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))
    torch.testing.assert_close(whiten(torch.tensor([2.0, 4.0]), mean=1.0, var=4.0, eps=0.0), torch.tensor([0.5, 1.5]))


def test_token_logprobs_and_entropy_match_the_full_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    expected = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, tokens), expected)
    p = logits.softmax(-1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    # a uniform distribution over 7 tokens has entropy log 7
    assert entropy_from_logits(torch.zeros(1, 1, 7)).item() == pytest.approx(math.log(7))
