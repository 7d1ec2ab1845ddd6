"""The authors' optimiser, learning-rate schedule and weight averaging, in PyTorch.

The search recipe comes from TensorFlow's MnasNet code, whose RMSProp differs from
torch.optim.RMSprop in ways that matter for the thresholds' small gradients: the squared-gradient
average starts at 1 (not 0), epsilon sits inside the square root, and the learning rate is
applied inside the momentum buffer (so a learning-rate decay does not jolt the momentum).
"""

from __future__ import annotations

import math

import torch


class RMSpropTF(torch.optim.Optimizer):
    """ms = rho*ms + (1-rho)*g^2 (ms starts at 1);  mom = momentum*mom + lr*g/sqrt(ms + eps);  p -= mom."""

    def __init__(self, params, lr: float, rho: float = 0.9, momentum: float = 0.9, eps: float = 1e-3):
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["ms"] = torch.ones_like(p)
                    self.state[p]["mom"] = torch.zeros_like(p)
            grads = [p.grad for p in params]
            ms = [self.state[p]["ms"] for p in params]
            mom = [self.state[p]["mom"] for p in params]
            # multi-tensor ops: one kernel per step for all parameters, not a Python loop of them
            torch._foreach_mul_(ms, group["rho"])
            torch._foreach_addcmul_(ms, grads, grads, value=1 - group["rho"])
            denom = torch._foreach_add(ms, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_mul_(mom, group["momentum"])
            torch._foreach_addcdiv_(mom, grads, denom, value=group["lr"])
            torch._foreach_sub_(params, mom)


def learning_rate(base_lr: float, epoch: float, decay: float, decay_epochs: float,
                  warmup_epochs: float = 0.0) -> float:
    """Staircase exponential decay (x decay every decay_epochs), after an optional linear warm-up."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    return base_lr * decay ** math.floor(epoch / decay_epochs)


def add_weight_decay(params: list[torch.Tensor], weight_decay: float) -> None:
    """p.grad += weight_decay * p: the gradient of the authors' L2 term weight_decay/2 * sum(p^2),
    added after backward in one foreach op. As a term of the loss it was some eight autograd ops
    per tensor, forward and backward (~700 a step in the supernet), where a step on a GPU is
    bound by the host's dispatching (docs/gpu.md). Call it after any gradient all-reduce: the
    term is the same on every rank."""
    with torch.no_grad():
        have, grads = [], []
        for p in params:
            if p.grad is None:  # unused this step: its gradient is the term's alone
                p.grad = weight_decay * p.detach()
            else:
                have.append(p)
                grads.append(p.grad)
        if have:
            torch._foreach_add_(grads, have, alpha=weight_decay)


@torch.no_grad()
def l2_penalty(params: list[torch.Tensor], weight_decay: float) -> torch.Tensor:
    """weight_decay/2 * sum(p^2), the value of the term `add_weight_decay` adds the gradient of
    (for the logged loss)."""
    if not params:
        return torch.zeros(())
    norms = torch.stack(torch._foreach_norm(params))
    return weight_decay * 0.5 * norms.square().sum()


class EMA:
    """Exponential moving average of the parameters (buffers such as BN statistics are copied).

    As TensorFlow's ExponentialMovingAverage with num_updates, the decay is min(decay,
    (1 + n) / (10 + n)): early averages are not dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._params = {k for k, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current, copies, copied = [], [], [], []
        # keep_vars: the tensors themselves (under no_grad), not a detached view of each, which
        # was one dispatched op per tensor per step (~650 in the supernet)
        for k, v in model.state_dict(keep_vars=True).items():
            if k in self._params and v.is_floating_point():
                averaged.append(self.shadow[k])
                current.append(v)
            else:
                copies.append(self.shadow[k])
                copied.append(v)
        torch._foreach_lerp_(averaged, current, 1 - d)  # shadow = d*shadow + (1-d)*current
        # the buffers (BN statistics) in a few launches, not one per tensor: a small network
        # on a GPU is bound by launches (docs/gpu.md)
        torch._foreach_copy_(copies, copied)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
