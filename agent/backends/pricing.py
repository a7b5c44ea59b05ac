"""Token prices, so benchmark tables can report dollars per image next to accuracy.

USD per million tokens (input, output), OpenAI list prices for standard (non-batch) calls as
published in 2025. Matching is by longest prefix, so dated snapshots ("gpt-4o-2024-08-06")
price as their family. A model not in the table prices as ``DEFAULT_OPENAI_PRICE`` (gpt-4o's
price: a mid-range figure that neither hides nor inflates a run's cost by an order of
magnitude) and a warning is logged once. Self-hosted backends (openai-compatible, llava) cost 0
unless a price is passed explicitly, because their cost is hardware, not tokens.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

Price = tuple[float, float]  # USD per 1M (prompt, completion) tokens

OPENAI_PRICES: dict[str, Price] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4-vision-preview": (10.00, 30.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
}
DEFAULT_OPENAI_PRICE: Price = OPENAI_PRICES["gpt-4o"]
FREE: Price = (0.0, 0.0)

_warned: set[str] = set()


def openai_price(model: str) -> Price:
    """Longest-prefix match in ``OPENAI_PRICES``; unknown models get the documented default."""
    matches = [name for name in OPENAI_PRICES if model.startswith(name)]
    if matches:
        return OPENAI_PRICES[max(matches, key=len)]
    if model not in _warned:
        _warned.add(model)
        log.warning("no price for model %r; costing it at the default %s USD/1M tokens", model, DEFAULT_OPENAI_PRICE)
    return DEFAULT_OPENAI_PRICE


def cost_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000
