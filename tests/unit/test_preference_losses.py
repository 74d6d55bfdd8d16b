"""Preference losses by value (derivations in the docstrings), by property, and against TRL 1.16.

Notation: ``h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]`` (the DPO log-ratio
gap), ``l(z) = -log sigmoid(z) = log(1 + e^-z)``.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from affinage.losses.preference import (
    PAIRWISE_LOSSES,
    REFERENCE_FREE,
    PairLogps,
    PreferenceLossName,
    PreferenceLossParams,
    UnpairedLogps,
    bradley_terry_loss,
    cdpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    preference_loss,
    robust_dpo_loss,
    rpo_loss,
    sequence_logps,
    simpo_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def softplus(z: float) -> float:
    """l(z) = -log sigmoid(z)."""
    return math.log1p(math.exp(-z))


# ----------------------------------------------------------------------------------------------
# By value
# ----------------------------------------------------------------------------------------------


def test_dpo_by_value():
    """pi: chosen -10, rejected -12; ref: both -11. Log-ratios +1 and -1, h = 2; beta = 0.5:
    beta*h = 1, L = l(1) = log(1 + e^-1) = 0.31326. Rewards beta*ratio = +0.5 and -0.5, margin 1.
    At h = 0 (policy == reference) L = log 2 whatever beta."""
    out = dpo_loss(t(-10, -11), t(-12, -11), t(-11, -11), t(-11, -11), beta=0.5)
    assert out.losses.tolist() == pytest.approx([softplus(1.0), math.log(2)], abs=1e-12)
    assert out.metrics["chosen_rewards"].tolist() == pytest.approx([0.5, 0.0])
    assert out.metrics["rejected_rewards"].tolist() == pytest.approx([-0.5, 0.0])
    assert out.metrics["margins"].tolist() == pytest.approx([1.0, 0.0])
    assert out.metrics["accuracies"].tolist() == [1.0, 0.0]  # a tie is not a win
    assert not any(m.requires_grad for m in out.metrics.values())


def test_cdpo_by_value_and_its_finite_optimum():
    """beta*h = log 3 -> sigmoid = 3/4; eps = 0.1:
    L = -0.9 log(3/4) - 0.1 log(1/4) = 0.9 * 0.287682 + 0.1 * 1.386294 = 0.397543.
    dL/dz = -(1-eps) sigmoid(-z) + eps sigmoid(z) = 0 at z = log((1-eps)/eps) = log 9: the optimum
    margin is finite (DPO's is at infinity)."""
    z = math.log(3)
    out = cdpo_loss(t(z), t(0.0), t(0.0), t(0.0), beta=1.0, label_smoothing=0.1)
    assert out.losses.item() == pytest.approx(0.9 * -math.log(0.75) + 0.1 * -math.log(0.25), abs=1e-12)
    pc = t(math.log(9)).requires_grad_()
    cdpo_loss(pc, t(0.0), t(0.0), t(0.0), beta=1.0, label_smoothing=0.1).losses.sum().backward()
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-12)
    # eps = 0 is DPO
    zero = cdpo_loss(t(-3, -1), t(-2, -5), t(-2.5, -2), t(-2, -3), beta=0.3, label_smoothing=0.0)
    dpo = dpo_loss(t(-3, -1), t(-2, -5), t(-2.5, -2), t(-2, -3), beta=0.3)
    torch.testing.assert_close(zero.losses, dpo.losses)


def test_ipo_by_value():
    """Per-token log-ratios: chosen +4 over 2 tokens = 2, rejected 0 over 5 tokens = 0 -> h = 2.
    tau = beta = 0.25 -> target 1/(2 tau) = 2 -> L = 0. With h = 0 (second pair) L = 2^2 = 4.
    The loss rises again past the target: h = 3 -> (3 - 2)^2 = 1."""
    out = ipo_loss(t(-6, -9, -4), t(-5, -5, -5), t(-10, -9, -10), t(-5, -5, -5), t(2, 3, 2), t(5, 5, 5), beta=0.25)
    assert out.losses.tolist() == pytest.approx([0.0, 4.0, 1.0], abs=1e-12)


