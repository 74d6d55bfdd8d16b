"""Preference losses: the DPO family, KTO and the Bradley-Terry reward-model loss.

Every loss is a pure function of per-sequence log-probabilities (or rewards) that returns a
:class:`PreferenceLossOutput`: ``losses`` holds one differentiable value per example ``[B]`` (the
recipe sums them and divides by the number of examples in the global batch), ``metrics`` holds
detached per-example values ``[B]`` (implicit rewards, margins, accuracies...). A metric that does
not apply to an example is NaN (KTO's ``chosen_rewards`` on an undesirable example) and is skipped
when averaged.

Inputs follow the papers' names. ``policy_chosen_logps`` is ``log pi_theta(y_w | x)``: the sum of
the token log-probabilities of the chosen answer ``y_w`` (prompt and padding excluded);
``chosen_lengths`` is ``|y_w|``, its number of tokens. Losses that use length-normalised
log-probabilities (IPO as its authors run it, SimPO, ORPO, the NLL term of RPO) divide by the
lengths themselves, so every loss takes the same sums.

Variants are chosen by name through :data:`PAIRWISE_LOSSES` (one function per paper, keyed by
:class:`PreferenceLossName`) and :data:`UNPAIRED_LOSSES` (KTO); :func:`preference_loss` dispatches.
Imports torch only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

Tensor = torch.Tensor


class PreferenceLossName(enum.StrEnum):
    """The preference losses the DPO recipe can train with (``loss=`` in its config)."""

    DPO = "dpo"
    CDPO = "cdpo"
    IPO = "ipo"
    HINGE = "hinge"
    ROBUST = "robust"
    SIMPO = "simpo"
    ORPO = "orpo"
    KTO = "kto"
    RPO = "rpo"


REFERENCE_FREE = frozenset({PreferenceLossName.SIMPO, PreferenceLossName.ORPO})
"""Losses that need no reference model (SimPO, ORPO)."""

DEFAULT_BETA: dict[PreferenceLossName, float] = {
    PreferenceLossName.DPO: 0.1,
    PreferenceLossName.CDPO: 0.1,
    PreferenceLossName.IPO: 0.1,
    PreferenceLossName.HINGE: 0.1,
    PreferenceLossName.ROBUST: 0.1,
    PreferenceLossName.SIMPO: 2.0,
    PreferenceLossName.ORPO: 0.1,
    PreferenceLossName.KTO: 0.1,
    PreferenceLossName.RPO: 0.1,
}
"""``beta`` when the config leaves it unset: 0.1 for the DPO family (Rafailov et al.), 2.0 for
SimPO (Meng et al. use 2.0 to 2.5); for ORPO it is the weight lambda of the odds-ratio term."""


@dataclass
class PreferenceLossOutput:
    """Per-example losses ``[B]`` (differentiable) and detached per-example metrics ``[B]``."""

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class PreferenceLossParams:
    """Hyper-parameters of every loss; each loss reads the ones its paper defines."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    """cDPO and robust DPO: the assumed probability epsilon that a preference label is flipped."""
    simpo_gamma: float = 0.5
    """SimPO: the target reward margin gamma."""
    rpo_alpha: float = 1.0
    """RPO: weight of the length-normalised NLL of the chosen answer."""
    desirable_weight: float = 1.0
    """KTO: lambda_D, the weight of desirable examples."""
    undesirable_weight: float = 1.0
    """KTO: lambda_U, the weight of undesirable examples."""


# ----------------------------------------------------------------------------------------------
# Sequence log-probabilities
# ----------------------------------------------------------------------------------------------


def sequence_logps(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-probabilities of the targets of each row, and how many there are.

    ``logits`` [N, P, V] and ``targets`` [N, P] are aligned (logits at position t score target t,
    i.e. already shifted); targets equal to ``IGNORE_INDEX`` (prompt, padding) count for nothing.
    Computed in fp32 whatever the model dtype. Returns ``logps`` [N] and ``lengths`` [N] (float).
    """
    mask = targets != IGNORE_INDEX  # [N, P]
    flat = logits.reshape(-1, logits.shape[-1]).float()
    token_logps = -F.cross_entropy(flat, targets.clamp(min=0).reshape(-1), reduction="none")
    token_logps = token_logps.view(targets.shape) * mask  # [N, P]
    return token_logps.sum(dim=-1), mask.sum(dim=-1).float()


