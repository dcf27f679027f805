"""Reading corpora, queries and relevance judgments (BEIR and plain JSONL).

A corpus is a JSONL file with one document per line, in either of two shapes:

* BEIR: ``{"_id": "d1", "title": "...", "text": "...", "metadata": {...}}``
* plain: ``{"id": "d1", "text": "...", "title": "...", "metadata": {...}}`` (title and metadata optional)

Ids may be strings or integers in the file; they are always returned as strings. Keys other than
``_id``/``id``/``title``/``text``/``metadata`` are kept in the document's metadata. Blank lines are skipped.

Every malformed input raises :class:`~hylex.errors.CorpusError` whose one-line message names the file, the
1-based line number, the problem and the fix.

What every entry point (corpus files, :class:`Document`, query texts, the HTTP service) does with awkward input:

* ids: strings of 1 to :data:`MAX_ID_BYTES` (511) UTF-8 bytes, not only whitespace, valid Unicode; anything else
  is refused (LMDB keys cannot be longer, and an id must be readable back exactly as written);
* texts and titles: lone UTF-16 surrogates (JSON's ``"\\ud800"`` escapes without their pair, which no UTF-8
  encoder or tokenizer accepts) are replaced by U+FFFD (:func:`clean_text`); the rest of the text is kept;
* metadata: a JSON object of JSON values; NaN and infinity are refused (JSON has neither), strings are cleaned
  like texts.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

from hylex.errors import CorpusError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_RESERVED_KEYS = frozenset({"_id", "id", "title", "text", "metadata"})
_SENTENCE_END = (".", "!", "?", ":", ";")

#: The longest document id in UTF-8 bytes: LMDB's largest key (ids are keys of the document store).
MAX_ID_BYTES = 511
_MAX_METADATA_DEPTH = 32


def clean_text(text: str) -> str:
    """``text`` with every lone UTF-16 surrogate replaced by U+FFFD (a pair written as two escapes is joined).

    JSON allows ``"\\ud800"`` without its partner; Python then holds a code point that cannot be encoded as
    UTF-8, and tokenizers, LMDB and JSON writers fail on it. Everything else is returned unchanged (the same
    object when there is nothing to replace).
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_id(value: Any, what: str = "document id") -> str:
    """Return ``value`` as a storable document id, or raise :class:`CorpusError` saying why it is not.

    An id is a string of 1 to :data:`MAX_ID_BYTES` UTF-8 bytes that is not only whitespace and holds no lone
    surrogate.
    """
    if not isinstance(value, str):
        raise CorpusError(f"{what} must be a string, got {_json_type(value)}: pass ids as strings")
    if not value.strip():
        raise CorpusError(f"{what} {value!r} is empty or only whitespace: give every document a visible id")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise CorpusError(f"{what} {value[:40]!r} holds a lone surrogate (an unpaired \\ud800-\\udfff escape): "
                          f"ids must be valid Unicode, fix the escape") from None
    if n > MAX_ID_BYTES:
        raise CorpusError(f"{what} {value[:32]!r}... is {n} UTF-8 bytes, over the limit of {MAX_ID_BYTES} "
                          f"(the document store's key size): shorten it, e.g. keep the long id in metadata and "
                          f"use its hash as the id")
    return value


