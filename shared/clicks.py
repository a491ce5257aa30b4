"""Click models: how attractive a product is for a query, from logs of what was shown where and clicked.

Raw click-through confounds attractiveness with position: shoppers click what is on top because it is on
top. The position-based model (PBM) separates the two. A shopper examines rank ``k`` with probability
``theta[k]`` and clicks an examined product with probability ``alpha[q, d]``, so that

    P(click | q, d, k) = theta[k] * alpha[q, d].

Both are fit by expectation-maximisation (Chuklin, Markov and de Rijke, *Click Models for Web Search*,
2015, section 4.2): an impression without a click was either not examined or not attractive, and the E
step splits it between the two by their current odds. Only the product of the two is identified, so
each step scales ``theta`` to 1 at the first rank (and ``alpha`` by the same factor, which keeps every
click probability as it was)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_EPS = 1e-9


@dataclass(frozen=True)
class PositionBasedModel:
    theta: FloatArray  # examination probability per rank (0: the first), theta[0] == 1
    alpha: FloatArray  # attractiveness per (query, product) pair, in the pairs' index order
    impressions: IntArray  # impressions of each pair
    clicks: IntArray  # clicks on each pair
    iterations: int
    converged: bool


def fit_pbm(
    pairs: IntArray,
    ranks: IntArray,
    clicked: npt.NDArray[np.bool_],
    *,
    n_pairs: int | None = None,
    n_ranks: int | None = None,
    max_iterations: int = 5000,
    tolerance: float = 1e-6,
    prior: tuple[float, float] = (1.0, 2.0),
) -> PositionBasedModel:
    """Fit the PBM to impressions: ``pairs[i]`` (a (query, product) index), ``ranks[i]`` (0-based) and
    ``clicked[i]`` for each product shown. ``prior`` (clicks, impressions) is added to each pair's counts
    in the M step, a Beta prior that keeps a pair seen once from an attractiveness of exactly 0 or 1.
    Stops once no parameter moves by more than ``tolerance``."""
    pairs = np.asarray(pairs, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.int64)
    clicks = np.asarray(clicked, dtype=bool)
    if not (pairs.shape == ranks.shape == clicks.shape) or pairs.ndim != 1:
        raise ValueError("pairs, ranks and clicked must be 1-d arrays of one length")
    if len(pairs) and (pairs.min() < 0 or ranks.min() < 0):
        raise ValueError("pair and rank indices must be >= 0")
    n_pairs = int(pairs.max()) + 1 if n_pairs is None and len(pairs) else n_pairs or 0
    n_ranks = int(ranks.max()) + 1 if n_ranks is None and len(ranks) else n_ranks or 0
    # every impression of a pair at a rank is alike: fit on (pair, rank) cells, not on rows
    cell, shown_in = np.unique(pairs * max(n_ranks, 1) + ranks, return_counts=True)
    cell_pair, cell_rank = cell // max(n_ranks, 1), cell % max(n_ranks, 1)
    clicked_in = np.bincount(
        np.searchsorted(cell, pairs * max(n_ranks, 1) + ranks),
        weights=clicks.astype(np.float64),
        minlength=len(cell),
    )
    missed_in = shown_in - clicked_in
    shown = np.bincount(cell_pair, weights=shown_in, minlength=n_pairs)
    at_rank = np.bincount(cell_rank, weights=shown_in, minlength=n_ranks)
    pair_clicks = np.bincount(cell_pair, weights=clicked_in, minlength=n_pairs)
    rank_clicks = np.bincount(cell_rank, weights=clicked_in, minlength=n_ranks)
    a_prior, n_prior = prior
    theta = np.full(n_ranks, 0.5)
    alpha = np.clip((pair_clicks + a_prior) / np.maximum(shown + n_prior, _EPS), _EPS, 1 - _EPS)
    converged = False
    iteration = 0
    for iteration in range(1, max_iterations + 1):  # noqa: B007 (the count is returned)
        t, a = theta[cell_rank], alpha[cell_pair]
        nothing = np.maximum(1.0 - t * a, _EPS)
        # an impression without a click: attractive but not examined, or examined but not attractive
        attractive_unseen = missed_in * (1.0 - t) * a / nothing
        examined_unattractive = missed_in * t * (1.0 - a) / nothing
        new_alpha = (
            pair_clicks + np.bincount(cell_pair, weights=attractive_unseen, minlength=n_pairs) + a_prior
        ) / (np.maximum(shown + n_prior, _EPS))
        new_theta = (
            rank_clicks + np.bincount(cell_rank, weights=examined_unattractive, minlength=n_ranks)
        ) / (np.maximum(at_rank, 1))
        new_theta = np.clip(new_theta, _EPS, 1.0)
        if n_ranks:  # only theta * alpha is identified: the first rank is examined (theta[0] = 1)
            new_theta, new_alpha = new_theta / new_theta[0], new_alpha * new_theta[0]
        new_alpha = np.clip(new_alpha, _EPS, 1 - _EPS)
        moved = max(
            float(np.abs(new_alpha - alpha).max(initial=0.0)),
            float(np.abs(new_theta - theta).max(initial=0.0)),
        )
        alpha, theta = new_alpha, new_theta
        if moved < tolerance:
            converged = True
            break
    return PositionBasedModel(
        theta=theta,
        alpha=alpha,
        impressions=shown.astype(np.int64),
        clicks=pair_clicks.astype(np.int64),
        iterations=iteration,
        converged=converged,
    )


def click_through(pairs: IntArray, clicked: npt.NDArray[np.bool_], n_pairs: int | None = None) -> FloatArray:
    """Raw click-through rate per pair (what position bias distorts): clicks / impressions."""
    pairs = np.asarray(pairs, dtype=np.int64)
    n = int(pairs.max()) + 1 if n_pairs is None and len(pairs) else n_pairs or 0
    shown = np.bincount(pairs, minlength=n)
    hits = np.bincount(pairs, weights=np.asarray(clicked, dtype=np.float64), minlength=n)
    rate: FloatArray = np.divide(hits, shown, out=np.zeros(n), where=shown > 0)
    return rate
