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
        for k, v in model.state_dict().items():
            if k in self._params and v.is_floating_point():
                averaged.append(self.shadow[k])
                current.append(v.detach())
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
