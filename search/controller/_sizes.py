"""What the controller needs to size a trial: the corpus's vocabulary, a trial's recorded sizes, and the
hypervolume's size reference for a size objective."""

from __future__ import annotations

import copy

from squeezelstm.trainers import Config, load_corpus, model_sizes

from ..space import SearchSpace


def corpus_vocab_size(space: SearchSpace) -> int:
    """Vocabulary size of the space's corpus, loaded once through the trainer (it caches per process)."""
    data = Config.from_dict({"data": copy.deepcopy(space.fixed.get("data", {}))}).data
    if data.corpus == "synthetic":
        return int(data.vocab_size)  # known without generating the corpus
    if not data.path:
        raise ValueError(
            f"data.path is required for data.corpus={data.corpus!r} in space {space.name!r}: "
            "set it in the space file or with --set data.path=DIR"
        )
    return int(load_corpus(data).vocab_size)


def record_sizes(config: dict, params: int, flops: int, vocab_size: int | None) -> dict:
    """``params``, ``recurrent_params``, ``flops`` (live after H-LSTM grow-and-prune) and ``dense`` (before).

    From ``trainers.model_sizes``; ``params`` and ``flops`` are the measured ones (a replay measures its
    recorded curves) less what pruning masks. Without a vocabulary (a custom ``measure`` alone) the
    cells are not counted: ``recurrent_params`` is 0.
    """
    if vocab_size is None:
        dense = {"params": int(params), "recurrent_params": 0, "flops": int(flops)}
        return {**dense, "dense": dense}
    s = model_sizes(Config.from_dict(config), int(vocab_size))
    dense = {"params": int(params), "recurrent_params": s.recurrent_params, "flops": int(flops)}
    return {"params": int(params) - (s.params - s.live_params), "recurrent_params": s.live_recurrent_params,
            "flops": int(flops) - (s.flops - s.live_flops), "dense": dense}


def size_reference(space: SearchSpace, size: str) -> float | None:
    """The hypervolume's size reference for ``size``: the budget's ``max_params`` (which bounds the
    recurrent parameters too), for FLOPs ``max_flops`` where set (else ``max_params``: a language model
    does at most about one multiply-add per weight per token). None without a budget."""
    if size == "flops" and space.max_flops:
        return float(space.max_flops)
    return float(space.max_params) if space.max_params else None


__all__ = ["corpus_vocab_size", "record_sizes", "size_reference"]
