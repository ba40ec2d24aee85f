"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits so that
softmax(logits / T) is calibrated; accuracy is unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The T > 0 minimizing the negative log-likelihood of `labels` under softmax(logits / T).

    Example:
        >>> fit_temperature(torch.tensor([[4.0, 0.0], [4.0, 0.0]]), torch.tensor([0, 1])) > 1   # over-confident
        True
    """
    logits, labels = logits.float().clone(), labels.long().clone()  # out of inference mode
    log_t = torch.zeros(1, requires_grad=True)  # optimize log T: T stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return round(float(log_t.detach().exp().clamp(0.05, 20.0)), 4)