class _FrozenHeadLogps(torch.autograd.Function):
    """log p(target) = h . w_target - logsumexp(W h), for a frozen output head ``W`` [V, H].

    The gradient with respect to ``h`` is ``w_target - softmax(W h)^T W``: computed in the forward
    pass, chunk by chunk, and kept ([M, H] instead of the [M, V] logits, their softmax and their
    gradient, V/H = 85 times smaller for SmolLM2). The backward only scales it. Same FLOPs as the
    plain path when the head is frozen (its input-gradient matmul moves into the forward).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
        w = weight.float()  # [V, H]
        keep_grad = ctx.needs_input_grad[0]
        logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # [M]
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if keep_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size].float()  # [c, H]
            t = targets[start : start + chunk_size]  # [c]
            logits = h @ w.T  # [c, V]
            lse = logits.logsumexp(dim=-1)  # [c]
            logps[start : start + chunk_size] = logits.gather(1, t[:, None]).squeeze(1) - lse
            if keep_grad:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad[start : start + chunk_size] = w[t] - probs @ w
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return logps

    @staticmethod
    def backward(ctx, grad_logps: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad_logps[:, None] * grad).to(ctx.hidden_dtype), None, None, None


def frozen_head_logps(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 256) -> Tensor:
    """Log-probabilities of ``targets`` [M] under ``softmax(hidden @ weight.T)``, without keeping
    the logits: ``hidden`` [M, H], ``weight`` [V, H] the output head, which must not require a
    gradient (LoRA, frozen layers). Equals ``log_softmax(hidden @ weight.T)[m, targets[m]]``; the
    gradient flows to ``hidden`` only. fp32 throughout.  -> [M]
    """
    if weight.requires_grad:
        raise ValueError("frozen_head_logps needs a frozen output head (weight.requires_grad is True)")
    return _FrozenHeadLogps.apply(hidden, weight, targets, chunk_size)


def _pair_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor, **extra: Tensor) -> dict[str, Tensor]:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "margins": chosen_rewards - rejected_rewards,
        "accuracies": (chosen_rewards > rejected_rewards).float(),
        **{k: v.detach() for k, v in extra.items()},
    }


def _log_ratios(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    """``log pi_theta(y)/pi_ref(y)`` of the chosen and of the rejected answer.  [B], [B]"""
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


# ----------------------------------------------------------------------------------------------
# The DPO family (reference model)
# ----------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
    *, beta: float,
) -> PreferenceLossOutput:
    """DPO, sigmoid loss. Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7::

        h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l)
        L = -log sigmoid(beta * h)

    The implicit rewards are ``beta * log pi(y)/pi_ref(y)`` (Sec. 5); at ``h = 0`` the loss is
    ``log 2`` and its gradient pushes ``h`` up with weight ``beta * sigmoid(-beta * h)``.
    """
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    h = chosen - rejected
    losses = -F.logsigmoid(beta * h)
    return PreferenceLossOutput(losses, _pair_metrics(beta * chosen, beta * rejected))


def cdpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
    *, beta: float, label_smoothing: float,
) -> PreferenceLossOutput:
    """Conservative DPO. Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"::

        L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    the DPO loss against soft labels: the preference is taken to be right with probability
    ``1 - eps``. Its minimum over ``h`` is at ``beta * h = log((1 - eps) / eps)`` instead of
    infinity, so the implicit reward margin stays bounded. ``eps = 0`` is DPO.
    """
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    z = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return PreferenceLossOutput(losses, _pair_metrics(beta * chosen, beta * rejected))


def ipo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
    chosen_lengths: Tensor, rejected_lengths: Tensor,
    *, beta: float,
) -> PreferenceLossOutput:
    """IPO. Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17, with ``tau = beta``::

        h = log pi(y_w)/pi_ref(y_w) / |y_w| - log pi(y_l)/pi_ref(y_l) / |y_l|
        L = (h - 1 / (2 * tau))^2

    A squared loss regresses the log-ratio gap to ``1/(2 tau)`` instead of pushing it to infinity.
    The log-ratios are averaged per token (as the authors run it, and TRL), which keeps ``tau``
    comparable across answer lengths.
    """
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    h = chosen / chosen_lengths.clamp(min=1) - rejected / rejected_lengths.clamp(min=1)
    losses = (h - 1 / (2 * beta)) ** 2
    return PreferenceLossOutput(losses, _pair_metrics(beta * chosen, beta * rejected))


def hinge_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
    *, beta: float,
) -> PreferenceLossOutput:
    """Hinge loss on the reference-normalised log-ratio gap. Liu et al. 2024, "Statistical
    Rejection Sampling Improves Preference Optimization" (RSO), its hinge objective::

        L = max(0, 1 - beta * h)

    Pairs already separated by a margin of ``1/beta`` contribute neither loss nor gradient.
    """
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = torch.relu(1 - beta * (chosen - rejected))
    return PreferenceLossOutput(losses, _pair_metrics(beta * chosen, beta * rejected))


def robust_dpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
    *, beta: float, label_smoothing: float,
) -> PreferenceLossOutput:
    """Robust DPO. Chowdhury, Kini and Natarajan 2024, "Provably Robust DPO: Aligning Language
    Models with Noisy Feedback", the de-biased loss::

        L = [(1 - eps) * l(beta * h) - eps * l(-beta * h)] / (1 - 2 * eps),   l(z) = -log sigmoid(z)

    An unbiased estimate of the clean DPO loss when each label is flipped with probability
    ``eps < 1/2`` (its expectation over the flip equals ``l(beta * h)``). ``eps = 0`` is DPO.
    """
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    z = beta * (chosen - rejected)
    losses = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return PreferenceLossOutput(losses, _pair_metrics(beta * chosen, beta * rejected))


def rpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    *, beta: float, alpha: float,
) -> PreferenceLossOutput:
    """DPO plus the NLL of the chosen answer. Pang et al. 2024, "Iterative Reasoning Preference
    Optimization" (the DPO+NLL objective; also called RPO)::

        L = -log sigmoid(beta * h) - alpha * log pi(y_w | x) / |y_w|

    The NLL term keeps the likelihood of chosen answers from falling, which plain DPO allows.
    Reported as the extra metric ``nll``.
    """
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta=beta)
    nll = -policy_chosen_logps / chosen_lengths.clamp(min=1)
    metrics = {**dpo.metrics, "nll": nll.detach()}
    return PreferenceLossOutput(dpo.losses + alpha * nll, metrics)


# ----------------------------------------------------------------------------------------------
# Reference-free
# ----------------------------------------------------------------------------------------------


def simpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    chosen_lengths: Tensor, rejected_lengths: Tensor,
    *, beta: float, gamma: float,
) -> PreferenceLossOutput:
    """SimPO. Meng, Xia and Chen 2024, "SimPO: Simple Preference Optimization with a
    Reference-Free Reward", Eq. 6::

        r(y) = beta / |y| * log pi(y | x)
        L = -log sigmoid(r(y_w) - r(y_l) - gamma)

    The reward is the length-normalised log-likelihood (no reference model), and the target margin
    ``gamma`` asks the chosen answer to win by at least that much.
    """
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return PreferenceLossOutput(losses, _pair_metrics(chosen_rewards, rejected_rewards))


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable on both sides of ``-log 2`` (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
    chosen_lengths: Tensor, rejected_lengths: Tensor,
    *, beta: float,
) -> PreferenceLossOutput:
    """ORPO. Hong, Lee and Thorne 2024, "ORPO: Monolithic Preference Optimization without
    Reference Model", Eqs. 4-7, with ``lambda = beta``::

        P(y | x) = exp(log pi(y | x) / |y|)              (length-normalised likelihood)
        odds(y | x) = P / (1 - P)
        L_SFT = -log pi(y_w | x) / |y_w|
        L_OR  = -log sigmoid(log odds(y_w | x) - log odds(y_l | x))
        L = L_SFT + lambda * L_OR

    With ``a = log P``, ``log odds = a - log(1 - exp(a))``, computed stably. The SFT term is the
    NLL of the chosen answer's tokens (TRL's ORPOTrainer also counts the prompt's). Rewards
    reported as ``lambda * log P`` (as TRL does); ``log_odds_ratio`` is an extra metric.
    """
    chosen = policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected = policy_rejected_logps / rejected_lengths.clamp(min=1)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    nll = -chosen
    losses = nll - beta * F.logsigmoid(log_odds)
    return PreferenceLossOutput(losses, _pair_metrics(beta * chosen, beta * rejected, nll=nll, log_odds_ratio=log_odds))


# ----------------------------------------------------------------------------------------------
# Unpaired: KTO
# ----------------------------------------------------------------------------------------------


def kto_reference_point(policy_KL_logps: Tensor, reference_KL_logps: Tensor) -> Tensor:
    """KTO's reference point ``z0``: an estimate of KL(pi || pi_ref), clamped at 0, no gradient.

    Ethayarajh et al. estimate it on mismatched pairs ``(x_i, y_j)`` of the batch, so it does not
    leak the label of any example: ``mean(log pi(y_j|x_i) - log pi_ref(y_j|x_i))``.  -> scalar
    """
    return (policy_KL_logps - reference_KL_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_logps: Tensor, reference_logps: Tensor, desirable: Tensor,
    policy_KL_logps: Tensor, reference_KL_logps: Tensor,
    *, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
) -> PreferenceLossOutput:
    """KTO. Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 7::

        r(x, y) = log pi(y|x) / pi_ref(y|x)
        v(x, y) = lambda_D * sigmoid(beta * (r - z0))   if y is desirable
                  lambda_U * sigmoid(beta * (z0 - r))   if y is undesirable
        L = lambda_y - v(x, y)

    ``desirable`` [B] is the boolean label of each (unpaired) example; ``z0`` comes from
    :func:`kto_reference_point` on the batch's mismatched pairs. Each example is pushed away from
    ``z0`` in the direction of its label, with a loss that saturates (prospect theory's value
    function). Metrics: ``chosen_rewards`` on desirable rows and ``rejected_rewards`` on the others
    (NaN elsewhere), and ``kl`` (z0).
    """
    desirable = desirable.bool()
    z0 = kto_reference_point(policy_KL_logps, reference_KL_logps)
    r = policy_logps - reference_logps
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    rewards = beta * r.detach()
    nan = torch.full_like(rewards, float("nan"))
    metrics = {
        "chosen_rewards": torch.where(desirable, rewards, nan),
        "rejected_rewards": torch.where(desirable, nan, rewards),
        "kl": z0.expand_as(rewards),
    }
    return PreferenceLossOutput(losses, metrics)


# ----------------------------------------------------------------------------------------------
# Reward models
# ----------------------------------------------------------------------------------------------


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None,
    *, center_rewards_coefficient: float | None = None,
) -> PreferenceLossOutput:
    """Reward-model ranking loss. Bradley-Terry as in Ouyang et al. 2022 (InstructGPT), Eq. 1, with
    the margin of Touvron et al. 2023 (Llama 2), Eq. 2::

        L = -log sigmoid(r(x, y_w) - r(x, y_l) - m(r))

    ``margin`` [B] is ``m(r)``, larger for pairs rated more distinct (see
    :data:`affinage.data.preference.LLAMA2_MARGINS`); ``None`` is no margin. An optional
    ``center_rewards_coefficient`` adds ``c * (r_w + r_l)^2`` (Eisenstein et al. 2023) to keep
    rewards centred on 0, which the ranking loss alone leaves free.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return PreferenceLossOutput(losses, _pair_metrics(chosen_rewards, rejected_rewards))


