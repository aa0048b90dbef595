"""HiddenLayerLSTM (family ``hidden``): H-LSTM, a ReLU hidden layer inside every gate, with grow-and-prune.

Dai, Yin & Jha (2018), "Grow and Prune Compact, Fast, and Accurate LSTMs": each gate control becomes
a small multi-layer network. We implement one ReLU hidden layer of width ``d = gate_hidden`` per gate
``k`` in (i, f, g, o), reading ``u_t = [x_t; h_{t-1}]``:

    z_k   = ReLU(W1_k u_t + b1_k)                      W1_k: (d, m + n), stored as w1_ih (4d, m), w1_hh (4d, n)
    gate_k = act_k(W2_k z_k + b2_k)                    W2_k: (n, d), stored as w2 (4, n, d); b2: (4n,)
    act = sigmoid for i, f, o and tanh for g;  c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

The paper allows several hidden layers per gate and dropout inside them; we fix one layer and no
dropout (the trainer owns dropout between layers). Parameters per layer: ``4 (d (m + n) + d + n d + n)`` (``4 (d (m + n) + n d)`` without bias).
FLOPs per token and layer (``count_flops``): ``4 (d (m + n) + n d)`` matmul multiply-adds, dense;
element-wise maths is not counted. ``live_flops()`` gives the count after pruning (one multiply-add
per live weight).

Grow-and-prune: ``w1_ih``, ``w1_hh`` and ``w2`` each carry a 0/1 mask buffer (``mask_<name>``, in the
state_dict, not a parameter). The forward uses ``weight * mask``, so a masked weight has zero gradient
and no optimiser step can revive it; pruning also zeroes the weights themselves.

- ``prune(sparsity)``: GLOBAL magnitude pruning over all masked matrices of all layers (biases are
  never pruned) until that fraction of the weights is masked; never revives a masked weight.
- ``grow(amount, grads=None)``: revives the dormant weights with the largest loss-gradient magnitude,
  initialised to zero. The gradient is taken w.r.t. the *effective* weight ``weight * mask``, which is
  dense even where the mask is 0: a hook records it on every backward pass (summed over passes since
  the last ``grow``/``clear_growth_grads``). So call ``loss.backward()`` then ``grow(...)``, or pass
  ``grads={"layers.0.w1_ih": tensor, ...}`` yourself.
- ``live_parameters()``: unmasked weights plus biases; ``count_parameters`` stays the dense count.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._base import RecurrentLayer, RecurrentStack, State, check_positive_int, optional_parameters
from ._family_args import check_sizes
from ._kernels import gpu_path

MASKED = ("w1_ih", "w1_hh", "w2")
GROW_FRACTION = 0.5  # grow() with no amount revives this fraction of the dormant weights


class HiddenLayer(RecurrentLayer):
    """One H-LSTM layer: parameters ``w1_ih`` (4d, m), ``w1_hh`` (4d, n), ``b1`` (4d,), ``w2`` (4, n, d), ``b2`` (4n,)."""

    # Set False to skip recording dense gradients for grow() (saves one add per weight and backward).
    record_growth_grads = True

    def __init__(self, input_size: int, hidden_size: int, gate_hidden: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.gate_hidden = input_size, hidden_size, gate_hidden
        n, d = hidden_size, gate_hidden
        self.w1_ih = nn.Parameter(torch.empty(4 * d, input_size, **fk))
        self.w1_hh = nn.Parameter(torch.empty(4 * d, n, **fk))
        self.w2 = nn.Parameter(torch.empty(4, n, d, **fk))
        optional_parameters(self, bias, {"b1": (4 * d,), "b2": (4 * n,)}, **fk)
        for name in MASKED:
            self.register_buffer(f"mask_{name}", torch.ones_like(getattr(self, name)))
        # Dense gradients of the effective weights, recorded by hooks for grow(); not state.
        self.growth_grads: dict[str, Tensor] = {}
        self.reset_parameters()

    def recurrent_weight(self) -> tuple[str, Tensor | None]:
        """The h part of every gate's first layer, ``w1_hh`` (4d, n)."""
        return "w1_hh", None

    def reset_parameters(self) -> None:
        # nn.Linear's default bound 1/sqrt(fan_in) for each of the two gate layers.
        b1 = 1.0 / math.sqrt(self.input_size + self.hidden_size)
        b2 = 1.0 / math.sqrt(self.gate_hidden)
        for name, p in self.named_parameters():
            nn.init.uniform_(p, -b1, b1) if name in ("w1_ih", "w1_hh", "b1") else nn.init.uniform_(p, -b2, b2)
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the raw weights wherever the mask is 0."""
        for name in MASKED:
            getattr(self, name).mul_(getattr(self, f"mask_{name}"))

    def _record(self, name: str, grad: Tensor) -> None:
        g = grad.detach()
        self.growth_grads[name] = g.clone() if name not in self.growth_grads else self.growth_grads[name] + g

    def effective(self, name: str) -> Tensor:
        """``weight * mask`` for one masked weight; registers the hook that records its dense gradient."""
        eff = getattr(self, name) * getattr(self, f"mask_{name}")
        if eff.requires_grad and self.record_growth_grads:
            eff.register_hook(partial(self._record, name))
        return eff

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        N, n, d = x.size(1), self.hidden_size, self.gate_hidden
        w1_ih, w1_hh, w2 = (self.effective(name) for name in MASKED)
        # The x part of all four gates' first layers for the whole window in one matmul: (T, N, 4d).
        xw = F.linear(x, w1_ih, self.b1)
        if gpu_path(x, h):
            from ._triton_hidden import hidden_window  # triton is imported on the GPU path only
            return hidden_window(xw, w1_hh, w2, self.b2, state)
        w1_hh_t = w1_hh.t()  # (n, 4d)
        w2_t = w2.transpose(1, 2)  # (4, d, n)
        b2 = self.b2.view(4, 1, n) if self.b2 is not None else None
        outs = []
        # unbind once: indexing xw[t] every step would make backward allocate a whole-window zero tensor per step.
        for xt in xw.unbind(0):
            z = torch.relu(torch.addmm(xt, h, w1_hh_t)).view(N, 4, d).transpose(0, 1)  # (4, N, d)
            i, f, g, o = (torch.baddbmm(b2, z, w2_t) if b2 is not None else torch.bmm(z, w2_t)).unbind(0)  # (N, n) each
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs), (h, c)

    def forward_reference(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Obviously-correct per-step, per-gate loop (no hooks); tests compare ``forward`` to it."""
        h, c = state
        d, n = self.gate_hidden, self.hidden_size
        w1 = torch.cat([self.w1_ih * self.mask_w1_ih, self.w1_hh * self.mask_w1_hh], 1)  # (4d, m + n)
        w2 = self.w2 * self.mask_w2
        acts = (torch.sigmoid, torch.sigmoid, torch.tanh, torch.sigmoid)
        outs = []
        for t in range(x.size(0)):
            u = torch.cat([x[t], h], -1)
            gates = []
            for k in range(4):
                pre = u @ w1[k * d:(k + 1) * d].t()
                if self.b1 is not None:
                    pre = pre + self.b1[k * d:(k + 1) * d]
                out = torch.relu(pre) @ w2[k].t()
                if self.b2 is not None:
                    out = out + self.b2[k * n:(k + 1) * n]
                gates.append(acts[k](out))
            i, f, g, o = gates
            c = f * c + i * g
            h = o * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs), (h, c)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, gate_hidden={self.gate_hidden}"