def test_hinge_by_value():
    """L = max(0, 1 - beta*h): beta*h = 0.4 -> 0.6; beta*h = 1.5 -> 0, with zero gradient."""
    pc = t(0.4, 1.5).requires_grad_()
    out = hinge_loss(pc, t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), beta=1.0)
    assert out.losses.tolist() == pytest.approx([0.6, 0.0])
    out.losses.sum().backward()
    assert pc.grad.tolist() == pytest.approx([-1.0, 0.0])


def test_robust_dpo_by_value_and_unbiased():
    """eps = 0.2, z = beta*h = log 3: l(z) = log(4/3), l(-z) = log 4;
    L = (0.8 log(4/3) - 0.2 log 4) / 0.6 = (0.230146 - 0.277259) / 0.6 = -0.078522.
    Unbiased: if the label is flipped with probability eps, the expected loss
    (1-eps) L(h) + eps L(-h) = [(1-eps)^2 - eps^2] l(z) / (1 - 2 eps) = l(z), the clean DPO loss."""
    eps, z = 0.2, math.log(3)
    out = robust_dpo_loss(t(z), t(0.0), t(0.0), t(0.0), beta=1.0, label_smoothing=eps)
    assert out.losses.item() == pytest.approx((0.8 * math.log(4 / 3) - 0.2 * math.log(4)) / 0.6, abs=1e-12)
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-torch.rand(6, generator=g, dtype=torch.float64) * 10 for _ in range(4))
    straight = robust_dpo_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=eps).losses
    flipped = robust_dpo_loss(pr, pc, rr, rc, beta=0.2, label_smoothing=eps).losses
    torch.testing.assert_close((1 - eps) * straight + eps * flipped, dpo_loss(pc, pr, rc, rr, beta=0.2).losses)


def test_rpo_is_dpo_plus_weighted_nll():
    """Chosen log-prob -10 over 5 tokens -> NLL per token 2; alpha 0.5 adds 1.0 to the DPO loss."""
    out = rpo_loss(t(-10), t(-12), t(-11), t(-11), t(5), beta=0.5, alpha=0.5)
    assert out.losses.item() == pytest.approx(softplus(1.0) + 1.0, abs=1e-12)
    assert out.metrics["nll"].item() == pytest.approx(2.0)


def test_simpo_by_value():
    """beta = 2: chosen -6 over 3 tokens -> r = 2 * -2 = -4; rejected -12 over 4 -> r = -6;
    gamma = 1: L = l(-4 - (-6) - 1) = l(1) = 0.31326."""
    out = simpo_loss(t(-6), t(-12), t(3), t(4), beta=2.0, gamma=1.0)
    assert out.losses.item() == pytest.approx(softplus(1.0), abs=1e-12)
    assert out.metrics["chosen_rewards"].item() == pytest.approx(-4.0)
    assert out.metrics["margins"].item() == pytest.approx(2.0)


def test_orpo_by_value():
    """Chosen: mean token log-prob log(1/2) -> P = 1/2, odds 1, log odds 0.
    Rejected: log(1/5) -> P = 1/5, odds 1/4, log odds -log 4. Log odds ratio = log 4,
    L_OR = l(log 4) = -log(4/5) = 0.223144; L_SFT = log 2 = 0.693147; lambda = 0.1:
    L = 0.693147 + 0.0223144 = 0.715461."""
    out = orpo_loss(t(3 * math.log(0.5)), t(4 * math.log(0.2)), t(3), t(4), beta=0.1)
    assert out.losses.item() == pytest.approx(math.log(2) + 0.1 * -math.log(0.8), abs=1e-12)
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(math.log(4), abs=1e-12)
    assert out.metrics["nll"].item() == pytest.approx(math.log(2), abs=1e-12)


