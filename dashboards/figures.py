"""The report's figures, each split into a function that computes plain data and one that draws it.

Tests check the ``*_data`` functions (which points, which front, where a pruned curve stopped);
the ``draw_*`` functions only turn that data into a ``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from squeezelstm.search.pareto import SIZE_LABELS, Refinement, TrialRecord, finished, log_hypervolume, pareto_front
from squeezelstm.spaces.families import FAMILY_NAMES

from .tables import format_args, key_args

# one fixed colour per known family, in the family table's order, so every figure of a report agrees
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
FAMILY_COLORS = dict(zip(FAMILY_NAMES, _PALETTE))
_SPARE_COLORS = ("#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def family_color(family: str) -> str:
    """The colour of ``family`` (unknown families get a stable spare colour)."""
    return FAMILY_COLORS.get(family, _SPARE_COLORS[sum(map(ord, family)) % len(_SPARE_COLORS)])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def human_count(n: float) -> str:
    """``1234567`` -> ``"1.23M"``: parameter counts and budgets for labels."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.3g}"


def _hover(r: TrialRecord) -> str:
    lines = [f"trial {r.number} · {r.family} · {r.status}",
             f"params {r.params:,} · recurrent {r.recurrent_params:,} · flops {r.flops:,}"]
    lines += [f"before pruning: params {r.dense['params']:,} · recurrent {r.dense['recurrent_params']:,}"
              ] if r.dense and r.dense.get("params") != r.params else []
    if _finite(r.valid_ppl):
        lines.append(f"valid ppl {r.valid_ppl:.3f}")
    if _finite(r.test_ppl):
        lines.append(f"test ppl {r.test_ppl:.3f}")
    args = format_args(key_args(r))
    if args:
        lines.append(args)
    lines += [f"{k}={v}" for k, v in sorted(r.sampled.items()) if k.split(".", 1)[-1] not in key_args(r)]
    return "<br>".join(lines)


# ---------------------------------------------------------------- Pareto plot
def pareto_data(records: Iterable[TrialRecord], optimal_ppl: float | None = None,
                refined: Refinement | None = None) -> dict[str, Any]:
    """Points per family (faded unless finished), the front and its staircase, and the optimum line.

    Returns ``{"families": {family: {"trial", "params", "valid_ppl", "status", "faded", "hover"}},
    "front": {"trial", "params", "valid_ppl"}, "step": {"x", "y"}, "optimal_ppl", "unplotted",
    "y_range", "size"}``: ``params`` holds the search's size objective (``size``: total parameters,
    recurrent parameters or FLOPs; ``TrialRecord.size_value``); ``y_range`` spans every point but stops at 3x the worst finished perplexity;
    ``step`` is the front as a staircase (each point, then right to the next point's parameter
    count at the same perplexity); ``unplotted`` lists trials without any perplexity. With ``refined`` (a
    refinement of the search) also ``"refined": {"member", "family", "params", "valid_mean", "valid_std",
    "valid_min", "valid_max", "seeds", "on_front", "hover"}`` (members with a finished seed: the error bars) and
    ``"refined_step"``, the refined front's staircase.
    """
    records = list(records)
    families: dict[str, dict[str, list]] = {}
    unplotted = []
    for r in sorted(records, key=lambda r: r.number):
        if not _finite(r.valid_ppl) or r.size_value <= 0:
            unplotted.append(r.number)
            continue
        fam = families.setdefault(r.family, {k: [] for k in ("trial", "params", "valid_ppl", "status", "faded", "hover")})
        fam["trial"].append(r.number)
        fam["params"].append(int(r.size_value))
        fam["valid_ppl"].append(float(r.valid_ppl))
        fam["status"].append(r.status)
        fam["faded"].append(r.status != "finished")
        fam["hover"].append(_hover(r))
    front = pareto_front(records)
    refined_pts = _refined_points(refined)
    # a diverged trial's perplexity can be astronomic: keep the axis on the trials worth reading
    every = [v for fam in families.values() for v in fam["valid_ppl"]]
    every += [m + s for m, s in zip(refined_pts["valid_mean"], refined_pts["valid_std"])]
    every += [m - s for m, s in zip(refined_pts["valid_mean"], refined_pts["valid_std"]) if m - s > 0]
    done = [v for fam in families.values() for v, f in zip(fam["valid_ppl"], fam["faded"]) if not f]
    y_range = None
    if every:
        top = min(max(every), 3.0 * max(done)) if done else max(every)
        low = min(every + ([float(optimal_ppl)] if _finite(optimal_ppl) else []))
        y_range = [0.95 * min(low, top), 1.05 * top]
    return {
        "families": families,
        "y_range": y_range,
        "size": records[0].size if records else "total",
        "front": {"trial": [r.number for r in front], "params": [int(r.size_value) for r in front],
                  "valid_ppl": [float(r.valid_ppl) for r in front]},
        "step": _staircase([(r.size_value, r.valid_ppl) for r in front]),
        "optimal_ppl": float(optimal_ppl) if _finite(optimal_ppl) else None,
        "unplotted": unplotted,
        "refined": refined_pts,
        "refined_step": _staircase([(m.size_value, m.valid.mean) for m in refined.front()] if refined else []),
    }


