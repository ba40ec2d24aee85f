"""Muon for conv filters: the orthogonalized step, the held filter norm, and SGD for everything else."""

from __future__ import annotations

import pytest
import torch

from imgcls.config import ConfigError, OptimConfig
from imgcls.engine.muon import orthogonalize
from imgcls.engine.optim import build_optimizer
from imgcls.models import build_model


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (8, 9)])
def test_orthogonalize_sets_every_singular_value_near_one(shape):
    update = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 50
    singular = torch.linalg.svdvals(orthogonalize(update).float())
    # Keller Jordan's quintic iteration lands singular values in roughly [0.5, 1.5], not exactly at 1.
    assert singular.min() > 0.4 and singular.max() < 1.6, singular
    assert orthogonalize(update).shape == update.shape


def _step(model, optimizer) -> None:
    model(torch.randn(4, 1, 28, 28)).logsumexp(1).mean().backward()
    optimizer.step()


def test_muon_holds_each_filter_banks_norm_and_gives_the_head_plain_sgd():
    torch.manual_seed(0)
    model = build_model("smallnet", num_classes=10, in_chans=1, input_size=28, width=4)
    cfg = OptimConfig(name="muon", lr=0.1, weight_decay=5e-4, muon_lr=0.24)
    optimizer = build_optimizer(model, cfg)
    others, norms, filters = optimizer.param_groups  # the first group's lr is optim.lr, as with sgd
    assert all(p.ndim == 4 for p in filters["params"]) and filters["muon"]
    assert [p.ndim for p in others["params"]] == [2] and norms["weight_decay"] == 0 and others["lr"] == 0.1
    head_before = model.head.weight.detach().clone()
    reference = torch.nn.Parameter(head_before.clone())
    sgd = torch.optim.SGD([reference], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    _step(model, optimizer)
    reference.grad = model.head.weight.grad.clone()
    sgd.step()
    torch.testing.assert_close(model.head.weight, reference)
    filters["lr"] = 0.0  # the norm is set before each step's move: with no move, it shows
    _step(model, optimizer)
    for p in filters["params"]:
        assert p.norm().item() == pytest.approx(len(p) ** 0.5, rel=1e-4)


def test_a_filter_bank_moves_by_the_orthogonalized_gradient():
    torch.manual_seed(0)
    model = build_model("smallnet", num_classes=10, in_chans=1, input_size=28, width=4)
    cfg = OptimConfig(name="muon", lr=0.1, muon_lr=1.0, muon_momentum=0.0)
    optimizer = build_optimizer(model, cfg)
    stem = model.backbone[0].weight
    normalized = stem.detach() * (len(stem) ** 0.5 / stem.detach().norm())
    _step(model, optimizer)
    expected = normalized - orthogonalize(stem.grad.reshape(len(stem), -1)).view(stem.shape)
    torch.testing.assert_close(stem.detach(), expected)


def test_muon_is_for_training_from_scratch():
    with pytest.raises(ConfigError, match="optim.name=muon trains from scratch only"):
        build_optimizer(
            build_model("smallnet", num_classes=3, in_chans=1, input_size=28), OptimConfig(name="muon"), True
        )