# ----------------------------------------------------------------------------------------------
# Choosing a loss by name
# ----------------------------------------------------------------------------------------------


@dataclass
class PairLogps:
    """What the pairwise losses are computed from, for one micro-batch.  [B] each."""

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    reference_chosen_logps: Tensor | None = None
    reference_rejected_logps: Tensor | None = None

    def reference(self) -> tuple[Tensor, Tensor]:
        if self.reference_chosen_logps is None or self.reference_rejected_logps is None:
            raise ValueError("this loss needs reference log-probabilities")
        return self.reference_chosen_logps, self.reference_rejected_logps


@dataclass
class UnpairedLogps:
    """What KTO is computed from, for one micro-batch.  [B] each."""

    policy_logps: Tensor
    reference_logps: Tensor
    desirable: Tensor
    policy_KL_logps: Tensor
    reference_KL_logps: Tensor


def _with_reference(fn: Callable[..., PreferenceLossOutput], *hyper: str):
    def run(x: PairLogps, p: PreferenceLossParams) -> PreferenceLossOutput:
        ref_chosen, ref_rejected = x.reference()
        return fn(x.policy_chosen_logps, x.policy_rejected_logps, ref_chosen, ref_rejected, **{h: getattr(p, h) for h in hyper})

    return run


def _ipo(x: PairLogps, p: PreferenceLossParams) -> PreferenceLossOutput:
    ref_chosen, ref_rejected = x.reference()
    return ipo_loss(x.policy_chosen_logps, x.policy_rejected_logps, ref_chosen, ref_rejected,
                    x.chosen_lengths, x.rejected_lengths, beta=p.beta)