def test_orpo_is_stable_near_certainty():
    """Mean log-probs near 0 (P -> 1) make 1 - P cancel catastrophically in a naive formula."""
    out = orpo_loss(t(-1e-7), t(-5.0), t(1), t(1), beta=0.1)
    assert torch.isfinite(out.losses).all()
    # log odds(chosen) = log(1e-7 / (1 - e^-1e-7)) ~ log(1e-7 / 1e-7) ... = -log(1e-7) ~ 16.118
    expected = (-1e-7 - math.log(-math.expm1(-1e-7))) - (-5.0 - math.log1p(-math.exp(-5.0)))
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(expected, rel=1e-9)


def test_kto_by_value():
    """KL estimates (policy - reference on mismatched pairs) 0.5 and 1.5 -> z0 = 1.0.
    beta = 0.5. Desirable r = 3: 1 - sigmoid(0.5 * (3 - 1)) = 1 - sigmoid(1) = 0.268941.
    Undesirable r = -1: 1 - sigmoid(0.5 * (1 - (-1))) = 0.268941, times lambda_U = 2.
    A negative KL estimate is clamped: z0 = 0. z0 carries no gradient."""
    kl_policy = t(0.5, 1.5).requires_grad_()
    policy = t(3.0, -1.0).requires_grad_()
    out = kto_loss(policy, t(0.0, 0.0), torch.tensor([True, False]), kl_policy, t(0.0, 0.0),
                   beta=0.5, undesirable_weight=2.0)
    s = 1 - 1 / (1 + math.exp(-1))
    assert out.losses.tolist() == pytest.approx([s, 2 * s], abs=1e-12)
    assert out.metrics["kl"].tolist() == pytest.approx([1.0, 1.0])
    assert out.metrics["chosen_rewards"][0].item() == pytest.approx(1.5) and out.metrics["chosen_rewards"][1].isnan()
    assert out.metrics["rejected_rewards"][1].item() == pytest.approx(-0.5) and out.metrics["rejected_rewards"][0].isnan()
    out.losses.sum().backward()
    assert policy.grad.abs().min() > 0 and kl_policy.grad is None
    clamped = kto_loss(t(2.0), t(0.0), torch.tensor([True]), t(-3.0), t(0.0), beta=1.0)
    assert clamped.losses.item() == pytest.approx(1 - 1 / (1 + math.exp(-2.0)))


def test_bradley_terry_by_value():
    """r_w = 2, r_l = 1: L = l(1) = 0.31326; with the Llama 2 margin m = 1: l(0) = log 2;
    centring c = 0.01 adds c * (2 + 1)^2 = 0.09."""
    assert bradley_terry_loss(t(2.0), t(1.0)).losses.item() == pytest.approx(softplus(1.0))
    assert bradley_terry_loss(t(2.0), t(1.0), t(1.0)).losses.item() == pytest.approx(math.log(2))
    centred = bradley_terry_loss(t(2.0), t(1.0), center_rewards_coefficient=0.01)
    assert centred.losses.item() == pytest.approx(softplus(1.0) + 0.09)
    out = bradley_terry_loss(t(2.0, 0.0), t(1.0, 3.0))
    assert out.metrics["accuracies"].tolist() == [1.0, 0.0]
    assert out.metrics["margins"].tolist() == [1.0, -3.0]


def test_sequence_logps_sums_answer_tokens_only():
    """Uniform logits over V = 8: every target has log-prob -log 8. Row 0 has 3 answer tokens
    (-3 log 8), row 1 has 1; ignored positions (prompt, padding) count for nothing even when
    their logits are extreme."""
    logits = torch.zeros(2, 4, 8)
    logits[1, 0] = 100.0  # a masked position: must not matter
    targets = torch.tensor([[1, 2, 3, -100], [-100, -100, 5, -100]])
    logps, lengths = sequence_logps(logits, targets)
    assert logps.tolist() == pytest.approx([-3 * math.log(8), -math.log(8)], abs=1e-6)
    assert lengths.tolist() == [3.0, 1.0]


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------


