"""Loss terms as pure functions: set likelihood, KL with free bits, beta warm-up, imbalance-aware BCE.

Nothing here holds state: the global step that drives the beta warm-up is passed in by the caller (the
training stage keeps it in its checkpoint), so a resumed run gets exactly the same schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqsetvae.data.batch import PAD_CODE

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension, same shape as `mu` (nats)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Sum over latent dims of max(batch-mean KL of the dim, free_bits).

    `kl_per_dim` is [N sets, L dims]. The floor applies per dimension to the KL averaged over the batch
    (Kingma et al. 2016): a dimension whose KL is below the floor gets no gradient from the KL term, so
    the encoder is not pushed to collapse it; above the floor it is the plain KL.
    """
    if kl_per_dim.shape[0] == 0:
        return kl_per_dim.new_zeros(())
    return kl_per_dim.mean(dim=0).clamp(min=free_bits).sum()


def beta_at(step: int, beta_max: float, warmup_steps: int) -> float:
    """KL weight at a global optimiser step: linear from 0 at step 0 to beta_max at warmup_steps, then flat."""
    if step < 0:
        raise ValueError(f"global step must be >= 0, got {step}")
    if warmup_steps == 0:
        return beta_max
    return beta_max * min(1.0, step / warmup_steps)


def warmup_steps_for(fraction: float, total_steps: int) -> int:
    """Warm-up length in optimiser steps for a warm-up of `fraction` of a run of `total_steps` steps:
    ceil(fraction x total), so beta is at beta_max from the step at that share of training on."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"warm-up fraction must be in [0, 1], got {fraction}")
    if total_steps < 0:
        raise ValueError(f"total steps must be >= 0, got {total_steps}")
    return math.ceil(fraction * total_steps - 1e-9)


def set_nll(
    presence_logits: torch.Tensor,
    value_mean: torch.Tensor,
    value_logvar: torch.Tensor,
    codes: torch.Tensor,
    values: torch.Tensor,
    event_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation-invariant negative log-likelihood of N sets under per-variable decoder outputs.

    presence_logits, value_mean, value_logvar: [N, V] (one entry per vocabulary code).
    codes, values, event_mask: [N, E] (the sets' events; padding has event_mask False).

    Returns (presence_nll [N], value_nll [N]):
      presence: Bernoulli NLL, summed over the vocabulary, of "code v occurs in the set" (PAD excluded);
      value:    Gaussian NLL, summed over the set's real events, of each value under its code's mean and
                variance. A code repeated in one set contributes one term per occurrence.
    Both are sums over elements, so permuting events or adding padding does not change them.
    """
    n, v = presence_logits.shape
    codes = codes.masked_fill(~event_mask, PAD_CODE)
    present = torch.zeros(n, v, dtype=presence_logits.dtype, device=presence_logits.device)
    present.scatter_(1, codes, 1.0)  # padding writes to the PAD column, which is excluded below
    bce = F.binary_cross_entropy_with_logits(presence_logits, present, reduction="none")
    presence_nll = bce[:, PAD_CODE + 1 :].sum(dim=1)

    mean = value_mean.gather(1, codes)
    logvar = value_logvar.gather(1, codes)
    nll = 0.5 * (_LOG_2PI + logvar + (values - mean).pow(2) * torch.exp(-logvar))
    value_nll = (nll * event_mask.to(nll.dtype)).sum(dim=1)
    return presence_nll, value_nll


def binary_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    imbalance: str,
    pos_weight: float | None,
    focal_gamma: float,
) -> torch.Tensor:
    """Mean binary classification loss with one class-imbalance mechanism.

    imbalance = "pos_weight": BCE whose positive terms are weighted by `pos_weight` (the caller passes
                train negatives / positives); "focal": focal loss (1 - p_t)^gamma * BCE; "none": BCE.
    """
    labels = labels.to(logits.dtype)
    if imbalance == "pos_weight":
        if pos_weight is None or not pos_weight > 0:
            raise ValueError(f"finetune.imbalance is pos_weight but pos_weight is {pos_weight!r}; pass the train ratio")
        weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if imbalance == "focal":
        p_t = torch.exp(-bce)  # probability given to the true class
        return ((1.0 - p_t).pow(focal_gamma) * bce).mean()
    if imbalance == "none":
        return bce.mean()
    raise ValueError(f"unknown finetune.imbalance {imbalance!r}")
