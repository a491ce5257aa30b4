"""The importers of the public benchmark formats, on small files written in those formats."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.datasets.formats import DataFormat, ImportOptions
from shared.datasets.pipeline import content_hash, prepare
from shared.datasets.report import ImportProblem
from shared.datasets.splits import SplitSpec, assign
from shared.models.enums import DatasetKind

SPEC = SplitSpec()


def test_homedepot_gives_catalog_and_judgments(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    rows = [
        "id,product_uid,product_title,search_term,relevance",
        "2,100001,Simpson Strong-Tie 12-Gauge Angle,angle bracket,3",
        "3,100001,Simpson Strong-Tie 12-Gauge Angle,l bracket,2.5",
        '9,100002,"BEHR Premium Textured DeckOver 1-gal., Tugboat",deck over,2.33',
        "16,100005,Delta Vero Shower Faucet 360\u00b0 Chrome,rain shower head,1",
    ]
    path.write_bytes(("\n".join(rows) + "\n").encode("iso-8859-1"))
    (tmp_path / "product_descriptions.csv").write_text(
        "product_uid,product_description\n100001,Angle bracket for wood\n100005,Shower trim kit\n"
    )
    prepared = prepare(sorted(tmp_path.iterdir()), ImportOptions(DataFormat.homedepot), SPEC)
    assert prepared.kind == DatasetKind.relevance and prepared.encoding == "iso-8859-1"
    catalog = prepared.tables["catalog"].to_pylist()
    assert [(p["product_id"], p["description"]) for p in catalog] == [
        ("100001", "Angle bracket for wood"),
        ("100002", None),
        ("100005", "Shower trim kit"),
    ]
    assert catalog[2]["title"] == "Delta Vero Shower Faucet 360\u00b0 Chrome"
    judgments = prepared.tables["relevance"]
    assert judgments["grade"].to_pylist() == [3.0, 2.5, 2.33, 1.0]
    assert prepared.stats["queries"] == 4 and prepared.stats["products"] == 3


def test_homedepot_bad_grade_names_its_row(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        "id,product_uid,product_title,search_term,relevance\n1,1,A,a,3\n2,2,B,b,great\n3,3,C,c,2\n"
    )
    with pytest.raises(ImportProblem) as info:
        prepare([path], ImportOptions(DataFormat.homedepot), SPEC)
    assert [(e.row, e.column) for e in info.value.errors] == [(2, "grade")]


def test_esci_maps_labels_and_filters_the_locale(tmp_path: Path) -> None:
    pq.write_table(
        pa.table(
            {
                "example_id": [1, 2, 3, 4],
                "query": ["drill", "drill", "taladro", "hose"],
                "query_id": [1, 1, 2, 3],
                "product_id": ["B1", "B2", "B9", "B3"],
                "product_locale": ["us", "us", "es", "us"],
                "esci_label": ["E", "I", "E", "S"],
                "small_version": [1, 1, 1, 1],
                "large_version": [1, 1, 1, 1],
                "split": ["train", "train", "train", "test"],
            }
        ),
        tmp_path / "shopping_queries_dataset_examples.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "product_id": ["B1", "B2", "B3", "B9"],
                "product_title": ["Cordless drill", "Drill bits", "Garden hose", "Taladro"],
                "product_description": ["18V", None, "50 ft", None],
                "product_bullet_point": [None, None, None, None],
                "product_brand": ["Makita", "Bosch", None, None],
                "product_color": ["blue", None, "green", None],
                "product_locale": ["us", "us", "us", "es"],
            }
        ),
        tmp_path / "shopping_queries_dataset_products.parquet",
    )
    prepared = prepare(sorted(tmp_path.iterdir()), ImportOptions(DataFormat.esci), SPEC)
    relevance = prepared.tables["relevance"].to_pylist()
    assert [(r["query"], r["product_id"], r["grade"]) for r in relevance] == [
        ("drill", "B1", 3.0),
        ("drill", "B2", 0.0),
        ("hose", "B3", 2.0),
    ]
    catalog = prepared.tables["catalog"]
    assert catalog["product_id"].to_pylist() == ["B1", "B2", "B3"]
    assert json.loads(catalog["attributes"][0].as_py()) == {"color": "blue"}


def test_wands_joins_queries_and_parses_features(tmp_path: Path) -> None:
    (tmp_path / "product.csv").write_text(
        "product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description\tproduct_features\n"
        "0\tsolid wood platform bed\tBeds\tFurniture / Bedroom / Beds\tA bed\tcolor:brown|material:wood\n"
        "1\tall-clad pan\tPans\tKitchen / Cookware\t\t\n"
    )
    (tmp_path / "query.csv").write_text(
        "query_id\tquery\tquery_class\n0\twood bed\tBeds\n1\tfrying pan\tPans\n"
    )
    (tmp_path / "label.csv").write_text(
        "id\tquery_id\tproduct_id\tlabel\n0\t0\t0\tExact\n1\t0\t1\tIrrelevant\n2\t1\t1\tPartial\n"
    )
    prepared = prepare(sorted(tmp_path.iterdir()), ImportOptions(DataFormat.wands), SPEC)
    rows = prepared.tables["relevance"].to_pylist()
    assert [(r["query"], r["product_id"], r["grade"]) for r in rows] == [
        ("wood bed", "0", 2.0),
        ("wood bed", "1", 0.0),
        ("frying pan", "1", 1.0),
    ]
    bed = prepared.tables["catalog"].to_pylist()[0]
    assert bed["category"] == "Furniture / Bedroom / Beds"
    assert json.loads(bed["attributes"]) == {"color": "brown", "material": "wood"}


def test_wands_unknown_label_is_a_row_error(tmp_path: Path) -> None:
    (tmp_path / "product.csv").write_text("product_id\tproduct_name\n0\tbed\n")
    (tmp_path / "query.csv").write_text("query_id\tquery\n0\tbed\n")
    (tmp_path / "label.csv").write_text("id\tquery_id\tproduct_id\tlabel\n0\t0\t0\tMaybe\n")
    with pytest.raises(ImportProblem) as info:
        prepare(sorted(tmp_path.iterdir()), ImportOptions(DataFormat.wands), SPEC)
    assert [(e.file, e.row, e.column, e.value) for e in info.value.errors] == [
        ("label.csv", 1, "grade", "Maybe")
    ]


def test_unisrec_maps_indices_to_ids(tmp_path: Path) -> None:
    (tmp_path / "Tiny.text").write_text(
        "item_id:token\ttext:token_seq\nA1\tSanding roll. Abrasives. 3M.\nA2\tGloves.\nA3\tTape.\n"
    )
    (tmp_path / "Tiny.item2index").write_text("A1\t0\nA2\t1\nA3\t2\n")
    (tmp_path / "Tiny.user2index").write_text("U-x\t0\nU-y\t1\n")
    (tmp_path / "Tiny.train.inter").write_text(
        "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0\t1\n1\t2 0\t1\n"
    )
    (tmp_path / "Tiny.valid.inter").write_text(
        "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1\t2\n"
    )
    prepared = prepare(sorted(tmp_path.iterdir()), ImportOptions(DataFormat.unisrec), SPEC)
    assert prepared.kind == DatasetKind.sequences
    rows = prepared.tables["sequences"].to_pylist()
    assert [(r["user_id"], r["history"], r["next_item"]) for r in rows] == [
        ("U-x", ["A1"], "A2"),
        ("U-y", ["A3", "A1"], "A2"),
        ("U-x", ["A1", "A2"], "A3"),
    ]
    assert prepared.stats["users"] == 2 and prepared.stats["products"] == 3


def test_unisrec_unknown_item_is_reported(tmp_path: Path) -> None:
    (tmp_path / "T.text").write_text("item_id:token\ttext:token_seq\nA1\tx\n")
    (tmp_path / "T.train.inter").write_text(
        "user_id:token\titem_id_list:token_seq\titem_id:token\n0\tA1\tZZ\n"
    )
    with pytest.raises(ImportProblem) as info:
        prepare(sorted(tmp_path.iterdir()), ImportOptions(DataFormat.unisrec), SPEC)
    assert [(e.row, e.column, e.value) for e in info.value.errors] == [(1, "next_item", "ZZ")]


def test_public_format_missing_a_file(tmp_path: Path) -> None:
    (tmp_path / "product.csv").write_text("product_id\tproduct_name\n0\tbed\n")
    with pytest.raises(ImportProblem, match=r"needs query\.csv"):
        prepare([tmp_path / "product.csv"], ImportOptions(DataFormat.wands), SPEC)


def test_split_assignment_is_stable_when_groups_are_added() -> None:
    groups = pa.array([f"query {i}" for i in range(2000)])
    small = assign(groups.slice(0, 1000), SPEC).to_pylist()
    large = assign(groups, SPEC).to_pylist()
    assert large[:1000] == small
    shares = {name: large.count(name) / len(large) for name in ("train", "valid", "test")}
    assert 0.75 < shares["train"] < 0.85 and 0.07 < shares["valid"] < 0.13 and 0.07 < shares["test"] < 0.13


def test_content_hash_ignores_file_order_but_not_options() -> None:
    options = ImportOptions(DataFormat.csv, DatasetKind.catalog)
    assert content_hash(["a", "b"], options, SPEC) == content_hash(["b", "a"], options, SPEC)
    assert content_hash(["a"], options, SPEC) != content_hash(["a"], options, SplitSpec(seed=1))
    assert content_hash(["a"], options, SPEC) != content_hash(
        ["a"], ImportOptions(DataFormat.csv, DatasetKind.catalog, encoding="utf-8"), SPEC
    )
