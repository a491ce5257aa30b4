"""Small data files the tests write themselves, and where the real data is (tests that need it skip
when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(
    os.environ.get("RECFORGE_REAL_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
HOMEDEPOT = REAL_DATA / "homedepot" / "relevance_dev.csv"
SCIENTIFIC = REAL_DATA / "amazon_scientific"

needs_homedepot = pytest.mark.skipif(
    not HOMEDEPOT.exists(), reason=f"Home Depot data not found at {HOMEDEPOT} (set RECFORGE_REAL_DATA)"
)
needs_scientific = pytest.mark.skipif(
    not (SCIENTIFIC / "Scientific.text").exists(),
    reason=f"Amazon Scientific data not found at {SCIENTIFIC} (set RECFORGE_REAL_DATA)",
)

CATALOG_CSV = (
    "product_id,title,description,category,brand,price,in_stock,attributes\n"
    'p1,Cordless Drill 18V,Compact drill,Tools > Drills,Makita,99.5,yes,"{""voltage"": ""18V""}"\n'
    "p2,Hammer 16 oz,Steel hammer,Tools > Hammers,Estwing,24,true,\n"
    "p3,Garden Hose 50 ft,,Garden,Flexzilla,45.99,no,\n"
    "p4,LED Bulb 60W,Soft white,Lighting,Philips,5,1,\n"
)


def relevance_csv(queries: int = 40, per_query: int = 4) -> str:
    lines = ["query,product_id,grade"]
    for q in range(queries):
        for p in range(per_query):
            lines.append(f"query {q},p{p + 1},{(q + p) % 4}")
    return "\n".join(lines) + "\n"


def interactions_csv(users: int = 30) -> str:
    events = ["view", "click", "cart", "purchase"]
    lines = ["user_id,product_id,event,timestamp"]
    for u in range(users):
        for i in range(3):
            lines.append(f"u{u},p{(u + i) % 4 + 1},{events[(u + i) % 4]},2026-01-{i + 1:02d}T10:00:00Z")
    return "\n".join(lines) + "\n"


def shop_data(products: int = 60, queries: int = 120) -> tuple[str, str]:
    """A catalog CSV and graded judgments CSV with something to learn: queries name a product's type."""
    kinds = ["drill", "hammer", "hose", "lamp", "saw", "paint", "ladder", "faucet", "tile", "fan"]
    brands = ["acme", "bolt", "crest", "delta", "ember", "forge"]
    catalog = ["product_id,title,brand"]
    for i in range(products):
        catalog.append(f"p{i},{brands[i % 6].title()} {kinds[i % 10]} model {i},{brands[i % 6].title()}")
    judgments = ["query,product_id,grade"]
    for q in range(queries):
        kind = kinds[q % 10]
        words = f"{kind} for home {q}"
        for i in range(q % 7, products, 13):
            grade = 3 if kinds[i % 10] == kind else 1
            judgments.append(f"{words},p{i},{grade}")
        judgments.append(f"{words},p{q % 10},3")
    return "\n".join(catalog) + "\n", "\n".join(dict.fromkeys(judgments)) + "\n"
