"""Importers: generic CSV/JSONL/Parquet of one kind, and the public benchmark formats.

Each importer reads its files with pyarrow and renames their columns to the canonical ones; the
validator does the rest. A public format may yield two tables: its catalog and its judgments or
sequences."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from shared.datasets.readers import read_delimited, read_jsonl, read_parquet, sniff_delimiter
from shared.datasets.report import ImportProblem
from shared.datasets.validate import SourceTable
from shared.models.enums import DatasetKind


class DataFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"
    homedepot = "homedepot"  # Kaggle Home Depot Product Search Relevance
    esci = "esci"  # Amazon Shopping Queries (ESCI)
    wands = "wands"  # Wayfair ANnotation DataSet
    unisrec = "unisrec"  # UniSRec / RecBole: .text + .inter


GENERIC = {DataFormat.csv, DataFormat.jsonl, DataFormat.parquet}

# The kind a public format's dataset is (each also brings a catalog).
FORMAT_KIND: dict[DataFormat, DatasetKind] = {
    DataFormat.homedepot: DatasetKind.relevance,
    DataFormat.esci: DatasetKind.relevance,
    DataFormat.wands: DatasetKind.relevance,
    DataFormat.unisrec: DatasetKind.sequences,
}

FORMAT_FILES: dict[DataFormat, str] = {
    DataFormat.csv: "one .csv or .tsv file with a header line",
    DataFormat.jsonl: "one .jsonl file, one JSON object per line",
    DataFormat.parquet: "one .parquet file",
    DataFormat.homedepot: "train.csv (id, product_uid, product_title, search_term, relevance); "
    "optionally product_descriptions.csv",
    DataFormat.esci: "shopping_queries_dataset_examples.parquet and "
    "shopping_queries_dataset_products.parquet",
    DataFormat.wands: "product.csv, query.csv and label.csv (tab-separated)",
    DataFormat.unisrec: "<name>.text and <name>.train.inter, optionally .valid.inter, .test.inter, "
    ".item2index and .user2index",
}

ESCI_GRADES = {"E": 3.0, "S": 2.0, "C": 1.0, "I": 0.0}
WANDS_GRADES = {"Exact": 2.0, "Partial": 1.0, "Irrelevant": 0.0}


@dataclass
class Parsed:
    kind: DatasetKind
    sources: list[SourceTable]
    encoding: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportOptions:
    format: DataFormat
    kind: DatasetKind | None = None
    encoding: str | None = None
    locale: str = "us"  # ESCI only


def resolve_kind(options: ImportOptions) -> DatasetKind:
    if options.format in FORMAT_KIND:
        implied = FORMAT_KIND[options.format]
        if options.kind is not None and options.kind != implied:
            raise ImportProblem(
                f"the {options.format.value} format is a {implied.value} dataset, not {options.kind.value}"
            )
        return implied
    if options.kind is None:
        kinds = ", ".join(k.value for k in DatasetKind)
        raise ImportProblem(
            f"say which kind of data the {options.format.value} file holds with --kind (the form's kind "
            f"field): {kinds}"
        )
    return options.kind


def guess_format(names: Sequence[str]) -> DataFormat:
    """The generic format of a single file, from its extension."""
    if len(names) != 1:
        raise ImportProblem("several files were given: name their format (homedepot, esci, wands or unisrec)")
    suffix = Path(names[0]).suffix.lower()
    if suffix in {".csv", ".tsv", ".tab"}:
        return DataFormat.csv
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return DataFormat.jsonl
    if suffix in {".parquet", ".pq"}:
        return DataFormat.parquet
    raise ImportProblem(f"cannot tell the format of {names[0]!r} from its name: give the format")


def parse(files: Sequence[Path], options: ImportOptions) -> Parsed:
    kind = resolve_kind(options)
    if not files:
        raise ImportProblem("no file was given")
    reader = _READERS[options.format]
    return reader(list(files), options, kind)


def _one(files: list[Path], options: ImportOptions) -> Path:
    if len(files) != 1:
        raise ImportProblem(f"the {options.format.value} format takes {FORMAT_FILES[options.format]}")
    return files[0]


def _pick(files: list[Path], options: ImportOptions, *matches: str, required: bool = True) -> Path | None:
    for path in files:
        name = path.name.lower()
        if any(name == m or name.endswith(m) for m in matches):
            return path
    if required:
        raise ImportProblem(
            f"the {options.format.value} format needs {' or '.join(matches)} "
            f"(it takes {FORMAT_FILES[options.format]}); got: {', '.join(p.name for p in files)}"
        )
    return None


def _generic(files: list[Path], options: ImportOptions, kind: DatasetKind) -> Parsed:
    path = _one(files, options)
    if options.format == DataFormat.parquet:
        table, encoding = read_parquet(path), None
    elif options.format == DataFormat.jsonl:
        table, encoding = read_jsonl(path), "utf-8"
    else:
        default = "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","
        delimiter, note = sniff_delimiter(path, options.encoding, default)
        table, encoding = read_delimited(path, encoding=options.encoding, delimiter=delimiter)
        if note:
            return Parsed(kind, [SourceTable(kind, table, path.name)], encoding, [note])
    return Parsed(kind, [SourceTable(kind, table, path.name)], encoding)


def _first_rows(keys: pa.ChunkedArray) -> pa.Array:
    """Index of the first row of each distinct key, in row order."""
    frame = pa.table({"k": keys, "i": pa.array(range(len(keys)), pa.int64())})
    firsts = frame.group_by("k", use_threads=False).aggregate([("i", "min")])["i_min"]
    return firsts.combine_chunks().sort()


def _homedepot(files: list[Path], options: ImportOptions, kind: DatasetKind) -> Parsed:
    descriptions = _pick(files, options, "product_descriptions.csv", required=False)
    judgments = _pick([p for p in files if p != descriptions], options, ".csv")
    assert judgments is not None
    # Kaggle ships the file in ISO-8859-1; a copy re-saved as UTF-8 is detected as such.
    table, encoding = read_delimited(judgments, encoding=options.encoding, legacy="iso-8859-1")
    needed = {"product_uid", "product_title", "search_term", "relevance"}
    if not needed <= set(table.column_names):
        raise ImportProblem(
            f"{judgments.name}: a Home Depot file has the columns id, product_uid, product_title, "
            f"search_term, relevance; found {', '.join(table.column_names)}"
        )
    rows = pa.array(range(1, table.num_rows + 1), pa.int64())
    relevance = pa.table(
        {"query": table["search_term"], "product_id": table["product_uid"], "grade": table["relevance"]}
    )
    uid = pc.utf8_trim_whitespace(table["product_uid"])
    first = _first_rows(uid)
    catalog = pa.table({"product_id": uid.take(first), "title": table["product_title"].take(first)})
    warnings = []
    distinct_titles = (
        pa.table({"k": uid, "t": table["product_title"]}).group_by("k").aggregate([("t", "count_distinct")])
    )
    conflicting = pc.sum(pc.greater(distinct_titles["t_count_distinct"], 1)).as_py() or 0
    if conflicting:
        warnings.append(f"{conflicting} products carry more than one title; the first one is kept")
    if descriptions is not None:
        desc, _ = read_delimited(descriptions, encoding=options.encoding, legacy="iso-8859-1")
        if {"product_uid", "product_description"} <= set(desc.column_names):
            known = pc.utf8_trim_whitespace(desc["product_uid"])
            lookup = pc.index_in(catalog["product_id"], value_set=known)
            catalog = catalog.append_column("description", desc["product_description"].take(lookup))
        else:
            warnings.append(f"{descriptions.name} has no product_uid/product_description columns; ignored")
    return Parsed(
        kind,
        [
            SourceTable(DatasetKind.catalog, catalog, judgments.name, rows.take(first)),
            SourceTable(DatasetKind.relevance, relevance, judgments.name, rows),
        ],
        encoding,
        warnings,
    )


def _labels(column: pa.ChunkedArray, grades: dict[str, float]) -> pa.ChunkedArray:
    """Map text labels to grades; an unknown label stays as text, which the validator rejects by row."""
    text = pc.utf8_trim_whitespace(column.cast(pa.string()))
    index = pc.index_in(text, value_set=pa.array(list(grades)))
    mapped = pc.take(pa.array(list(grades.values()), pa.float64()), index).cast(pa.string())
    return pc.coalesce(mapped, text)


def _esci(files: list[Path], options: ImportOptions, kind: DatasetKind) -> Parsed:
    examples_path = _pick(files, options, "examples.parquet")
    products_path = _pick(files, options, "products.parquet")
    assert examples_path is not None and products_path is not None
    examples = read_parquet(examples_path)
    products = read_parquet(products_path)
    for table, path, cols in (
        (examples, examples_path, {"query", "product_id", "esci_label", "product_locale"}),
        (products, products_path, {"product_id", "product_title", "product_locale"}),
    ):
        if not cols <= set(table.column_names):
            raise ImportProblem(f"{path.name}: an ESCI file needs the columns {', '.join(sorted(cols))}")
    ex_rows = pc.indices_nonzero(pc.equal(examples["product_locale"], options.locale))
    pr_rows = pc.indices_nonzero(pc.equal(products["product_locale"], options.locale))
    if len(ex_rows) == 0:
        locales = ", ".join(pc.unique(examples["product_locale"]).to_pylist()[:10])
        raise ImportProblem(f"no ESCI examples for locale {options.locale!r} (found: {locales})")
    examples = examples.take(ex_rows)
    products = products.take(pr_rows)
    grade = _labels(examples["esci_label"], ESCI_GRADES)
    relevance = pa.table({"query": examples["query"], "product_id": examples["product_id"], "grade": grade})

    def col(name: str) -> pa.ChunkedArray | pa.Array:
        if name in products.column_names:
            return products[name]
        return pa.nulls(products.num_rows, pa.string())

    catalog = pa.table(
        {
            "product_id": products["product_id"],
            "title": products["product_title"],
            "description": col("product_description"),
            "brand": col("product_brand"),
            "attributes": _json_objects(
                {"color": col("product_color"), "bullets": col("product_bullet_point")}
            ),
        }
    )
    return Parsed(
        kind,
        [
            SourceTable(DatasetKind.catalog, catalog, products_path.name, _one_based(pr_rows)),
            SourceTable(DatasetKind.relevance, relevance, examples_path.name, _one_based(ex_rows)),
        ],
        None,
    )


def _one_based(indices: pa.Array) -> pa.Array:
    return pc.add(indices, 1).cast(pa.int64())


def _json_objects(columns: dict[str, pa.ChunkedArray | pa.Array]) -> pa.Array:
    values = {name: column.to_pylist() for name, column in columns.items()}
    n = len(next(iter(values.values())))
    out = []
    for i in range(n):
        obj = {k: v[i] for k, v in values.items() if v[i] not in (None, "")}
        out.append(json.dumps(obj, ensure_ascii=False) if obj else None)
    return pa.array(out, pa.string())


def _wands_features(column: pa.ChunkedArray) -> pa.Array:
    out = []
    for value in column.to_pylist():
        obj = {}
        for part in (value or "").split("|"):
            key, sep, val = part.partition(":")
            if sep and key.strip():
                obj[key.strip()] = val.strip()
        out.append(json.dumps(obj, ensure_ascii=False) if obj else None)
    return pa.array(out, pa.string())


def _wands(files: list[Path], options: ImportOptions, kind: DatasetKind) -> Parsed:
    product_path = _pick(files, options, "product.csv")
    query_path = _pick(files, options, "query.csv")
    label_path = _pick(files, options, "label.csv")
    assert product_path and query_path and label_path
    products, encoding = read_delimited(product_path, encoding=options.encoding, delimiter="\t")
    queries, _ = read_delimited(query_path, encoding=options.encoding, delimiter="\t")
    labels, _ = read_delimited(label_path, encoding=options.encoding, delimiter="\t")
    for table, path, cols in (
        (products, product_path, {"product_id", "product_name"}),
        (queries, query_path, {"query_id", "query"}),
        (labels, label_path, {"query_id", "product_id", "label"}),
    ):
        if not cols <= set(table.column_names):
            needed = ", ".join(sorted(cols))
            raise ImportProblem(f"{path.name}: a WANDS file needs the columns {needed} (tab-separated)")
    qid = pc.utf8_trim_whitespace(queries["query_id"])
    label_qid = pc.utf8_trim_whitespace(labels["query_id"])
    query_text = queries["query"].take(pc.index_in(label_qid, value_set=qid))
    # a label whose query_id is unknown keeps an empty query: the validator names its row
    grade = _labels(labels["label"], WANDS_GRADES)
    relevance = pa.table({"query": query_text, "product_id": labels["product_id"], "grade": grade})

    def col(name: str) -> pa.ChunkedArray | pa.Array:
        return products[name] if name in products.column_names else pa.nulls(products.num_rows, pa.string())

    catalog = pa.table(
        {
            "product_id": products["product_id"],
            "title": products["product_name"],
            "description": col("product_description"),
            "category": col("category hierarchy"),
            "attributes": _wands_features(col("product_features")),
        }
    )
    return Parsed(
        kind,
        [
            SourceTable(DatasetKind.catalog, catalog, product_path.name),
            SourceTable(DatasetKind.relevance, relevance, label_path.name),
        ],
        encoding,
    )


def _strip_types(table: pa.Table) -> pa.Table:
    """RecBole headers carry a type: ``item_id:token`` -> ``item_id``."""
    return table.rename_columns([name.split(":", 1)[0] for name in table.column_names])


def _index_map(path: Path | None) -> tuple[pa.Array, pa.Array] | None:
    """``original_id<TAB>index`` lines (no header): index -> original id."""
    if path is None:
        return None
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=["original", "index"]),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types={"original": pa.string(), "index": pa.string()}),
    )
    return table["index"].combine_chunks(), table["original"].combine_chunks()


def _remap(values: pa.ChunkedArray | pa.Array, mapping: tuple[pa.Array, pa.Array] | None) -> pa.Array:
    if mapping is None:
        return values
    index, original = mapping
    found = pc.take(original, pc.index_in(values, value_set=index))
    return pc.coalesce(found, values)  # unmapped ids stay as they are and fail the catalog check


def _unisrec(files: list[Path], options: ImportOptions, kind: DatasetKind) -> Parsed:
    text_path = _pick(files, options, ".text")
    assert text_path is not None
    items = _index_map(_pick(files, options, ".item2index", required=False))
    users = _index_map(_pick(files, options, ".user2index", required=False))
    texts, encoding = read_delimited(text_path, encoding=options.encoding, delimiter="\t")
    texts = _strip_types(texts)
    if not {"item_id", "text"} <= set(texts.column_names):
        raise ImportProblem(f"{text_path.name}: expected the columns item_id:token and text:token_seq")
    catalog = pa.table({"product_id": texts["item_id"], "title": texts["text"]})
    sources = [SourceTable(DatasetKind.catalog, catalog, text_path.name)]
    inter_files = [p for p in files if p.name.endswith(".inter")]
    if not inter_files:
        expected = FORMAT_FILES[DataFormat.unisrec]
        raise ImportProblem(f"the unisrec format needs at least one .inter file ({expected})")
    order = {"train": 0, "valid": 1, "test": 2}
    for path in sorted(inter_files, key=lambda p: (order.get(p.name.split(".")[-2], 3), p.name)):
        inter, _ = read_delimited(path, encoding=options.encoding, delimiter="\t")
        inter = _strip_types(inter)
        if not {"user_id", "item_id_list", "item_id"} <= set(inter.column_names):
            raise ImportProblem(f"{path.name}: expected the columns user_id, item_id_list and item_id")
        lists = pc.utf8_split_whitespace(pc.fill_null(inter["item_id_list"], "")).combine_chunks()
        flat = _remap(pc.list_flatten(lists), items)
        history = pa.ListArray.from_arrays(lists.offsets, flat)
        sequences = pa.table(
            {
                "user_id": _remap(pc.utf8_trim_whitespace(inter["user_id"]).combine_chunks(), users),
                "history": history,
                "next_item": _remap(pc.utf8_trim_whitespace(inter["item_id"]).combine_chunks(), items),
            }
        )
        sources.append(SourceTable(DatasetKind.sequences, sequences, path.name))
    return Parsed(kind, sources, encoding)


_READERS: dict[DataFormat, Callable[[list[Path], ImportOptions, DatasetKind], Parsed]] = {
    DataFormat.csv: _generic,
    DataFormat.jsonl: _generic,
    DataFormat.parquet: _generic,
    DataFormat.homedepot: _homedepot,
    DataFormat.esci: _esci,
    DataFormat.wands: _wands,
    DataFormat.unisrec: _unisrec,
}
