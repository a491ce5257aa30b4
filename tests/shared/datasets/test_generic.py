"""The generic CSV importer on the files shops really export: semicolons, quotes left open, booleans
written in words, and the event column under the name /events gives it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.datasets.formats import DataFormat, ImportOptions
from shared.datasets.pipeline import prepare
from shared.datasets.report import ImportProblem
from shared.datasets.schema import COLUMNS, FALSE_WORDS, TRUE_WORDS
from shared.datasets.splits import SplitSpec
from shared.models.enums import DatasetKind

SPEC = SplitSpec()


def _prepare(path: Path, kind: DatasetKind) -> object:
    return prepare([path], ImportOptions(DataFormat.csv, kind), SPEC)


def test_a_semicolon_separated_csv_is_read_as_such_and_the_version_says_so(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("product_id;title;price\np1;Cordless drill, 18V;99.5\np2;Hand saw;12\n")
    prepared = prepare([path], ImportOptions(DataFormat.csv, DatasetKind.catalog), SPEC)
    rows = prepared.tables["catalog"].to_pylist()
    assert [(r["product_id"], r["title"], r["price"]) for r in rows] == [
        ("p1", "Cordless drill, 18V", 99.5),
        ("p2", "Hand saw", 12.0),
    ]
    assert prepared.warnings == ["catalog.csv was read as semicolon-separated: its header has no commas"]


@pytest.mark.parametrize(
    "text",
    [
        'product_id,title\np1,Drill\np2,"Saw, 24in\np3,Hammer\n',  # the rest of the file reads as one value
        'product_id,title,brand\np1,Drill,Bosch\np2,"Saw, 24in,Stanley\np3,Hammer,Estwing\n',  # or does not
    ],
)
def test_a_quote_that_is_never_closed_is_refused_with_its_row(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(text)
    with pytest.raises(ImportProblem) as raised:
        _prepare(path, DatasetKind.catalog)
    assert raised.value.message == "catalog.csv: row 2 opens a quote that is never closed"
    [error] = raised.value.errors
    assert (error.file, error.row) == ("catalog.csv", 2)
    assert "write a quote inside a value as two" in error.reason


def test_in_stock_takes_every_documented_word_and_names_them_when_refused(tmp_path: Path) -> None:
    words = [*TRUE_WORDS, *FALSE_WORDS]
    path = tmp_path / "catalog.csv"
    lines = [f"p{i},Item {i},{word.upper() if i % 2 else word} " for i, word in enumerate(words)]
    path.write_text("product_id,title,in_stock\n" + "\n".join(lines) + "\n")
    prepared = prepare([path], ImportOptions(DataFormat.csv, DatasetKind.catalog), SPEC)
    stock = prepared.tables["catalog"]["in_stock"].to_pylist()
    assert stock == [True] * len(TRUE_WORDS) + [False] * len(FALSE_WORDS)
    doc = next(c.doc for c in COLUMNS[DatasetKind.catalog] if c.name == "in_stock")
    assert all(word in doc for word in words)

    path.write_text("product_id,title,in_stock\np1,Drill,available\n")
    with pytest.raises(ImportProblem) as raised:
        _prepare(path, DatasetKind.catalog)
    [error] = raised.value.errors
    assert (error.row, error.column, error.value) == (1, "in_stock", "available")
    assert error.reason == f"in_stock must be {doc}"


@pytest.mark.parametrize("name", ["event", "type", "event_type"])
def test_the_interactions_event_column_takes_the_name_events_uses(tmp_path: Path, name: str) -> None:
    catalog = tmp_path / "catalog.csv"
    path = tmp_path / "interactions.csv"
    path.write_text(
        f"user_id,product_id,{name},timestamp\nu1,p1,click,2026-01-02\nu1,p2,Purchase,1767312000\n"
    )
    prepared = _prepare(path, DatasetKind.interactions)
    assert not catalog.exists()
    rows = prepared.tables["interactions"].to_pylist()  # type: ignore[attr-defined]
    assert [(r["product_id"], r["event"]) for r in rows] == [("p1", "click"), ("p2", "purchase")]
