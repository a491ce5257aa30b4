"""The demo's generated shop: deterministic, importable, and with something to learn beyond words."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from services.cli.sample_shop import ATTRIBUTES, TYPES, generate, misspell
from shared.datasets.formats import DataFormat, ImportOptions
from shared.datasets.pipeline import prepare
from shared.datasets.splits import SplitSpec
from shared.models.enums import DatasetKind


def test_the_same_seed_gives_the_same_shop() -> None:
    first, again, other = generate(400, 200, seed=3), generate(400, 200, seed=3), generate(400, 200, seed=4)
    assert first.catalog_csv() == again.catalog_csv() and first.judgments_csv() == again.judgments_csv()
    assert first.judgments_csv() != other.judgments_csv()


def test_the_shop_imports_through_the_real_pipeline(tmp_path: Path) -> None:
    shop = generate(600, 300, seed=7)
    catalog, judgments = shop.write(tmp_path)
    products = prepare([catalog], ImportOptions(DataFormat.csv, DatasetKind.catalog), SplitSpec())
    assert products.tables["catalog"].num_rows == 600
    assert set(products.tables["catalog"].column_names) >= {
        "product_id",
        "title",
        "brand",
        "category",
        "price",
    }
    relevance = prepare(
        [judgments],
        ImportOptions(DataFormat.csv, DatasetKind.relevance),
        SplitSpec(),
        known_product_ids=products.tables["catalog"]["product_id"].combine_chunks(),
    )
    table = relevance.tables["relevance"]
    assert table.num_rows == 300 * (600 // len(TYPES) + 10) and len(pc.unique(table["query"])) == 300
    assert set(pc.unique(table["grade"]).to_pylist()) == {0, 1, 3}
    assert {"train", "valid", "test"} <= set(pc.unique(table["split"]).to_pylist())


def test_queries_use_other_words_than_the_titles() -> None:
    shop = generate(600, 300, seed=7)
    queries = {q for q, _, _ in shop.judgments}
    synonyms = {s for _, words, _ in TYPES.values() for s in words}
    said = {w for values in ATTRIBUTES.values() for words in values.values() for w in words}
    assert sum(any(w in q.split() for w in said) for q in queries) > 0.2 * len(queries)
    assert sum(any(s in q for s in synonyms) for q in queries) > 0.4 * len(queries)
    titles = " ".join(p.title.lower() for p in shop.products)
    slips = [
        q for q in queries if any(word not in titles and word not in " ".join(synonyms) for word in q.split())
    ]
    assert len(slips) > 0.1 * len(queries)  # misspelt words appear in no title
    kind_of = {p.product_id: p.kind for p in shop.products}
    for query in queries:
        best = [pid for q, pid, grade in shop.judgments if q == query and grade == 3]
        assert best, f"{query!r} has no fully relevant product"
        # every product of the query's type is judged, so no relevant product is left unjudged
        judged = {pid for q, pid, grade in shop.judgments if q == query and grade >= 1}
        assert judged == {pid for pid, kind in kind_of.items() if kind == kind_of[best[0]]}


def test_misspell_and_limits() -> None:
    import random

    rng = random.Random(1)
    assert misspell("hose", rng) != "hose" and misspell("wc", rng) == "wc"
    with pytest.raises(ValueError):
        generate(products=5)