def random_pairs(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths_c = torch.randint(3, 40, (n,), generator=g).double()
    lengths_r = torch.randint(3, 40, (n,), generator=g).double()
    pc = -torch.rand(n, generator=g, dtype=torch.float64) * lengths_c * 3
    pr = -torch.rand(n, generator=g, dtype=torch.float64) * lengths_r * 3
    rc = pc + torch.randn(n, generator=g, dtype=torch.float64)
    rr = pr + torch.randn(n, generator=g, dtype=torch.float64)
    return PairLogps(pc, pr, lengths_c, lengths_r, rc, rr)


PARAMS = PreferenceLossParams(beta=0.2, label_smoothing=0.1, simpo_gamma=0.5, rpo_alpha=0.5)


@pytest.mark.parametrize("name", list(PAIRWISE_LOSSES))
def test_preferring_the_chosen_answer_lowers_the_loss(name):
    """Raising log pi(y_w) or lowering log pi(y_l) never raises the loss (gradient signs), and
    swapping chosen and rejected of a pair the policy already prefers raises it. IPO is checked
    below its target gap 1/(2 tau), the region where its squared loss is decreasing."""
    x = random_pairs()
    params = PARAMS
    if name == PreferenceLossName.IPO:
        params = PreferenceLossParams(beta=0.01)  # target gap 50 nats per token: far above these pairs
    pc = x.policy_chosen_logps.clone().requires_grad_()
    pr = x.policy_rejected_logps.clone().requires_grad_()
    out = PAIRWISE_LOSSES[name](PairLogps(pc, pr, x.chosen_lengths, x.rejected_lengths,
                                          x.reference_chosen_logps, x.reference_rejected_logps), params)
    assert out.losses.shape == (16,)
    out.losses.sum().backward()
    assert (pc.grad <= 0).all() and (pr.grad >= 0).all()
    assert (pc.grad < 0).any()

    # a pair the policy prefers (after normalisation), then the same pair swapped
    good = PairLogps(t(-5.0), t(-40.0), t(10), t(10), t(-20.0), t(-20.0))
    swapped = PairLogps(t(-40.0), t(-5.0), t(10), t(10), t(-20.0), t(-20.0))
    assert PAIRWISE_LOSSES[name](good, params).losses.item() < PAIRWISE_LOSSES[name](swapped, params).losses.item()


def test_kto_property():
    """A desirable answer becoming likelier lowers its loss; an undesirable one, raises it."""
    policy = t(-5.0, -5.0).requires_grad_()
    out = kto_loss(policy, t(-6.0, -6.0), torch.tensor([True, False]), t(0.1, 0.3), t(0.0, 0.0), beta=0.1)
    out.losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]


def test_reference_free_losses_ignore_the_reference():
    x = random_pairs()
    other = PairLogps(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths, x.rejected_lengths,
                      x.reference_chosen_logps + 3.0, x.reference_rejected_logps - 7.0)
    for name in REFERENCE_FREE:
        torch.testing.assert_close(PAIRWISE_LOSSES[name](x, PARAMS).losses, PAIRWISE_LOSSES[name](other, PARAMS).losses)
    missing = PairLogps(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths, x.rejected_lengths)
    with pytest.raises(ValueError, match="reference"):
        preference_loss("dpo", missing, PARAMS)
    preference_loss("simpo", missing, PARAMS)  # fine without a reference


def test_every_name_has_a_loss():
    unpaired = UnpairedLogps(t(-1.0), t(-1.0), torch.tensor([True]), t(0.0), t(0.0))
    for name in PreferenceLossName:
        inputs = unpaired if name == PreferenceLossName.KTO else random_pairs(4)
        out = preference_loss(name.value, inputs, PARAMS)
        assert torch.isfinite(out.losses).all(), name


