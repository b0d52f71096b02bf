"""A module's digest is read once and read again whenever any of its tensors changed."""

from __future__ import annotations

import torch
from torch import nn

import trainables.digest as digest_module
from trainables.digest import module_digest, state_digest


def reads(monkeypatch) -> list[int]:
    """Count the full reads of a state dict that ``module_digest`` makes."""
    counted: list[int] = []
    real = digest_module.state_digest

    def counting(state):
        counted.append(1)
        return real(state)

    monkeypatch.setattr(digest_module, "state_digest", counting)
    return counted


def test_a_module_is_read_once_while_nothing_changes(monkeypatch):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    counted = reads(monkeypatch)
    first = module_digest(net)
    assert first == state_digest(net.state_dict())
    assert module_digest(net) == first and module_digest(net) == first
    assert len(counted) == 1, "the second and third calls reuse the first read"
    assert module_digest(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))) != first, "another module is read"


def test_every_kind_of_change_is_seen():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    seen = [module_digest(net)]

    def changed() -> None:
        now = module_digest(net)
        assert now == state_digest(net.state_dict()), "the memo agrees with a full read"
        assert now not in seen, "the change is seen"
        seen.append(now)

    with torch.no_grad():
        net[0].weight.add_(1.0)
    changed()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()(torch.randn(8, 3)).sum().backward()  # also moves BatchNorm's running statistics
    optimizer.step()
    changed()
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net.load_state_dict(other.state_dict())
    changed()
    net[0].bias = nn.Parameter(torch.zeros(4))
    changed()
    net[0].register_buffer("extra", torch.ones(2))
    changed()