def clean_metadata(value: Any, where: str = "metadata", depth: int = 0) -> Any:
    """A JSON value with its strings cleaned (:func:`clean_text`); raises :class:`CorpusError` for NaN, infinity,
    non-string keys, nesting deeper than 32 or a value JSON cannot hold."""
    if depth > _MAX_METADATA_DEPTH:
        raise CorpusError(f"{where} is nested more than {_MAX_METADATA_DEPTH} levels deep: flatten it")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > 1000:  # only huge integers can exceed Python's 4,300-digit string limit
            try:
                str(value)
            except ValueError:
                raise CorpusError(f"{where} is an integer of more than {sys.get_int_max_str_digits():,} digits, "
                                  f"which cannot be stored as JSON: write it as a string") from None
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CorpusError(f"{where} is {value}: JSON has no NaN or infinity, use null or a number")
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CorpusError(f"{where} has a key {k!r} that is not a string: JSON object keys are strings")
            out[clean_text(k)] = clean_metadata(v, f"{where}.{k}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [clean_metadata(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise CorpusError(f"{where} is a {type(value).__name__}, which JSON cannot hold: use strings, numbers, "
                      f"booleans, null, lists and objects")


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Attributes:
        id: the document id, unique within its corpus.
        text: the body text (may be empty when ``title`` is not).
        title: the title, ``""`` when there is none.
        metadata: free-form JSON object kept with the document (compared, but not hashed).
    """

    id: str
    text: str
    title: str = ""
    metadata: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Validated here so that every way in (corpus files, the library, the HTTP service) refuses the same
        # ids and cleans the same texts; raises CorpusError.
        check_id(self.id)
        for name in ("text", "title"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise CorpusError(f"document {self.id!r} {name} must be a string, got {_json_type(value)}")
            cleaned = clean_text(value)
            if cleaned is not value:
                object.__setattr__(self, name, cleaned)
        if not isinstance(self.metadata, dict):
            raise CorpusError(f"document {self.id!r} metadata must be a JSON object, got "
                              f"{_json_type(self.metadata)}")
        object.__setattr__(self, "metadata", clean_metadata(self.metadata, f"document {self.id!r} metadata"))

    @property
    def full_text(self) -> str:
        """The text to encode: title and text joined by ``". "``, or whichever of the two is non-empty."""
        title = self.title.strip()
        text = self.text.strip()
        if not title:
            return text
        if not text:
            return title
        sep = " " if title.endswith(_SENTENCE_END) else ". "
        return f"{title}{sep}{text}"


# --------------------------------------------------------------------------------------------------------------
# low-level line reading
# --------------------------------------------------------------------------------------------------------------


def _check_file(path: PathLike, what: str, fix: str) -> Path:
    """Return ``path`` as a :class:`Path`, raising CorpusError if it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"{what} file {p} does not exist. {fix}")
    if not p.is_file():
        raise CorpusError(f"{what} path {p} is not a file. {fix}")
    return p


_GZIP_MAGIC, _ZSTD_MAGIC, _PARQUET_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PAR1"


def file_format(path: PathLike) -> str:
    """``"jsonl"``, ``"gzip"`` (gzipped JSONL), ``"zstd"`` (zstd-compressed JSONL) or ``"parquet"``, read from the
    file's first bytes (a suffix can lie; anything else is read as JSONL)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == _GZIP_MAGIC:
        return "gzip"
    if head == _ZSTD_MAGIC:
        return "zstd"
    if head == _PARQUET_MAGIC:
        return "parquet"
    return "jsonl"


@contextlib.contextmanager
def _open_lines(p: Path) -> Iterator[tuple[Any, Any]]:
    """``(lines, raw)``: a binary line iterator over the JSONL text of ``p`` (decompressed when it is gzip or
    zstd) and the underlying file, whose ``tell()`` is how many of the file's bytes were consumed."""
    fmt = file_format(p)
    with open(p, "rb") as raw:
        if fmt == "gzip":
            with gzip.GzipFile(fileobj=raw) as fh:
                yield fh, raw
        elif fmt == "zstd":
            try:
                import zstandard
            except ImportError:
                raise CorpusError(f"{p.name} is zstd-compressed and the zstandard package is not installed: "
                                  f"pip install zstandard (or hylex[formats]), or decompress it") from None
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            with io.BufferedReader(reader, 1 << 20) as fh:
                yield fh, raw
        elif fmt == "parquet":
            raise CorpusError(f"{p.name} is a Parquet file, not JSONL lines: pass it as a corpus (hylex index "
                              f"reads Parquet), or write queries and qrels as JSONL/TSV")
        else:
            yield raw, raw


def _decoded_lines(p: Path, fh) -> Iterator[tuple[int, str | CorpusError, bytes]]:
    """``(line_number, text or the CorpusError that line raises, raw bytes)`` for each non-blank line."""
    lineno = 0
    try:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, CorpusError(f"{p.name} line {lineno}: not valid UTF-8 (byte {exc.start}: "
                                          f"{exc.reason}). Re-encode the file as UTF-8 or remove the line."), raw
                continue
            if line.strip():
                yield lineno, line, raw
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip/zstd stream
        raise CorpusError(f"{p.name}: the compressed stream is damaged after line {lineno} ({exc}): recompress "
                          f"the file, or index what was read with --resume after fixing it") from None