def _staircase(points: Sequence[tuple[float, float]]) -> dict[str, list[float]]:
    """A front's points (sorted by size) as a staircase: each point, then right to the next one's size."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (x, y) in enumerate(points):
        if i:
            xs.append(float(x))
            ys.append(ys[-1])
        xs.append(float(x))
        ys.append(float(y))
    return {"x": xs, "y": ys}


def _refined_points(refined: Refinement | None) -> dict[str, list]:
    keys = ("member", "family", "params", "valid_mean", "valid_std", "valid_min", "valid_max", "seeds", "on_front",
            "hover")
    out: dict[str, list] = {k: [] for k in keys}
    if refined is None:
        return out
    front = {m.number for m in refined.front()}
    for m in sorted(refined.members, key=lambda m: (m.size_value, m.number)):
        valid, test = m.valid, m.test
        if valid is None or m.size_value <= 0:
            continue
        hover = [f"refined: trial {m.number} · {m.family} · {m.seeds_finished}/{len(m.runs)} seeds",
                 f"params {m.params:,} · recurrent {m.recurrent_params:,} · flops {m.flops:,}",
                 f"valid ppl {valid.mean:.3f} ± {valid.std:.3f} (min {valid.min:.3f}, max {valid.max:.3f})"]
        if test is not None:
            hover.append(f"test ppl {test.mean:.3f} ± {test.std:.3f}")
        if m.search_valid_ppl is not None:
            hover.append(f"search: valid ppl {m.search_valid_ppl:.3f} after {m.search_epochs} epoch(s)")
        for key, value in (("member", m.number), ("family", m.family), ("params", m.size_value),
                           ("valid_mean", valid.mean), ("valid_std", valid.std), ("valid_min", valid.min),
                           ("valid_max", valid.max), ("seeds", m.seeds_finished), ("on_front", m.number in front),
                           ("hover", "<br>".join(hover))):
            out[key].append(value)
    return out


def draw_pareto(data: dict[str, Any]) -> go.Figure:
    """The size objective (log x: parameters by default) against validation perplexity, coloured by family,
    front as a step line."""
    fig = go.Figure()
    for family, pts in sorted(data["families"].items()):
        color = family_color(family)
        # finished and unfinished trials as two traces of one legend group: the legend shows the solid marker
        for faded in (False, True):
            idx = [i for i, f in enumerate(pts["faded"]) if f == faded]
            if not idx:
                continue
            fig.add_trace(go.Scatter(
                x=[pts["params"][i] for i in idx], y=[pts["valid_ppl"][i] for i in idx], mode="markers",
                name=family if not faded else f"{family} (not finished)", legendgroup=family,
                text=[pts["hover"][i] for i in idx], hovertemplate="%{text}<extra></extra>",
                marker={"color": color, "size": 9, "opacity": 0.3 if faded else 0.9,
                        "symbol": "circle-open" if faded else "circle", "line": {"width": 1, "color": color}},
            ))
    if data["step"]["x"]:
        fig.add_trace(go.Scatter(x=data["step"]["x"], y=data["step"]["y"], mode="lines", name="Pareto front",
                                 line={"color": "black", "width": 2}, hoverinfo="skip"))
    ref = data.get("refined") or {}
    if ref.get("member"):
        # the refined members: mean over seeds with the std as error bars, in the family's colour
        fig.add_trace(go.Scatter(
            x=ref["params"], y=ref["valid_mean"], mode="markers", name="refined (mean ± std over seeds)",
            error_y={"type": "data", "array": ref["valid_std"], "visible": True, "thickness": 1.5, "width": 6},
            text=ref["hover"], hovertemplate="%{text}<extra></extra>",
            marker={"symbol": "diamond", "size": 11, "color": [family_color(f) for f in ref["family"]],
                    "line": {"width": 1.5, "color": "black"}},
        ))
    if data.get("refined_step", {}).get("x"):
        fig.add_trace(go.Scatter(x=data["refined_step"]["x"], y=data["refined_step"]["y"], mode="lines",
                                 name="refined front", line={"color": "black", "width": 2, "dash": "dash"},
                                 hoverinfo="skip"))
    if data["optimal_ppl"] is not None:
        fig.add_hline(y=data["optimal_ppl"], line_dash="dash", line_color="grey",
                      annotation_text=f"optimal ppl {data['optimal_ppl']:.3g}", annotation_position="top left")
    label = SIZE_LABELS[data.get("size", "total")]
    fig.update_layout(title=f"{label[0].upper()}{label[1:]} vs validation perplexity (faded: pruned / failed)",
                      xaxis={"title": label, "type": "log"},
                      yaxis={"title": "validation perplexity", "range": data.get("y_range")},
                      template="plotly_white", legend_title="cell family")
    return fig


# ---------------------------------------------------------------- hypervolume
def default_reference(records: Iterable[TrialRecord]) -> tuple[float, float]:
    """A reference point when the search's own is unknown: 10x the largest params, 2x the worst finished ppl."""
    done = finished(records)
    if not done:
        return 1.0, 1.0
    return 10.0 * max(r.size_value for r in done), 2.0 * max(r.valid_ppl for r in done)


