"""Read CSV, TSV, JSONL and Parquet files into Arrow tables with pyarrow.

Delimited files are read with every column as text, so the validator, not the reader, decides what a
bad value is and can name its row. Encodings are declared or detected (charset-normalizer)."""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from charset_normalizer import from_bytes

from shared.datasets.report import ImportProblem, RowError

_SAMPLE = 1 << 20
_ALIASES = {"utf8": "utf-8", "iso8859-1": "iso-8859-1", "iso8859-15": "iso-8859-15"}


def normalize_encoding(name: str) -> str:
    try:
        codec = codecs.lookup(name).name
    except LookupError as exc:
        raise ImportProblem(f"unknown encoding {name!r}; use a name such as utf-8 or iso-8859-1") from exc
    return _ALIASES.get(codec, codec)


# Candidates for files that are not UTF-8: the legacy encodings e-commerce exports come in.
_LEGACY = ["cp1252", "latin_1", "iso8859_15", "cp1251", "shift_jis", "euc_jp", "gb18030", "big5", "euc_kr"]


def is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_SAMPLE):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(path: Path, *, legacy: str | None = None) -> str:
    """utf-8 when every byte decodes as UTF-8; else ``legacy`` when the format documents one; else
    charset-normalizer's best guess among common legacy encodings (ISO-8859-1 when it has none)."""
    if is_utf8(path):
        return "utf-8"
    if legacy:
        return normalize_encoding(legacy)
    with path.open("rb") as fh:
        sample = fh.read(_SAMPLE)
    best = from_bytes(sample, cp_isolation=_LEGACY).best()
    return normalize_encoding(best.encoding) if best is not None else "iso-8859-1"


def _header(path: Path, encoding: str, delimiter: str) -> list[str]:
    with path.open("r", encoding=encoding, errors="replace", newline="") as fh:
        first = fh.readline()
    names = next(csv.reader(io.StringIO(first), delimiter=delimiter), [])
    return [name.lstrip("\ufeff").strip() for name in names]


def read_delimited(
    path: Path, *, encoding: str | None, delimiter: str = ",", legacy: str | None = None
) -> tuple[pa.Table, str]:
    """A CSV/TSV file with a header line, every column as text. Returns the table and its encoding
    (declared, else detected; ``legacy`` is the format's documented encoding when it is not UTF-8)."""
    encoding = normalize_encoding(encoding) if encoding else detect_encoding(path, legacy=legacy)
    names = _header(path, encoding, delimiter)
    if not names or names == [""]:
        raise ImportProblem(f"{path.name}: the file is empty or has no header line")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ImportProblem(f"{path.name}: duplicate column names in the header: {', '.join(duplicates)}")
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                encoding=encoding, column_names=names, skip_rows=1, block_size=1 << 24
            ),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        row = _unclosed_quote(path, encoding, delimiter)
        if row is not None:
            raise _unclosed(path, row) from exc
        raise ImportProblem(
            f"{path.name}: not a valid {_describe(delimiter)} file ({_told(exc, path)})"
        ) from exc
    # pyarrow takes a quote left open at the end of the file as a value running to the end: only a
    # value with a line break in it can be one, so only then is the file read again to find it
    if any(pc.any(pc.match_substring(table[name], "\n")).as_py() for name in names):
        row = _unclosed_quote(path, encoding, delimiter)
        if row is not None:
            raise _unclosed(path, row)
    return table, encoding


def _unclosed(path: Path, row: int) -> ImportProblem:
    reason = (
        'a quoted value starts in this row and its closing quote (") is never found; close it, '
        'or write a quote inside a value as two ("")'
    )
    return ImportProblem(
        f"{path.name}: row {row} opens a quote that is never closed",
        errors=[RowError(path.name, row, None, reason)],
    )


def _unclosed_quote(path: Path, encoding: str, delimiter: str) -> int | None:
    """The data row (1: the one after the header) where a quoted value that never ends begins."""
    with path.open("r", encoding=encoding, errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        records = 0
        try:
            for _ in reader:
                records += 1
        except csv.Error as exc:
            return records if "end of data" in str(exc) and records else None
    return None


# The delimiters a file may use besides its extension's own, tried when its header reads as one column.
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def sniff_delimiter(path: Path, encoding: str | None, default: str) -> tuple[str, str | None]:
    """(the delimiter to read with, a note when it is not ``default``). A header that is one column
    with ``default`` but several with a semicolon, a tab or a pipe is read with that one."""
    encoding = normalize_encoding(encoding) if encoding else detect_encoding(path)
    names = _header(path, encoding, default)
    if len(names) != 1:
        return default, None
    for delimiter, name in _OTHER_DELIMITERS.items():
        if delimiter != default and len(_header(path, encoding, delimiter)) > 1:
            return delimiter, f"{path.name} was read as {name}-separated: its header has no {_name(default)}"
    return default, None


def _name(delimiter: str) -> str:
    return {",": "commas", "\t": "tabs"}.get(delimiter, repr(delimiter))


def _describe(delimiter: str) -> str:
    return "tab-separated" if delimiter == "\t" else "CSV"


def read_jsonl(path: Path) -> pa.Table:
    """One JSON object per line. A malformed line is reported with its line number."""
    try:
        return pajson.read_json(path, read_options=pajson.ReadOptions(block_size=1 << 24))
    except pa.ArrowInvalid as exc:
        errors = _bad_json_lines(path)
        if errors:
            raise ImportProblem(f"{path.name}: malformed JSON lines", errors=errors) from exc
        raise ImportProblem(f"{path.name}: not valid JSON lines ({_told(exc, path)})") from exc


def _bad_json_lines(path: Path, limit: int = 100) -> list[RowError]:
    errors: list[RowError] = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(RowError(path.name, number, None, f"not valid JSON: {exc.msg}"))
            else:
                if not isinstance(value, dict):
                    errors.append(RowError(path.name, number, None, "each line must be a JSON object"))
            if len(errors) >= limit:
                break
    return errors


def read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportProblem(f"{path.name}: not a readable Parquet file ({_told(exc, path)})") from exc


def _told(exc: BaseException, path: Path) -> str:
    """A reader's error as the uploader may read it: the server's folders replaced by the file's name."""
    return str(exc).replace(str(path.resolve()), path.name).replace(str(path), path.name)