def iter_lines(p: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line of ``p`` (plain, gzip or zstd JSONL).

    The file is read in binary and decoded line by line so that an invalid UTF-8 byte is reported with its
    line number. A UTF-8 byte order mark on the first line is tolerated.
    """
    with _open_lines(p) as (fh, _):
        for lineno, line, _ in _decoded_lines(p, fh):
            if isinstance(line, CorpusError):
                raise line
            yield lineno, line


def _parse_json_line(name: str, lineno: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{name} line {lineno}: not valid JSON ({exc.msg}). Fix the line or remove it.") from None
    except ValueError as exc:  # Python's integer string limit: a number of more than 4,300 digits
        raise CorpusError(f"{name} line {lineno}: a number with too many digits ({str(exc).split(';')[0]}). Write "
                          f"it as a string, or remove the line.") from None
    except RecursionError:
        raise CorpusError(f"{name} line {lineno}: JSON nested too deeply to read. Flatten the line.") from None
    if not isinstance(obj, dict):
        raise CorpusError(
            f"{name} line {lineno}: expected a JSON object, got {_json_type(obj)}. "
            f"Write one object per line, e.g. {{\"_id\": \"d1\", \"text\": \"...\"}}."
        )
    return obj


def _iter_json_objects(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of the JSONL file ``p``."""
    for lineno, line in iter_lines(p):
        yield lineno, _parse_json_line(p.name, lineno, line)


def _json_type(value: Any) -> str:
    """Name the JSON type of ``value`` for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _get_id(obj: dict[str, Any], name: str, lineno: int, what: str, unit: str = "line") -> tuple[str, str]:
    """Return ``(id, key_used)`` of a corpus or query line (``unit``: "line", or "row" of a Parquet file),
    preferring ``_id`` over ``id``."""
    name = f"{name} {unit} {lineno}"
    key = "_id" if "_id" in obj else "id" if "id" in obj else None
    if key is None:
        raise CorpusError(
            f"{name}: {what} has no id. Add an \"_id\" (BEIR) or \"id\" field."
        )
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(
            f"{name}: {what} id must be a string or an integer, got {_json_type(value)}. "
            f"Fix the \"{key}\" field."
        )
    text = str(value)
    if not text.strip():
        raise CorpusError(f"{name}: {what} id is empty or only whitespace. Give the {what} a visible \"{key}\".")
    try:
        check_id(text, f"{what} id")
    except CorpusError as e:
        raise CorpusError(f"{name}: {e}") from None
    return text, key


# --------------------------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------------------------


def _parse_document(obj: dict[str, Any], name: str, lineno: int, unit: str = "line") -> Document:
    """Build a :class:`Document` from one parsed corpus line (or Parquet row), validating every field. A document
    whose text and title are both empty is a document (real collections have them): it is indexed with no
    terms."""
    doc_id, id_key = _get_id(obj, name, lineno, "document", unit)
    name = f"{name} {unit} {lineno}"

    if "text" not in obj:
        raise CorpusError(
            f"{name}: document {doc_id!r} has no \"text\" field. Add a \"text\" string "
            f"(it may be empty)."
        )
    text = obj["text"]
    if not isinstance(text, str):
        raise CorpusError(
            f"{name}: document {doc_id!r} \"text\" must be a string, got {_json_type(text)}. "
            f"Fix the \"text\" field."
        )

    title = obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise CorpusError(
            f"{name}: document {doc_id!r} \"title\" must be a string, got {_json_type(title)}. "
            f"Fix the \"title\" field or remove it."
        )

    metadata: dict[str, Any] = {}
    for key, value in obj.items():
        if key not in _RESERVED_KEYS or (key in ("_id", "id") and key != id_key):
            metadata[key] = value
    if "metadata" in obj:
        meta = obj["metadata"]
        if not isinstance(meta, dict):
            raise CorpusError(
                f"{name}: document {doc_id!r} \"metadata\" must be a JSON object, got "
                f"{_json_type(meta)}. Fix the \"metadata\" field or remove it."
            )
        metadata.update(meta)  # the explicit metadata object wins over stray top-level keys

    try:
        return Document(id=doc_id, text=text, title=title, metadata=metadata)
    except CorpusError as e:  # NaN or otherwise unstorable metadata: name the line
        raise CorpusError(f"{name}: {e}") from None


class CorpusReader:
    """Stream the documents of a corpus file, in file order, holding one line (or one Parquet batch) at a time.

    Formats, recognised by the file's first bytes: JSONL (``.jsonl``), gzipped JSONL (``.jsonl.gz``),
    zstd-compressed JSONL (``.jsonl.zst``, needs the ``zstandard`` package) and Parquet (needs ``pyarrow``; the
    columns are the JSONL keys: ``_id`` or ``id``, ``text``, optional ``title`` and ``metadata``, other columns go
    to the metadata).

    Iterating yields :class:`Document` objects; :meth:`numbered` yields ``(line, document)`` (a Parquet file's
    1-based row). With ``rejects=None`` a malformed line raises :class:`CorpusError` naming the line; with a list
    (anything with ``append``), each malformed line is appended as ``{"line", "error", "raw"}`` and skipped.
    Duplicate ids are not checked here (that needs every id seen; the indexer checks them against its index).

    Attributes:
        format: ``"jsonl"``, ``"gzip"``, ``"zstd"`` or ``"parquet"``.
        total, unit: the file's size in bytes (``unit == "B"``) or its rows (``"row"``, Parquet): for progress.
        position: how much of ``total`` was consumed so far.
        documents, empty: documents yielded so far, and how many of them have neither text nor title.
    """

    def __init__(self, path: PathLike, *, rejects: list | None = None, batch_rows: int = 1024) -> None:
        self.path = _check_file(path, "corpus", "Pass the path of a JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or "
                                                "Parquet corpus file.")
        self.format = file_format(self.path)
        self.rejects = rejects
        self.batch_rows = batch_rows
        self.documents = 0
        self.empty = 0
        self._tell = lambda: 0
        if self.format == "parquet":
            self.unit, self.total = "row", self._parquet().metadata.num_rows
        else:
            self.unit, self.total = "B", self.path.stat().st_size
        self._used = False
        self._gen: Iterator[tuple[int, Document]] | None = None
        self._buffer: list[tuple[int, Document]] = []

    @property
    def position(self) -> int:
        return self._tell()

    def __iter__(self) -> Iterator[Document]:
        return (d for _, d in self.numbered())

    def peek(self, n: int) -> list[tuple[int, Document]]:
        """The first ``n`` ``(line, document)`` pairs, read now (so a bad first line fails at once) and yielded
        again by :meth:`numbered`."""
        if self._gen is None:
            self._gen = self._generate()
        while len(self._buffer) < n:
            try:
                self._buffer.append(next(self._gen))
            except StopIteration:
                break
        return list(self._buffer)

    def numbered(self) -> Iterator[tuple[int, Document]]:
        """``(line or row number, document)`` for every document of the file (a reader is read once)."""
        if self._used:
            raise CorpusError(f"this reader of {self.path.name} was already read: open a new CorpusReader")
        self._used = True
        if self._gen is None:
            self._gen = self._generate()
        buffered, self._buffer = self._buffer, []
        yield from buffered
        yield from self._gen

    def _generate(self) -> Iterator[tuple[int, Document]]:
        items = self._parquet_items() if self.format == "parquet" else self._jsonl_items()
        for lineno, item, raw in items:
            try:
                if isinstance(item, CorpusError):
                    raise item
                doc = _parse_document(item, self.path.name, lineno, "row" if self.format == "parquet" else "line")
            except CorpusError as exc:
                if self.rejects is None:
                    raise
                self.rejects.append({"line": lineno, "error": str(exc).split(": ", 1)[-1], "raw": raw})
                continue
            self.documents += 1
            if not doc.text.strip() and not doc.title.strip():
                self.empty += 1
            yield lineno, doc
        if self.documents == 0 and self.rejects is None:
            raise CorpusError(
                f"{self.path.name} has no documents (the file is empty or only blank lines). "
                f"Add one JSON document per line, e.g. {{\"_id\": \"d1\", \"text\": \"...\"}}."
            )
        logger.debug("read %d documents from %s", self.documents, self.path)

    def _jsonl_items(self) -> Iterator[tuple[int, Any, str]]:
        name = self.path.name
        consumed = 0
        with _open_lines(self.path) as (fh, raw_file):
            # plain JSONL: the bytes of the lines yielded (exact; the file object reads ahead); compressed: how far
            # into the compressed file the decompressor is
            self._tell = (lambda: consumed) if self.format == "jsonl" else raw_file.tell
            try:
                for lineno, line, raw in _decoded_lines(self.path, fh):
                    consumed += len(raw)
                    text = raw.decode("utf-8", errors="replace").rstrip("\n")
                    if isinstance(line, CorpusError):
                        yield lineno, line, text
                        continue
                    try:
                        yield lineno, _parse_json_line(name, lineno, line), text
                    except CorpusError as exc:
                        yield lineno, exc, text
            finally:
                size = self.total
                self._tell = lambda: size

    def _parquet(self):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CorpusError(f"{self.path.name} is a Parquet file and pyarrow is not installed: pip install pyarrow "
                              f"(or hylex[formats]), or convert it to JSONL") from None
        try:
            return pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError kinds
            raise CorpusError(f"{self.path.name}: not a readable Parquet file ({exc}): rewrite it") from None

    def _parquet_items(self) -> Iterator[tuple[int, Any, str]]:
        pf = self._parquet()
        row = 0
        self._tell = lambda: row
        batches = pf.iter_batches(batch_size=self.batch_rows)
        while True:
            try:
                batch = next(batches, None)
                objs = None if batch is None else batch.to_pylist()
            except Exception as exc:  # pyarrow: OSError("Corrupt snappy compressed data."), ArrowInvalid, ...
                raise CorpusError(f"{self.path.name}: the Parquet file is corrupt after row {row} ({exc}): rewrite it "
                                  f"from its source; the rows before it were read (with an index: --resume goes on "
                                  f"once it is fixed)") from None
            if objs is None:
                return
            for obj in objs:
                row += 1
                obj = {k: v for k, v in obj.items() if not (k == "title" and v is None)}
                yield row, obj, json.dumps(obj, ensure_ascii=False, default=str)


def read_corpus(path: PathLike) -> Iterator[Document]:
    """Stream the documents of a corpus file (JSONL, gzip or zstd JSONL, Parquet: :class:`CorpusReader`).

    Args:
        path: the corpus file.

    Returns:
        an iterator of one :class:`Document` per non-blank line, in file order; a missing file is reported
        at call time, malformed lines while iterating.

    Raises:
        CorpusError: the file is missing, a line is malformed (the message names the line), or the file holds
            no document at all (raised once the whole file was read).
    """
    return iter(CorpusReader(path))  # the file is checked here, at call time


# --------------------------------------------------------------------------------------------------------------
# queries and qrels
# --------------------------------------------------------------------------------------------------------------


def read_queries(path: PathLike) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl`` file (``{"_id": ..., "text": ...}`` per line; ``id`` is accepted too).

    Returns:
        query id -> query text, in file order.

    Raises:
        CorpusError: missing file, malformed line, empty query text, duplicate query id, or no queries.
    """
    p = _check_file(path, "queries", "Pass the path of a queries JSONL file.")
    name = p.name
    queries: dict[str, str] = {}
    for lineno, obj in _iter_json_objects(p):
        qid, _ = _get_id(obj, name, lineno, "query")
        text = obj.get("text")
        if not isinstance(text, str):
            what = "has no \"text\" field" if "text" not in obj else f"\"text\" is {_json_type(text)}"
            raise CorpusError(
                f"{name} line {lineno}: query {qid!r} {what}. Give the query a \"text\" string."
            )
        if not text.strip():
            raise CorpusError(
                f"{name} line {lineno}: query {qid!r} has an empty text. Fix the query or remove it."
            )
        if qid in queries:
            raise CorpusError(
                f"{name} line {lineno}: query id {qid!r} appears twice. Give each query a unique id."
            )
        queries[qid] = clean_text(text)
    if not queries:
        raise CorpusError(
            f"{name} has no queries. Add one JSON query per line, e.g. {{\"_id\": \"q1\", \"text\": \"...\"}}."
        )
    return queries


def read_qrels(path: PathLike) -> dict[str, dict[str, int]]:
    """Read relevance judgments.

    Accepts the BEIR TSV format (``query-id<TAB>corpus-id<TAB>score`` with that header line, which is
    skipped) and, as a convenience, 4-column TREC qrels (``qid iter docid score``, whitespace separated).

    Returns:
        query id -> {document id -> integer relevance grade}.

    Raises:
        CorpusError: missing file, malformed line (wrong number of fields, non-integer score), or no judgments.
    """
    p = _check_file(path, "qrels", "Pass the path of a qrels TSV file.")
    name = p.name
    qrels: dict[str, dict[str, int]] = {}
    seen_content = False
    for lineno, line in iter_lines(p):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) == 1:
            fields = line.split()
        fields = [f.strip() for f in fields]
        if not seen_content:
            seen_content = True
            if fields and fields[0].lower() in ("query-id", "query_id", "qid", "query"):
                continue  # header line
        if len(fields) == 4:  # TREC qrels: qid iter docid rel
            qid, _, did, score_text = fields
        elif len(fields) == 3:
            qid, did, score_text = fields
        else:
            raise CorpusError(
                f"{name} line {lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                f"got {len(fields)}. Fix the line or remove it."
            )
        if not qid or not did:
            raise CorpusError(
                f"{name} line {lineno}: empty query id or corpus id. Fix the line or remove it."
            )
        try:
            score_f = float(score_text)
            if not score_f.is_integer():
                raise ValueError
            score = int(score_f)
        except ValueError:
            raise CorpusError(
                f"{name} line {lineno}: score {score_text!r} is not an integer. "
                f"Use integer relevance grades (0, 1, 2, ...)."
            ) from None
        qrels.setdefault(qid, {})[did] = score
    if not qrels:
        raise CorpusError(
            f"{name} has no relevance judgments. Add lines \"query-id<TAB>corpus-id<TAB>score\" after the header."
        )
    return qrels