# ----------------------------------------------------------------------------------------------
# Parity with TRL 1.16 (its trainers' own loss code, run on the same log-probabilities)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    pytest.importorskip("trl")
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.kto_trainer import KTOTrainer
    from trl.trainer.reward_trainer import RewardTrainer

    return SimpleNamespace(DPO=DPOTrainer, KTO=KTOTrainer, CPO=CPOTrainer, ORPO=ORPOTrainer, Reward=RewardTrainer)


class _Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def unwrap_model(self, model):
        return model


def _per_token(logps: torch.Tensor, lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``width`` positions: one prompt token, then ``lengths[i]`` answer tokens each carrying
    ``logps[i] / lengths[i]`` (so they sum to ``logps[i]``), then padding. Returns (completion_mask
    [N, width], per-token log-probs of the shifted positions [N, width - 1])."""
    mask = torch.zeros(len(logps), width, dtype=torch.long)
    for i, n in enumerate(lengths.long().tolist()):
        mask[i, 1 : 1 + n] = 1
    per_token = mask[:, 1:].double() * (logps / lengths)[:, None]
    return mask, per_token


def _fake_model(per_token: torch.Tensor):
    out = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                          mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token, dtype=torch.bool))

    def model(**kwargs):
        return out

    model.training = True
    return model


def _trl_dpo(trl, x: PairLogps, loss_types, loss_weights, beta, label_smoothing=0.0) -> tuple[float, dict]:
    """TRL's DPOTrainer._compute_loss on a minimal trainer whose model returns the given per-token
    log-probabilities (reference log-probs passed as precomputed, as its precompute_ref_logps does)."""
    lengths = torch.cat([x.chosen_lengths, x.rejected_lengths])
    width = int(lengths.max()) + 2
    mask, per_token = _per_token(torch.cat([x.policy_chosen_logps, x.policy_rejected_logps]), lengths, width)
    model = _fake_model(per_token)
    trainer = SimpleNamespace(
        model=model, accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=loss_types, loss_weights=loss_weights, beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
    )
    n = len(lengths)
    inputs = {"input_ids": torch.zeros(n, width, dtype=torch.long), "attention_mask": torch.ones(n, width, dtype=torch.long),
              "completion_mask": mask, "ref_chosen_logps": x.reference_chosen_logps,
              "ref_rejected_logps": x.reference_rejected_logps}
    loss = trl.DPO._compute_loss(trainer, model, inputs, False)
    return loss.item(), trainer._metrics["train"]


def _rows(x: PairLogps):
    for i in range(len(x.policy_chosen_logps)):
        yield PairLogps(*(getattr(x, f)[i : i + 1] for f in ("policy_chosen_logps", "policy_rejected_logps",
                        "chosen_lengths", "rejected_lengths", "reference_chosen_logps", "reference_rejected_logps")))


TRL_DPO_TYPES = {
    PreferenceLossName.DPO: (["sigmoid"], [1.0]),
    PreferenceLossName.IPO: (["ipo"], [1.0]),
    PreferenceLossName.HINGE: (["hinge"], [1.0]),
    PreferenceLossName.ROBUST: (["robust"], [1.0]),
    PreferenceLossName.RPO: (["sigmoid", "sft"], [1.0, PARAMS.rpo_alpha]),  # TRL's DPO + NLL (RPO) recipe
}


@pytest.mark.parametrize("name", list(TRL_DPO_TYPES))
def test_parity_with_trl_dpo_trainer(trl, name):
    """Per example (TRL returns a batch mean, so each pair is run alone), and the logged rewards."""
    loss_types, weights = TRL_DPO_TYPES[name]
    x = random_pairs(6, seed=3)
    for row in _rows(x):
        ours = PAIRWISE_LOSSES[name](row, PARAMS)
        theirs, metrics = _trl_dpo(trl, row, loss_types, weights, PARAMS.beta, PARAMS.label_smoothing)
        assert ours.losses.item() == pytest.approx(theirs, abs=1e-5)
        assert ours.metrics["chosen_rewards"].item() == pytest.approx(metrics["rewards/chosen"][0], abs=1e-5)
        assert ours.metrics["margins"].item() == pytest.approx(metrics["rewards/margins"][0], abs=1e-5)


def test_parity_rpo_batch_mean_with_equal_lengths(trl):
    """TRL averages the NLL over all chosen tokens of the batch, we per pair (Pang et al.): the two
    agree when chosen answers have the same length."""
    x = random_pairs(5, seed=4)
    x.chosen_lengths = torch.full_like(x.chosen_lengths, 12.0)
    theirs, _ = _trl_dpo(trl, x, ["sigmoid", "sft"], [1.0, PARAMS.rpo_alpha], PARAMS.beta)
    assert PAIRWISE_LOSSES[PreferenceLossName.RPO](x, PARAMS).losses.mean().item() == pytest.approx(theirs, abs=1e-5)


def _cpo_trainer(loss_type: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0):
    return SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                           simpo_gamma=gamma, accelerator=_Accelerator())


def test_parity_cdpo_with_trl_label_smoothed_sigmoid(trl):
    """TRL 1.16's DPOTrainer has no label smoothing on its sigmoid loss; its CPOTrainer applies the
    same conservative (label-smoothed) sigmoid to the log-likelihood gap it is given. Feeding it the
    two log-ratios makes that gap ``h``: exactly cDPO."""
    x = random_pairs(8, seed=5)
    chosen_ratio = x.policy_chosen_logps - x.reference_chosen_logps
    rejected_ratio = x.policy_rejected_logps - x.reference_rejected_logps
    theirs, chosen_rewards, _ = trl.CPO.cpo_loss(_cpo_trainer("sigmoid", 0.2, 0.1), chosen_ratio, rejected_ratio)
    ours = cdpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.reference_chosen_logps,
                     x.reference_rejected_logps, beta=0.2, label_smoothing=0.1)
    torch.testing.assert_close(ours.losses, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.metrics["chosen_rewards"], chosen_rewards, atol=1e-5, rtol=0)


def test_parity_simpo_with_trl_cpo_trainer(trl):
    """TRL runs SimPO in its CPOTrainer (loss_type='simpo') on length-averaged log-probs."""
    x = random_pairs(8, seed=6)
    avg_c, avg_r = x.policy_chosen_logps / x.chosen_lengths, x.policy_rejected_logps / x.rejected_lengths
    theirs, chosen_rewards, rejected_rewards = trl.CPO.cpo_loss(_cpo_trainer("simpo", 2.0, gamma=0.7), avg_c, avg_r)
    ours = simpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths, x.rejected_lengths, beta=2.0, gamma=0.7)
    torch.testing.assert_close(ours.losses, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.metrics["chosen_rewards"], chosen_rewards, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.metrics["rejected_rewards"], rejected_rewards, atol=1e-5, rtol=0)


def test_parity_orpo_with_trl_orpo_trainer(trl):
    """TRL's odds_ratio_loss returns ``lambda * log sigmoid(log OR)`` per pair and its total is
    ``nll - mean(that)``; its nll also counts prompt tokens, ours the answer's only (the paper's
    L_SFT), so the odds-ratio term is compared per pair and the NLL by value above."""
    x = random_pairs(8, seed=7)
    avg_c, avg_r = x.policy_chosen_logps / x.chosen_lengths, x.policy_rejected_logps / x.rejected_lengths
    trainer = SimpleNamespace(beta=0.1, accelerator=_Accelerator())
    theirs, chosen_rewards, _, _, log_odds = trl.ORPO.odds_ratio_loss(trainer, avg_c, avg_r)
    ours = orpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths, x.rejected_lengths, beta=0.1)
    torch.testing.assert_close(ours.losses - ours.metrics["nll"], -theirs.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.metrics["chosen_rewards"], chosen_rewards.double(), atol=1e-5, rtol=0)
    assert ours.metrics["log_odds_ratio"].mean().item() == pytest.approx(log_odds.item(), abs=1e-5)


def test_parity_kto_with_trl_kto_trainer(trl):
    """TRL's KTOTrainer._compute_loss with precomputed reference log-probs (per example: it
    returns the mean) and the same KL estimate, mismatched-pair log-probs given directly."""
    g = torch.Generator().manual_seed(8)
    n = 6
    lengths = torch.randint(3, 20, (n,), generator=g).double()
    policy = -torch.rand(n, generator=g, dtype=torch.float64) * 30
    reference = policy + torch.randn(n, generator=g, dtype=torch.float64)
    desirable = torch.tensor([True, False, True, True, False, False])
    kl_policy = -torch.rand(n, generator=g, dtype=torch.float64) * 30
    kl_reference = kl_policy - torch.rand(n, generator=g, dtype=torch.float64)  # positive KL estimate
    ours = kto_loss(policy, reference, desirable, kl_policy, kl_reference, beta=0.3,
                    desirable_weight=1.0, undesirable_weight=1.5)
    width = int(lengths.max()) + 2
    for i in range(n):
        mask, per_token = _per_token(policy[i : i + 1], lengths[i : i + 1], width)
        model = _fake_model(per_token)
        trainer = SimpleNamespace(
            model=model, accelerator=_Accelerator(), aux_loss_enabled=False, precompute_ref_logps=True,
            calculate_KL=True, loss_type="kto", beta=0.3, desirable_weight=1.0, undesirable_weight=1.5,
            _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
            _compute_kl_logps=lambda model, batch: kl_policy,
        )
        inputs = {"input_ids": torch.zeros(1, width, dtype=torch.long), "attention_mask": torch.ones(1, width, dtype=torch.long),
                  "completion_mask": mask, "label": desirable[i : i + 1], "ref_logps": reference[i : i + 1],
                  "ref_KL_logps": kl_reference}
        theirs = trl.KTO._compute_loss(trainer, model, inputs, False)
        assert ours.losses[i].item() == pytest.approx(theirs.item(), abs=1e-5)
        assert ours.metrics["kl"][i].item() == pytest.approx(trainer._metrics["train"]["kl"][0], abs=1e-6)


def test_parity_bradley_terry_with_trl_reward_trainer(trl):
    """TRL's RewardTrainer.compute_loss (margin and centring on) on a model returning fixed rewards."""
    g = torch.Generator().manual_seed(9)
    chosen, rejected, margin = torch.randn(5, generator=g), torch.randn(5, generator=g), torch.rand(5, generator=g)
    logits = torch.cat([chosen, rejected])[:, None]

    def model(**kwargs):
        return SimpleNamespace(logits=logits)

    model.training = True
    trainer = SimpleNamespace(model=model, accelerator=_Accelerator(), args=SimpleNamespace(center_rewards_coefficient=0.01),
                              _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(10, 4, dtype=torch.long), "attention_mask": torch.ones(10, 4, dtype=torch.long),
              "margin": margin}
    theirs = trl.Reward.compute_loss(trainer, model, inputs)
    ours = bradley_terry_loss(chosen, rejected, margin, center_rewards_coefficient=0.01)
    assert ours.losses.mean().item() == pytest.approx(theirs.item(), abs=1e-5)
    assert ours.metrics["accuracies"].mean().item() == pytest.approx(trainer._metrics["train"]["accuracy"][0])
    assert ours.metrics["margins"].mean().item() == pytest.approx(trainer._metrics["train"]["margin"][0], abs=1e-5)
