"""Black-box membership inference in the style of ML-Doctor (paper Section 6.1, Fig. 10).

The adversary queries the target model and sees its posteriors. Attack features per image:
the softmax posterior vector sorted in descending order, plus 1.0 if the top prediction equals
the true label (else 0.0). The attack model is a three-layer MLP trained on half of the test
set (non-members) and as many training images (members); it is scored on the other half of
the test set and as many *different* training images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from backdoor.metrics import batched_outputs


@dataclass(frozen=True)
class MIASplit:
    """Indices: members into the training set, non-members into the test set; train = attack-model training."""

    train_members: torch.Tensor
    train_nonmembers: torch.Tensor
    eval_members: torch.Tensor
    eval_nonmembers: torch.Tensor


def mia_split(n_train: int, n_test: int, seed: int = 0, exclude: Optional[torch.Tensor] = None) -> MIASplit:
    """Seeded, disjoint split: h = n_test // 2 non-members per side, h members per side from the training set.

    `exclude` (e.g. poisoned indices) are never drawn as members, so every member is in the
    training set as it is.
    """
    h = n_test // 2
    allowed = torch.ones(n_train, dtype=torch.bool)
    if exclude is not None and len(exclude):
        allowed[torch.as_tensor(exclude, dtype=torch.long)] = False
    pool = allowed.nonzero().flatten()
    if h < 1 or len(pool) < 2 * h:
        raise ValueError(f"membership inference needs >= 2 test images and >= {2 * h} usable training images "
                         f"(got {n_test} test, {len(pool)} training); use a larger dataset")
    gen = torch.Generator().manual_seed(seed)
    test_perm = torch.randperm(n_test, generator=gen)
    members = pool[torch.randperm(len(pool), generator=gen)]
    return MIASplit(members[:h].sort().values, test_perm[:h].sort().values,
                    members[h : 2 * h].sort().values, test_perm[h : 2 * h].sort().values)


def attack_features(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """[N, C+1] float features: sorted softmax posteriors and the top-1 correctness flag (CPU, fp32)."""
    logits = batched_outputs(model, x, lambda o: o.float(), batch_size, bf16=False)  # fp32 posteriors
    correct = (logits.argmax(1) == y.cpu()).float()[:, None]
    return torch.cat([F.softmax(logits, 1).sort(1, descending=True).values, correct], 1)


class AttackMLP(nn.Module):
    """Three linear layers (features -> 64 -> 64 -> 2), ReLU between."""

    def __init__(self, num_features: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_attack_model(feats: torch.Tensor, member: torch.Tensor, epochs: int, seed: int = 0,
                       lr: float = 1e-3, batch_size: int = 64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Adam + cross-entropy on standardised features; returns (model, mean, std) for scoring."""
    torch.manual_seed(seed)
    mean, std = feats.mean(0), feats.std(0).clamp(min=1e-6)
    xs, ys = (feats - mean) / std, member.long()
    net = AttackMLP(feats.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval(), mean, std


@torch.no_grad()
def member_scores(net: nn.Module, mean: torch.Tensor, std: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """P(member) per row of `feats`."""
    return F.softmax(net((feats - mean) / std), 1)[:, 1]


def membership_inference(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                         y_test: torch.Tensor, split: MIASplit, epochs: int, seed: int = 0) -> dict[str, float]:
    """Train the attack model on `split`'s training halves, score it on the others: accuracy and AUC."""
    from sklearn.metrics import roc_auc_score  # here, not at import: seconds of start-up for every step


    def side(members: torch.Tensor, nonmembers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.cat([attack_features(model, x_train[members], y_train[members]),
                       attack_features(model, x_test[nonmembers], y_test[nonmembers])])
        return f, torch.cat([torch.ones(len(members)), torch.zeros(len(nonmembers))])

    f_tr, m_tr = side(split.train_members, split.train_nonmembers)
    f_ev, m_ev = side(split.eval_members, split.eval_nonmembers)
    net, mean, std = train_attack_model(f_tr, m_tr, epochs, seed)
    p_tr, p_ev = member_scores(net, mean, std, f_tr), member_scores(net, mean, std, f_ev)
    return {"accuracy": ((p_ev > 0.5).float() == m_ev).float().mean().item(),
            "auc": float(roc_auc_score(m_ev.numpy(), p_ev.numpy())),
            "train_accuracy": ((p_tr > 0.5).float() == m_tr).float().mean().item(),
            "n_train": len(m_tr), "n_eval": len(m_ev)}