def is_test_split(split: str) -> bool:
    """Whether a qrels split is a test split (``test``, ``test-2``, ``TEST``...): what training and fusion
    choices must not read."""
    return str(split).strip().lower().startswith("test")


def load_beir(beir_dir: PathLike, split: str = "test") -> tuple[Path, dict[str, str], dict[str, dict[str, int]]]:
    """Locate and load a BEIR dataset directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    The corpus is not read (it may be large); its path is returned for :func:`read_corpus`. Queries are
    restricted to those judged in the split's qrels.

    Returns:
        ``(corpus_path, queries, qrels)``.

    Raises:
        CorpusError: the directory or one of its files is missing, or the qrels judge a query that
            ``queries.jsonl`` lacks.
    """
    root = Path(beir_dir)
    if not root.is_dir():
        raise CorpusError(
            f"BEIR directory {root} does not exist. Pass the unzipped dataset folder "
            f"(holding corpus.jsonl, queries.jsonl and qrels/)."
        )
    corpus_path = root / "corpus.jsonl"
    queries_path = root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for p, what in ((corpus_path, "corpus.jsonl"), (queries_path, "queries.jsonl")):
        if not p.is_file():
            raise CorpusError(
                f"BEIR directory {root} has no {what}. Pass the unzipped dataset folder (holding corpus.jsonl, "
                f"queries.jsonl and qrels/)."
            )
    if not qrels_path.is_file():
        splits = sorted(q.stem for q in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        have = f"available splits: {', '.join(splits)}" if splits else "no qrels/*.tsv found"
        raise CorpusError(
            f"BEIR directory {root} has no qrels/{split}.tsv ({have}). Pass one of the available splits."
        )
    qrels = read_qrels(qrels_path)
    all_queries = read_queries(queries_path)
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise CorpusError(
            f"{qrels_path.name} judges {len(missing)} queries missing from queries.jsonl (e.g. {missing[0]!r}). "
            f"Use the queries.jsonl that belongs to this dataset."
        )
    queries = {qid: all_queries[qid] for qid in qrels}
    logger.info("BEIR %s split %s: %d queries judged", root.name, split, len(queries))
    return corpus_path, queries, qrels