def _check_amount(amount: Any, dormant: int) -> int:
    """Number of connections to grow: an int count >= 0, or a float fraction in (0, 1] of ``dormant``."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"amount must be an int count or a float fraction, got amount={amount!r}")
    if isinstance(amount, int):
        if amount < 0:
            raise ValueError(f"amount must be >= 0 when a count, got amount={amount}")
        return min(amount, dormant)
    if not 0.0 < amount <= 1.0:
        raise ValueError(f"amount must be in (0, 1] when a fraction, got amount={amount}")
    return int(round(amount * dormant))


class HiddenLayerLSTM(RecurrentStack):
    """H-LSTM (Dai, Yin & Jha 2018): every gate is a one-hidden-layer ReLU network of width ``gate_hidden``.

    Same constructor, state layout and forward as ``torch.nn.LSTM``; adds ``prune``, ``grow``,
    ``live_parameters``, ``live_flops``, ``sparsity`` and ``clear_growth_grads`` (see the module docstring).
    """

    layer_class = HiddenLayer

    # -- grow and prune --------------------------------------------------------------------------
    def _masked(self) -> list[tuple[str, HiddenLayer, str]]:
        return [(f"layers.{i}.{name}", layer, name) for i, layer in enumerate(self.layers) for name in MASKED]

    def _masks(self) -> list[Tensor]:
        return [getattr(layer, f"mask_{name}") for _, layer, name in self._masked()]

    def num_weights(self) -> int:
        """Number of prunable weights (all entries of the masked matrices)."""
        return sum(m.numel() for m in self._masks())

    def live_weights(self) -> int:
        """Number of prunable weights whose mask is 1."""
        return int(sum(int(m.count_nonzero()) for m in self._masks()))

    def sparsity(self) -> float:
        """Fraction of the prunable weights that are masked."""
        return 1.0 - self.live_weights() / self.num_weights()

    def live_parameters(self) -> int:
        """Parameters that still count after pruning: unmasked weights plus every bias."""
        biases = sum(p.numel() for layer in self.layers for p in (layer.b1, layer.b2) if p is not None)
        return self.live_weights() + biases

    def live_flops(self) -> int:
        """Matmul multiply-adds per token after pruning: one per live weight."""
        return self.live_weights()

    def clear_growth_grads(self) -> None:
        """Forget the dense gradients recorded for ``grow`` since the last grow."""
        for layer in self.layers:
            layer.growth_grads.clear()

    @torch.no_grad()
    def prune(self, sparsity: float) -> int:
        """Mask the smallest-magnitude live weights (globally) until ``sparsity`` of them are masked.

        Never revives a masked weight (a target below the current sparsity changes nothing).
        Returns the number of weights newly masked.
        """
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be a float in [0, 1), got sparsity={sparsity!r}")
        entries = self._masked()
        masks = self._masks()
        target = int(round(sparsity * self.num_weights()))
        todo = target - (self.num_weights() - self.live_weights())
        if todo <= 0:
            return 0
        scores = torch.cat([
            torch.where(mask.bool(), getattr(layer, name).abs(), torch.full_like(mask, math.inf)).flatten()
            for (_, layer, name), mask in zip(entries, masks)
        ])
        flat = torch.cat([m.flatten() for m in masks])
        flat[torch.topk(scores, todo, largest=False).indices] = 0
        self._set_masks(flat)
        return todo

    @torch.no_grad()
    def grow(self, amount: int | float = GROW_FRACTION, grads: dict[str, Tensor] | None = None) -> int:
        """Revive the dormant weights with the largest gradient magnitude; they start at zero.

        ``amount`` is a count (int >= 0) or a fraction (float in (0, 1]) of the dormant weights
        (default: half of them). ``grads`` maps names like ``"layers.0.w1_ih"`` to dense gradients;
        if None, the gradients recorded on the effective weights by the backward passes since the
        last grow are used (so a grow at the end of an epoch ranks by the epoch's summed gradient).
        Clears the recorded gradients. Returns the number of weights revived (0 if none is dormant).
        """
        entries = self._masked()
        masks = self._masks()
        count = _check_amount(amount, self.num_weights() - self.live_weights())
        if count == 0:
            self.clear_growth_grads()
            return 0
        if grads is None:
            missing = [q for q, layer, name in entries if name not in layer.growth_grads]
            if missing:
                raise ValueError(f"grow: no gradient recorded for {missing[0]}; call loss.backward() first or pass grads=")
            grads = {q: layer.growth_grads[name] for q, layer, name in entries}
        else:
            for q, layer, name in entries:
                if q not in grads:
                    raise ValueError(f"grow: grads is missing {q!r}")
                if tuple(grads[q].shape) != tuple(getattr(layer, name).shape):
                    raise ValueError(f"grow: grads[{q!r}] has shape {tuple(grads[q].shape)}, expected {tuple(getattr(layer, name).shape)}")
        self.clear_growth_grads()
        scores = torch.cat([
            torch.where(mask.bool(), torch.full_like(mask, -1.0), grads[q].to(mask).abs()).flatten()
            for (q, _, _), mask in zip(entries, masks)
        ])
        flat = torch.cat([m.flatten() for m in masks])
        flat[torch.topk(scores, count).indices] = 1
        before = [m.clone() for m in masks]
        self._set_masks(flat)
        for (_, layer, name), old, new in zip(entries, before, masks):
            getattr(layer, name).masked_fill_((new > old), 0.0)  # revived weights start at zero
        return count

    def _set_masks(self, flat: Tensor) -> None:
        start = 0
        for _, layer, name in self._masked():
            mask = getattr(layer, f"mask_{name}")
            mask.copy_(flat[start:start + mask.numel()].view_as(mask))
            start += mask.numel()
        for layer in self.layers:
            layer.apply_masks()

    # -- counting --------------------------------------------------------------------------------
    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> dict:
        """Validate the family arguments; returns ``{"gate_hidden": d}`` (default 16, must be >= 1)."""
        unknown = sorted(set(family_args) - {"gate_hidden"})
        if unknown:
            raise ValueError(f"{cls.family}: unexpected family argument {unknown[0]}={family_args[unknown[0]]!r}; it takes gate_hidden")
        check_sizes(input_size, hidden_size, num_layers)
        return {"gate_hidden": check_positive_int("gate_hidden", cls.with_defaults(family_args)["gate_hidden"])}

    @staticmethod
    def layer_parameters(input_size: int, hidden_size: int, bias: bool = True, *, gate_hidden: int) -> int:
        """Exact dense parameter count of one layer (pruning does not change it): 4 (d (m + n) + n d + d + n)."""
        d, n = gate_hidden, hidden_size
        return 4 * (d * (input_size + n) + n * d + ((d + n) if bias else 0))

    @staticmethod
    def layer_flops(input_size: int, hidden_size: int, *, gate_hidden: int) -> int:
        """Matmul multiply-adds of one token through one layer, dense (unpruned): 4 (d (m + n) + n d)."""
        d, n = gate_hidden, hidden_size
        return 4 * (d * (input_size + n) + n * d)
