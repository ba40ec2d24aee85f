"""Muon for convolution filters, as airbench94 uses it (Keller Jordan, 2024).

Each filter bank, seen as an (out, in*k*k) matrix, takes a (nesterov) momentum step whose direction is
orthogonalized by five Newton-Schulz iterations (torch.optim.Muon's quintic coefficients), and keeps its
norm at sqrt(out): BatchNorm follows every conv, so only the direction matters, and the fixed norm holds
the effective step constant. `torch.optim.Muon` takes 2-D parameters only, and conv weights (channels_last
here) are not views of a matrix, hence this small optimizer. The other groups (head, biases, BatchNorm)
take torch's own SGD with weight decay, so one optimizer serves the whole model and one lr schedule
scales both.
"""

from __future__ import annotations

import torch
from torch.optim.sgd import sgd

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of update = U S V^T (singular values land in ~[0.5, 1.5]), in fp32: on a CPU
    these matrices are too small for bf16 to pay."""
    a, b, c = NS_COEFFICIENTS
    wide = update.size(0) <= update.size(1)
    x = update if wide else update.T
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    """Groups with `muon: True` hold conv filters (>= 3-D); the rest take SGD (nesterov unless told)."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool = True) -> None:
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": 0.0, "muon": False}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            (self._muon if group["muon"] else self._sgd)(group, params, bufs)
        return loss

    @staticmethod
    def _sgd(group: dict, params: list[torch.Tensor], bufs: list[torch.Tensor]) -> None:
        momentum = group["momentum"]
        sgd(
            params,
            [p.grad for p in params],
            bufs,
            weight_decay=group["weight_decay"],
            momentum=momentum,
            lr=group["lr"],
            dampening=0.0,
            nesterov=group["nesterov"] and momentum > 0,
            maximize=False,
            foreach=True,
        )

    @staticmethod
    def _muon(group: dict, params: list[torch.Tensor], bufs: list[torch.Tensor]) -> None:
        grads, momentum = [p.grad for p in params], group["momentum"]
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        norms = torch._foreach_norm(params)
        torch._foreach_mul_(params, [len(p) ** 0.5 / n.clamp(min=1e-7) for p, n in zip(params, norms)])
        for p, update in zip(params, updates):
            p.add_(orthogonalize(update.reshape(len(p), -1)).view(p.shape), alpha=-group["lr"])