def hypervolume_data(records: Iterable[TrialRecord] = (), *, history: Sequence[dict] | None = None,
                     reference: tuple[float, float] | None = None) -> dict[str, Any]:
    """Hypervolume after each finished trial, against the count of finished trials and wall time.

    ``history`` (as logged to MLflow: ``{"finished", "hypervolume", "wall_s"}`` dicts) is used as
    it is; otherwise the curve is recomputed from ``records`` in the order trials ended, with
    ``reference`` = (ref_params, ref_ppl) or ``default_reference``. Returns ``{"finished",
    "hypervolume", "wall_s", "reference"}``.
    """
    if history is not None:
        rows = sorted(history, key=lambda h: h["finished"])
        return {"finished": [int(h["finished"]) for h in rows], "hypervolume": [float(h["hypervolume"]) for h in rows],
                "wall_s": [float(h.get("wall_s", math.nan)) for h in rows], "reference": reference}
    records = list(records)
    ref = reference or default_reference(records)
    done = sorted(finished(records), key=lambda r: (r.ended_at if r.ended_at is not None else math.inf, r.number))
    starts = [r.started_at for r in records if r.started_at is not None]
    t0 = min(starts) if starts else None
    hv = [log_hypervolume(done[:k], ref[0], ref[1]) for k in range(1, len(done) + 1)]
    wall = [(r.ended_at - t0) if (r.ended_at is not None and t0 is not None) else math.nan for r in done]
    return {"finished": list(range(1, len(done) + 1)), "hypervolume": hv, "wall_s": wall, "reference": ref}


