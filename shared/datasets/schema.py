"""The canonical columns of each dataset kind, as stored in Parquet and read by every service."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from shared.models.enums import DatasetKind

EVENTS = ("view", "click", "cart", "purchase")
# How a boolean column may be written (case and surrounding spaces are ignored).
TRUE_WORDS = ("true", "t", "yes", "y", "1", "in stock", "in_stock")
FALSE_WORDS = ("false", "f", "no", "n", "0", "out of stock", "out_of_stock")
BOOLEAN_DOC = f"{'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, any case"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    required: bool
    doc: str
    aliases: tuple[str, ...] = ()  # other names a file may give the column (renamed on import)


_STR = pa.string()

COLUMNS: dict[DatasetKind, tuple[Column, ...]] = {
    DatasetKind.catalog: (
        Column("product_id", _STR, True, "unique product id"),
        Column("title", _STR, True, "product title"),
        Column("description", _STR, False, "free text"),
        Column("category", _STR, False, "category path, e.g. 'Tools > Saws'"),
        Column("brand", _STR, False, "brand name"),
        Column("price", pa.float64(), False, "non-negative number"),
        Column("in_stock", pa.bool_(), False, BOOLEAN_DOC),
        Column("attributes", _STR, False, "a JSON object of extra attributes"),
    ),
    DatasetKind.relevance: (
        Column("query", _STR, True, "the search query"),
        Column("product_id", _STR, True, "a product of the catalog"),
        Column("grade", pa.float64(), True, "graded relevance, a non-negative number (higher is better)"),
    ),
    DatasetKind.interactions: (
        Column("user_id", _STR, True, "user id"),
        Column("product_id", _STR, True, "a product of the catalog"),
        Column("event", _STR, True, "one of " + ", ".join(EVENTS), aliases=("type", "event_type")),
        Column("timestamp", pa.timestamp("us", tz="UTC"), True, "ISO 8601 or Unix seconds"),
    ),
    DatasetKind.sequences: (
        Column("user_id", _STR, True, "user id"),
        Column("history", pa.list_(_STR), True, "ordered product ids, oldest first (CSV: space-separated)"),
        Column("next_item", _STR, True, "the product that followed the history"),
    ),
    DatasetKind.labeled_text: (
        Column("text", _STR, True, "the text to classify"),
        Column("label", _STR, True, "its label"),
    ),
}

# The column whose values must never be split across train/valid/test (no leakage between splits).
SPLIT_GROUP: dict[DatasetKind, str] = {
    DatasetKind.relevance: "query",
    DatasetKind.interactions: "user_id",
    DatasetKind.sequences: "user_id",
    DatasetKind.labeled_text: "text",
}

SPLITS = ("train", "valid", "test")


def schema_for(kind: DatasetKind) -> pa.Schema:
    fields = [pa.field(c.name, c.type, nullable=not c.required) for c in COLUMNS[kind]]
    if kind in SPLIT_GROUP:
        fields.append(pa.field("split", _STR, nullable=False))
    return pa.schema(fields)