def _rpo(x: PairLogps, p: PreferenceLossParams) -> PreferenceLossOutput:
    ref_chosen, ref_rejected = x.reference()
    return rpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, ref_chosen, ref_rejected,
                    x.chosen_lengths, beta=p.beta, alpha=p.rpo_alpha)


def _simpo(x: PairLogps, p: PreferenceLossParams) -> PreferenceLossOutput:
    return simpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths, x.rejected_lengths,
                      beta=p.beta, gamma=p.simpo_gamma)


def _orpo(x: PairLogps, p: PreferenceLossParams) -> PreferenceLossOutput:
    return orpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths, x.rejected_lengths, beta=p.beta)


def _kto(x: UnpairedLogps, p: PreferenceLossParams) -> PreferenceLossOutput:
    return kto_loss(x.policy_logps, x.reference_logps, x.desirable, x.policy_KL_logps, x.reference_KL_logps,
                    beta=p.beta, desirable_weight=p.desirable_weight, undesirable_weight=p.undesirable_weight)


PAIRWISE_LOSSES: dict[PreferenceLossName, Callable[[PairLogps, PreferenceLossParams], PreferenceLossOutput]] = {
    PreferenceLossName.DPO: _with_reference(dpo_loss, "beta"),
    PreferenceLossName.CDPO: _with_reference(cdpo_loss, "beta", "label_smoothing"),
    PreferenceLossName.IPO: _ipo,
    PreferenceLossName.HINGE: _with_reference(hinge_loss, "beta"),
    PreferenceLossName.ROBUST: _with_reference(robust_dpo_loss, "beta", "label_smoothing"),
    PreferenceLossName.SIMPO: _simpo,
    PreferenceLossName.ORPO: _orpo,
    PreferenceLossName.RPO: _rpo,
}
"""Losses on (chosen, rejected) pairs, by name."""

UNPAIRED_LOSSES: dict[PreferenceLossName, Callable[[UnpairedLogps, PreferenceLossParams], PreferenceLossOutput]] = {
    PreferenceLossName.KTO: _kto,
}
"""Losses on single answers labelled desirable or not, by name."""


def preference_loss(
    name: str | PreferenceLossName, inputs: PairLogps | UnpairedLogps, params: PreferenceLossParams
) -> PreferenceLossOutput:
    """Compute the loss called ``name`` (a :class:`PreferenceLossName` value) on ``inputs``."""
    name = PreferenceLossName(name)
    if name in UNPAIRED_LOSSES:
        if not isinstance(inputs, UnpairedLogps):
            raise TypeError(f"loss {name} takes UnpairedLogps")
        return UNPAIRED_LOSSES[name](inputs, params)
    if not isinstance(inputs, PairLogps):
        raise TypeError(f"loss {name} takes PairLogps")
    return PAIRWISE_LOSSES[name](inputs, params)