def draw_hypervolume(data: dict[str, Any]) -> go.Figure:
    """Two panels: hypervolume against finished trials, and against wall time."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("against finished trials", "against wall time"))
    fig.add_trace(go.Scatter(x=data["finished"], y=data["hypervolume"], mode="lines+markers",
                             name="hypervolume", line={"shape": "hv"}), row=1, col=1)
    timed = [(t / 60.0, h) for t, h in zip(data["wall_s"], data["hypervolume"]) if _finite(t)]
    fig.add_trace(go.Scatter(x=[t for t, _ in timed], y=[h for _, h in timed], mode="lines+markers",
                             name="hypervolume (time)", line={"shape": "hv"}, showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="finished trials", row=1, col=1)
    fig.update_xaxes(title_text="wall time (min)", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume (log10 params × log ppl)", row=1, col=1)
    fig.update_layout(title="Hypervolume of the front", template="plotly_white", showlegend=False)
    return fig


# ---------------------------------------------------------------- learning curves
def learning_curve_data(records: Iterable[TrialRecord]) -> dict[str, Any]:
    """Validation perplexity per epoch for every trial, and where each pruned trial stopped.

    Returns ``{"curves": [{"trial", "family", "status", "epoch", "valid_ppl"}], "stops": [{"trial",
    "family", "epoch", "valid_ppl"}]}``; a stop is a pruned trial's last recorded epoch.
    """
    curves, stops = [], []
    for r in sorted(records, key=lambda r: r.number):
        points = [(int(h.get("epoch", i)), float(h["valid_ppl"])) for i, h in enumerate(r.history)
                  if _finite(h.get("valid_ppl"))]
        if not points:
            continue
        curves.append({"trial": r.number, "family": r.family, "status": r.status,
                       "epoch": [e for e, _ in points], "valid_ppl": [v for _, v in points]})
        if r.status == "pruned":
            stops.append({"trial": r.number, "family": r.family, "epoch": points[-1][0], "valid_ppl": points[-1][1]})
    return {"curves": curves, "stops": stops}


def draw_learning_curves(data: dict[str, Any]) -> go.Figure:
    """One line per trial coloured by family (pruned ones faint), an x where each pruned trial stopped."""
    fig = go.Figure()
    shown: set[str] = set()
    for c in data["curves"]:
        fig.add_trace(go.Scatter(
            x=c["epoch"], y=c["valid_ppl"], mode="lines", legendgroup=c["family"], name=c["family"],
            showlegend=c["family"] not in shown, opacity=0.35 if c["status"] != "finished" else 0.9,
            line={"color": family_color(c["family"]), "width": 1.5},
            hovertemplate=f"trial {c['trial']} ({c['status']})<br>epoch %{{x}}<br>valid ppl %{{y:.3f}}<extra></extra>",
        ))
        shown.add(c["family"])
    if data["stops"]:
        fig.add_trace(go.Scatter(
            x=[s["epoch"] for s in data["stops"]], y=[s["valid_ppl"] for s in data["stops"]], mode="markers",
            name="pruned here", marker={"symbol": "x", "size": 9, "color": "black"},
            text=[f"trial {s['trial']} pruned after epoch {s['epoch']}" for s in data["stops"]],
            hovertemplate="%{text}<extra></extra>",
        ))
    fig.update_layout(title="Learning curves (validation perplexity)", xaxis_title="epoch",
                      yaxis={"title": "validation perplexity", "type": "log"}, template="plotly_white")
    return fig


# ---------------------------------------------------------------- parallel coordinates
def parallel_coordinates_data(records: Iterable[TrialRecord]) -> dict[str, Any]:
    """The searched arguments of finished trials (all trials with a perplexity if none finished).

    Returns ``{"trials", "color" (valid ppl), "dimensions": [{"label", "kind", "values",
    "categories"}]}``: a ``numeric`` dimension has numbers (None where a trial lacks the
    argument), a ``categorical`` one has indices into ``categories`` (None where missing). The last
    dimension is log10 of the parameter count.
    """
    records = list(records)
    rows = finished(records) or [r for r in records if _finite(r.valid_ppl)]
    rows = sorted(rows, key=lambda r: r.number)
    keys = sorted({k for r in rows for k in r.sampled}, key=lambda k: (k != "model.cell", k))
    dims = []
    for key in keys:
        values = [r.sampled.get(key) for r in rows]
        present = [v for v in values if v is not None]
        if present and all(_finite(v) for v in present):
            dims.append({"label": key, "kind": "numeric", "values": [float(v) if v is not None else None for v in values],
                         "categories": []})
        else:
            categories = sorted({str(v) for v in present})
            dims.append({"label": key, "kind": "categorical", "categories": categories,
                         "values": [categories.index(str(v)) if v is not None else None for v in values]})
    size = rows[0].size if rows else "total"
    dims.append({"label": "log10 params" if size == "total" else f"log10 {SIZE_LABELS[size]}", "kind": "numeric",
                 "categories": [], "values": [math.log10(r.size_value) if r.size_value > 0 else None for r in rows]})
    return {"trials": [r.number for r in rows], "color": [float(r.valid_ppl) for r in rows], "dimensions": dims}


def _parcoords_dimension(dim: dict[str, Any]) -> dict[str, Any]:
    values = dim["values"]
    if dim["kind"] == "categorical":
        ticks, text = list(range(len(dim["categories"]))), list(dim["categories"])
        if any(v is None for v in values):
            ticks, text = [-1] + ticks, ["n/a"] + text
        return {"label": dim["label"], "values": [-1 if v is None else v for v in values],
                "tickvals": ticks, "ticktext": text, "range": [min(ticks, default=0), max(ticks, default=1)]}
    present = [v for v in values if v is not None]
    if len(present) == len(values):
        return {"label": dim["label"], "values": values}
    lo, hi = (min(present), max(present)) if present else (0.0, 1.0)
    span = (hi - lo) or 1.0
    missing = lo - 0.2 * span  # a row below the data for trials without this argument
    ticks = [lo + span * i / 4 for i in range(5)]
    return {"label": dim["label"], "values": [missing if v is None else v for v in values],
            "tickvals": [missing] + ticks, "ticktext": ["n/a"] + [f"{t:.3g}" for t in ticks],
            "range": [missing, hi if hi > lo else lo + span]}


def draw_parallel_coordinates(data: dict[str, Any]) -> go.Figure:
    """Parallel coordinates of the searched arguments, lines coloured by validation perplexity."""
    fig = go.Figure(go.Parcoords(
        line={"color": data["color"] or [0.0], "colorscale": "Viridis", "reversescale": True, "showscale": True,
              "colorbar": {"title": {"text": "valid ppl"}}},
        dimensions=[_parcoords_dimension(d) for d in data["dimensions"]] if data["trials"] else [],
    ))
    fig.update_layout(title="Searched arguments (colour: validation perplexity)", template="plotly_white")
    return fig


# ---------------------------------------------------------------- per-family budgets
def default_budgets(records: Iterable[TrialRecord]) -> list[float]:
    """1x and 3x powers of ten from the smallest to just past the largest finished parameter count."""
    sizes = [r.size_value for r in finished(records) if r.size_value > 0]
    if not sizes:
        return []
    lo, hi = math.floor(math.log10(min(sizes))), math.ceil(math.log10(max(sizes)))
    budgets = [m * 10.0 ** e for e in range(lo, hi + 1) for m in (1, 3)]
    return [b for b in budgets if min(sizes) <= b <= 3 * max(sizes)] or [float(max(sizes))]


def family_budget_table(records: Iterable[TrialRecord], budgets: Sequence[float] | None = None) -> dict[str, Any]:
    """Best finished validation perplexity of each family within each budget of the size objective
    (``size``: parameters by default, or recurrent parameters or FLOPs).

    Returns ``{"budgets", "families", "best", "trial"}`` where ``best[i][j]`` (and the trial that
    achieved it, ``trial[i][j]``) is for ``families[i]`` with at most ``budgets[j]`` parameters,
    None where that family has no finished trial that small.
    """
    records = list(records)
    budgets = [float(b) for b in (default_budgets(records) if budgets is None else budgets)]
    for b in budgets:
        if not b > 0:
            raise ValueError(f"budgets must be positive parameter counts, got {b!r}")
    done = finished(records)
    families = sorted({r.family for r in records})
    best, trial = [], []
    for family in families:
        mine = [r for r in done if r.family == family]
        row_best, row_trial = [], []
        for budget in budgets:
            fits = [r for r in mine if r.size_value <= budget]
            winner = min(fits, key=lambda r: (r.valid_ppl, r.size_value)) if fits else None
            row_best.append(float(winner.valid_ppl) if winner else None)
            row_trial.append(winner.number if winner else None)
        best.append(row_best)
        trial.append(row_trial)
    return {"budgets": budgets, "families": families, "best": best, "trial": trial,
            "size": records[0].size if records else "total"}


def draw_family_table(data: dict[str, Any]) -> go.Figure:
    """The budget table as a plotly table: one row per family, one column per budget."""
    unit = {"total": "params", "recurrent": "recurrent params", "flops": "FLOPs"}[data.get("size", "total")]
    header = ["family"] + [f"≤ {human_count(b)} {unit}" for b in data["budgets"]]
    columns = [data["families"]]
    for j in range(len(data["budgets"])):
        columns.append([f"{row[j]:.2f} (#{t[j]})" if row[j] is not None else "—"
                        for row, t in zip(data["best"], data["trial"])])
    fig = go.Figure(go.Table(header={"values": header, "align": "left", "fill_color": "#e8e8e8"},
                             cells={"values": columns, "align": "left"}))
    fig.update_layout(title=f"Best validation perplexity per family within each {SIZE_LABELS[data.get('size', 'total')]} budget"
                      if data.get("size", "total") != "total" else
                      "Best validation perplexity per family within each parameter budget",
                      template="plotly_white", margin={"t": 60, "b": 20},
                      # the default margins alone are taller than a short table: size it to its rows
                      height=140 + 30 * (1 + max(1, len(data["families"]))))
    return fig
