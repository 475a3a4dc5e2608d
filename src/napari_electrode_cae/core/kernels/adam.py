"""Adam without ``torch.optim``: the same update and state-dict layout, none of its imports.

Every ``torch.optim`` optimiser imports ``torch._dynamo`` (with sympy and more) when it is
built, because ``Optimizer.add_param_group`` is wrapped by ``torch._disable_dynamo``: about
67 MiB of RSS and a second or more per process, for nothing training here uses.
:class:`FusedAdam` is plain Adam (Kingma & Ba; no weight decay, no AMSGrad) that calls torch's
fused kernel ``torch._fused_adam_`` directly, as ``torch.optim.Adam(fused=True)`` does, and
falls back to torch's per-parameter update (the ops of ``torch.optim.Adam``'s default loop, in
the same order) where that kernel is missing. Its ``state_dict`` has ``torch.optim.Adam``'s
layout, so checkpoints move between the two in both directions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

#: The hyper-parameters ``torch.optim.Adam`` writes to each parameter group, in its order.
_GROUP_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
    "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
    "fused": None, "decoupled_weight_decay": False,
}
#: Options of ``torch.optim.Adam`` this class does not implement, with the values it needs.
_UNSUPPORTED = {"weight_decay": 0, "amsgrad": False, "maximize": False,
                "decoupled_weight_decay": False, "differentiable": False}


def _fused_devices() -> tuple[str, ...]:
    """Device types with a fused Adam kernel in this torch (none if it has no such op)."""
    if not hasattr(torch, "_fused_adam_"):
        return ()
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the list: the op itself tells (see step)
        return ("cpu", "cuda", "mps", "xpu")
    return tuple(_get_fused_kernels_supported_devices())


class FusedAdam:
    """Adam (``torch.optim.Adam`` with its defaults) on one parameter group.

    Parameters
    ----------
    params : iterable of torch.Tensor
        Floating-point parameters, all optimised with the same settings.
    lr : float
        Learning rate.
    betas : (float, float)
        Decay rates of the first and second moment estimates.
    eps : float
        Added to the denominator.

    Attributes
    ----------
    param_groups : list of dict
        One group, with ``torch.optim.Adam``'s keys (``params`` holds the tensors).
    state : dict
        Per parameter (keyed by the tensor): ``step`` (a float32 scalar tensor), ``exp_avg`` and
        ``exp_avg_sq``; filled on the first step that parameter has a gradient.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if isinstance(params, torch.Tensor):
            raise TypeError("params must be an iterable of tensors, not a tensor")
        params = list(params)
        if not params:
            raise ValueError("optimiser got an empty parameter list")
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"optimiser can only optimise tensors, got {type(p).__name__}")
            if not p.is_floating_point():
                raise ValueError(f"Adam needs floating-point parameters, got {p.dtype}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears more than once")
        if not (lr >= 0.0 and eps >= 0.0 and 0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}")
        self._fused_devices = set(_fused_devices())
        group = dict(_GROUP_DEFAULTS, lr=lr, betas=tuple(betas), eps=eps)
        group["fused"] = True if all(p.device.type in self._fused_devices
                                     for p in params) else None
        group["params"] = params
        self.param_groups: list[dict[str, Any]] = [group]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def __repr__(self) -> str:
        group = self.param_groups[0]
        return (f"FusedAdam({len(group['params'])} parameters, lr={group['lr']}, "
                f"betas={group['betas']}, eps={group['eps']})")

    # -- training -----------------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (``set_to_none``) or zero them in place."""
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adam update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = float(group["lr"]), group["betas"], float(group["eps"])
        beta1, beta2 = float(beta1), float(beta2)
        # (device, dtype) -> parameters, gradients, first and second moments, steps
        batches: dict[tuple[torch.device, torch.dtype], tuple[list, ...]] = {}
        with torch.no_grad():
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients")
                state = self.state.get(p)
                if not state:
                    state = self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                lists = batches.setdefault((p.device, p.dtype), ([], [], [], [], []))
                for target, value in zip(lists, (p, grad, state["exp_avg"],
                                                 state["exp_avg_sq"], state["step"])):
                    target.append(value)
            for (device, _), (params, grads, exp_avgs, exp_avg_sqs, steps) in batches.items():
                if not (device.type in self._fused_devices
                        and self._fused_step(params, grads, exp_avgs, exp_avg_sqs, steps,
                                             lr, beta1, beta2, eps)):
                    _loop_step(params, grads, exp_avgs, exp_avg_sqs, steps,
                               lr, beta1, beta2, eps)
        return loss

    def _fused_step(self, params, grads, exp_avgs, exp_avg_sqs, steps,
                    lr, beta1, beta2, eps) -> bool:
        """``torch.optim.Adam(fused=True)``'s update; False (nothing changed) without the op."""
        torch._foreach_add_(steps, 1)
        try:
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps,
                               lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps,
                               amsgrad=False, maximize=False, grad_scale=None, found_inf=None)
        except NotImplementedError:
            # no kernel for this device (dispatch fails before anything is written)
            torch._foreach_sub_(steps, 1)
            self._fused_devices.discard(params[0].device.type)
            self.param_groups[0]["fused"] = None
            return False
        return True

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Adam``'s layout: ``state`` by parameter index and ``param_groups``.

        Like torch, the state tensors are returned as they are, not copied.
        """
        params = self.param_groups[0]["params"]
        index = {id(p): i for i, p in enumerate(params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(params)))
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": dict(sorted(state.items())), "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict` or ``torch.optim.Adam.state_dict()``.

        The saved learning rate, betas and eps replace the current ones, as in torch.

        Raises
        ------
        ValueError
            If the state was written for other parameters (another number of groups or
            parameters, or other shapes) or with an Adam option this class does not implement.
        TypeError, KeyError
            If it is not an optimiser state at all.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"optimiser state must be a dict, not {type(state_dict).__name__}")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
            raise TypeError("optimiser state has no list of param_groups and dict of state")
        if len(saved_groups) != 1:
            raise ValueError("loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)}, expected 1)")
        saved = saved_groups[0]
        params = self.param_groups[0]["params"]
        if len(saved["params"]) != len(params):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             f"the size of optimizer's group ({len(saved['params'])} "
                             f"parameters, expected {len(params)})")
        for key, needed in _UNSUPPORTED.items():
            if saved.get(key, needed) != needed:
                raise ValueError(f"loaded state dict uses Adam's {key}={saved[key]!r}, which "
                                 "this optimiser does not implement")
        lr, betas, eps = float(saved["lr"]), saved["betas"], float(saved["eps"])
        betas = (float(betas[0]), float(betas[1]))
        by_id = dict(zip(saved["params"], params))
        state: dict[torch.Tensor, dict[str, Any]] = {}
        for key, value in saved_state.items():
            if key not in by_id:
                raise ValueError(f"loaded state dict has state for unknown parameter {key!r}")
            p = by_id[key]
            state[p] = self._cast_state(p, key, value)
        group = {k: v for k, v in saved.items() if k != "params"}
        group.update(lr=lr, betas=betas, eps=eps)
        group["fused"] = self.param_groups[0]["fused"]  # what this optimiser will run
        group["params"] = params
        self.param_groups = [group]
        self.state = state

    @staticmethod
    def _cast_state(p: torch.Tensor, key: object, value: object) -> dict[str, Any]:
        if not isinstance(value, dict) or not {"step", "exp_avg", "exp_avg_sq"} <= set(value):
            raise ValueError(f"loaded state of parameter {key!r} is not Adam's state "
                             "(step, exp_avg, exp_avg_sq)")
        out: dict[str, Any] = {}
        for name in ("exp_avg", "exp_avg_sq"):
            t = value[name]
            if not isinstance(t, torch.Tensor) or t.shape != p.shape:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"loaded {name} of parameter {key!r} has shape {shape}, "
                                 f"expected {tuple(p.shape)}")
            t = t.to(dtype=p.dtype, device=p.device)  # no copy when it already matches
            if t.stride() != p.stride():  # the fused kernel walks all tensors alike
                t = torch.empty_like(p).copy_(t)
            out[name] = t
        step = value["step"]
        if isinstance(step, torch.Tensor):
            if step.numel() != 1:
                raise ValueError(f"loaded step of parameter {key!r} is not a scalar")
            step = step.detach().reshape(()).to(dtype=torch.float32, device=p.device)
        elif isinstance(step, (int, float)) and not isinstance(step, bool):
            step = torch.tensor(float(step), dtype=torch.float32, device=p.device)
        else:
            raise ValueError(f"loaded step of parameter {key!r} is not a number")
        # step first, as torch.optim.Adam orders it
        return {"step": step, **out, **{k: v for k, v in value.items() if k not in out
                                       and k != "step"}}


def _loop_step(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps) -> None:
    """``torch.optim.Adam``'s default per-parameter update (same ops, same order)."""
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(params, grads, exp_avgs, exp_avg_sqs,
                                                        steps):
        step_t += 1
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
