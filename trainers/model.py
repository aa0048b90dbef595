"""The word-level language model: embedding -> a stack of one cell family -> decoder.

Every layer is its own one-layer cell built by ``squeezelstm.spaces.build_cell`` (so any family
argument may differ per layer, and the trainer owns dropout between layers). For ``cell: lstm``
with ``fast_lstm`` the layers are ``torch.nn.LSTM`` (fused kernels; same equations and the same
4n(m + n) + 8n parameters as ``spaces.LSTM``). Dropout draws its masks from an explicit
``torch.Generator`` handed to ``forward`` so that a checkpoint can restore it.

A tied decoder reads the embedding matrix (V, E); when E != H a bias-free ``projection`` (E, H)
maps the last layer's output to the embedding width first. We project rather than shrink the last
layer to E (awd-lstm-lm's choice) so that every layer of every family keeps one hidden size (the
family arguments, e.g. groups dividing H, and the state shapes stay uniform).

    params = V*E + sum_l cell_l + (H*V if not tied) + (H*E if tied and E != H) + V   (decoder bias)
    flops/token = sum_l cell_l flops + H*V (untied) or E*V + (H*E if E != H) (tied)   (multiply-adds)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from squeezelstm.spaces import build_cell, count_flops, count_parameters
from squeezelstm.spaces.families import FAMILY_TABLE

from .config import Config, ModelConfig
from .dropout import dropout as masked_dropout
from .regularisers import embedding_dropout
from .weight_drop import call_with_weight_drop

State = list[tuple[Tensor, Tensor]]


def _layer_sizes(m: ModelConfig) -> list[tuple[int, int]]:
    return [(m.input_size if i == 0 else m.hidden_size, m.hidden_size) for i in range(m.num_layers)]


def _uses_torch_lstm(m: ModelConfig) -> bool:
    return FAMILY_TABLE[m.cell].is_torch_lstm and m.fast_lstm


def _projects(m: ModelConfig) -> bool:
    """A tied decoder whose embedding width differs from the hidden size needs the projection."""
    return m.tie_weights and m.input_size != m.hidden_size


def _decoder_width(m: ModelConfig) -> int:
    return m.input_size if m.tie_weights else m.hidden_size


class LanguageModel(nn.Module):
    """``forward(tokens (T, N), state, offset=0, generator=None) -> (logits (T, N, V), state)``.

    ``state`` is a list with one ``(h, c)`` pair per layer, each ``(1, N, H)`` (``init_state``).
    ``offset`` is the stream position of ``tokens[0]`` (round-robin routed cells need it).
    """

    def __init__(self, model: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config, self.vocab_size = model, vocab_size
        self.embedding = nn.Embedding(vocab_size, model.input_size)
        layers = []
        for i, (in_size, hidden) in enumerate(_layer_sizes(model)):
            if _uses_torch_lstm(model):
                layers.append(nn.LSTM(in_size, hidden, 1, bias=model.bias))
            else:
                layers.append(build_cell(model.cell, in_size, hidden, 1, model.bias, **model.layer_family_args(i)))
        self.layers = nn.ModuleList(layers)
        if _projects(model):
            self.projection = nn.Linear(model.hidden_size, model.input_size, bias=False)
        self.decoder = nn.Linear(_decoder_width(model), vocab_size)
        if model.tie_weights:
            self.decoder.weight = self.embedding.weight
        # the cell's forward also takes the stream position and a generator (routed cells)
        self.stream_position = FAMILY_TABLE[model.cell].stream_position
        self._init_weights()

    def _init_weights(self) -> None:
        # Zaremba et al. / the PyTorch example: small uniform embedding and decoder, zero decoder bias.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if not self.config.tie_weights:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero states, one ``(h, c)`` pair of shape ``(1, batch_size, H)`` per layer."""
        device = device if device is not None else self.decoder.weight.device
        dtype = self.decoder.weight.dtype
        shape = (1, batch_size, self.config.hidden_size)
        return [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                for _ in self.layers]

    def forward(self, tokens: Tensor, state: State, offset: int = 0, generator: torch.Generator | None = None,
                return_last: bool = False) -> tuple[Tensor, State] | tuple[Tensor, State, Tensor, Tensor]:
        """With ``return_last`` also the last layer's output before and after dropout, each (T, N, H)
        (what the AR/TAR penalties read)."""
        m = self.config
        p, locked = m.dropout, m.locked_dropout
        x = self.embedding(tokens)  # (T, N, E)
        x = embedding_dropout(x, tokens, self.vocab_size, m.embedding_dropout, self.training, generator)
        x = masked_dropout(x, p, self.training, locked, generator)
        drop_weights = self.training and m.weight_drop > 0.0
        new_state = []
        raw = x
        for i, layer in enumerate(self.layers):
            kwargs = ({"offset": offset, "generator": generator if self.training else None}
                      if self.stream_position else {})
            if drop_weights:
                raw, hc = call_with_weight_drop(layer, m.cell, m.weight_drop, generator, (x, state[i]), kwargs)
            else:
                raw, hc = layer(x, state[i], **kwargs)
            new_state.append(hc)
            x = masked_dropout(raw, p, self.training, locked, generator)  # (T, N, H)
        logits = self.decoder(self.projection(x) if _projects(m) else x)
        if return_last:
            return logits, new_state, raw, x
        return logits, new_state

    def live_parameters(self) -> int:
        """Parameters still alive after grow-and-prune (all of them for families that do not prune)."""
        total = sum(p.numel() for p in self.parameters())
        for layer in self.layers:
            if hasattr(layer, "live_parameters"):
                total += int(layer.live_parameters()) - sum(p.numel() for p in layer.parameters())
        return total


def build_model(config: Config, vocab_size: int) -> LanguageModel:
    """The model ``config.model`` describes for a ``vocab_size`` vocabulary, initialised from ``config.train.seed``.

    Initialisation draws from torch's default generator inside ``torch.random.fork_rng``, seeded
    from the config, so the caller's global random state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return LanguageModel(config.model, vocab_size)


def count_model_parameters(config: Config, vocab_size: int) -> int:
    """Exact parameter count of ``build_model(config, vocab_size)`` (tied weights counted once), no tensors."""
    m = config.model
    total = vocab_size * m.input_size + vocab_size  # embedding + decoder bias
    if not m.tie_weights:
        total += m.hidden_size * vocab_size
    if _projects(m):
        total += m.hidden_size * m.input_size
    for i, (in_size, hidden) in enumerate(_layer_sizes(m)):
        total += count_parameters(m.cell, in_size, hidden, 1, m.bias, **m.layer_family_args(i))
    return total


def count_model_flops(config: Config, vocab_size: int) -> int:
    """Matmul multiply-adds per token: every layer's cell, the projection and the decoder (lookups are free)."""
    m = config.model
    total = _decoder_width(m) * vocab_size + (m.hidden_size * m.input_size if _projects(m) else 0)
    for i, (in_size, hidden) in enumerate(_layer_sizes(m)):
        total += count_flops(m.cell, in_size, hidden, 1, **m.layer_family_args(i))
    return total
