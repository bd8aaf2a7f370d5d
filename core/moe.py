"""Mixture of experts, read from the outside: where a model's router sends tokens, with numpy only.

Holds `route()` (an exported model's routing of a text, from its attention graph), `expert_shares` (each
expert's share of the assignments, per layer), `tokens_by_expert` (per layer and expert, the tokens it
receives most, and how much of each token's occurrences that is), and the comparison report that
bench/moe_vs_dense.py writes beside an exported mixture (`REPORT_FILE`, read by `read_report`).

Deliberately not here: the router and the balance loss themselves (`core.model`: MoE, balance_loss), their
settings (`core.config`: n_experts, moe_top_k, ...), training, and drawing (the Inside page).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.checks import PlaygroundError
from core.runtime import Model

REPORT_FILE = "moe_vs_dense.json"      # in an exported mixture's directory: its training beside a dense model's


class NotAMixture(PlaygroundError):
    """The model has one dense MLP per block: there is no routing to show."""


@dataclass
class TokenRouting:
    ids: list[int]                       # the tokens routed
    experts: np.ndarray                  # (T, L, k) the chosen experts per token and layer, most probable first
    weights: np.ndarray                  # (T, L, k) their weights in the sum of the experts' outputs
    probs: np.ndarray                    # (T, L, E) the router's probabilities over every expert
    n_experts: int


def route(model: Model, ids: list[int]) -> TokenRouting:
    """Where each of `ids` goes in each layer (one pass of the exported attention graph)."""
    if not model.config.n_experts:
        raise NotAMixture("this model has one dense MLP per block (n_experts 0): pick a mixture-of-experts "
                          "model to see its routing")
    maps = model.attention([ids])
    if maps.routing is None:
        raise NotAMixture("this export's attention graph does not return its routing; export it again")
    r = maps.routing
    return TokenRouting(list(ids), r["experts"][0], r["expert_weights"][0], r["router_probs"][0],
                        model.config.n_experts)


def expert_shares(experts: np.ndarray, n_experts: int) -> np.ndarray:
    """(L, E): each expert's share of a layer's token assignments (every one of a token's k counts), from
    experts (..., L, k); each row sums to 1, and 1/E everywhere is perfect balance."""
    e = np.asarray(experts).reshape(-1, *np.shape(experts)[-2:])          # (N, L, k)
    counts = np.stack([np.bincount(e[:, layer].ravel(), minlength=n_experts) for layer in range(e.shape[1])])
    return counts / max(1, e.shape[0] * e.shape[2])


def tokens_by_expert(ids: np.ndarray, experts: np.ndarray, n_experts: int, top: int = 8,
                     min_count: int = 5) -> list[list[list[tuple[int, int, float]]]]:
    """Per layer, per expert: the `top` tokens sent to it most often as their first choice, as (token id,
    count, share of that token's occurrences that went there), over tokens seen at least `min_count`
    times. ids (...) and experts (..., L, k) of the same leading shape."""
    ids = np.asarray(ids).ravel()
    first = np.asarray(experts)[..., 0].reshape(len(ids), -1)             # (N, L)
    seen = np.bincount(ids)
    out = []
    for layer in range(first.shape[1]):
        per_expert = []
        for e in range(n_experts):
            counts = np.bincount(ids[first[:, layer] == e], minlength=len(seen))
            order = [t for t in np.argsort(-counts, kind="stable") if counts[t] and seen[t] >= min_count][:top]
            per_expert.append([(int(t), int(counts[t]), float(counts[t] / seen[t])) for t in order])
        out.append(per_expert)
    return out


def read_report(model_dir: str | Path) -> dict | None:
    """The comparison written beside an exported mixture (bench/moe_vs_dense.py --save), or None."""
    path = Path(model_dir) / REPORT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
