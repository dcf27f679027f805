"""A small, real, licence-clean sample corpus built on the fly from Python's standard-library docstrings.

Every Python installation carries the standard library and its docstrings (PSF licence), so the sample needs
no download and is the same on every machine with the same Python version. One document is made per module
(its docstring's opening paragraphs) and one per public top-level function or class with a docstring (its
first paragraph).

>>> docs = stdlib_corpus(limit=50)   # doctest: +SKIP
>>> write_stdlib_corpus("sample/corpus.jsonl")   # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Union

from hylex.corpus import Document

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Common, import-safe standard-library modules (no GUI, no easter eggs, no deprecated modules, nothing that
#: acts on import). Modules that fail to import on a given machine (e.g. ``sqlite3`` built without SQLite)
#: are skipped.
STDLIB_MODULES: tuple[str, ...] = tuple(sorted("""
    abc argparse array ast asyncio base64 binascii bisect bz2 calendar cmath cmd code codecs collections
    collections.abc colorsys compileall concurrent.futures configparser contextlib contextvars copy csv
    dataclasses datetime decimal difflib dis doctest email email.message email.parser email.utils errno
    filecmp fileinput fnmatch fractions ftplib functools gc getopt getpass gettext glob graphlib gzip hashlib
    heapq hmac html html.parser http.client http.cookiejar http.cookies http.server imaplib importlib
    importlib.metadata importlib.resources inspect io ipaddress itertools json json.decoder json.encoder
    linecache locale logging logging.handlers lzma mailbox marshal math mimetypes mmap multiprocessing netrc
    numbers operator optparse os pathlib pickle pkgutil platform plistlib poplib pprint pstats py_compile
    queue random re reprlib runpy sched secrets select selectors shelve shlex shutil signal smtplib socket
    socketserver sqlite3 ssl stat statistics string struct subprocess sys sysconfig tarfile tempfile textwrap
    threading time timeit tokenize tomllib traceback types typing unicodedata unittest unittest.mock
    urllib.error urllib.parse urllib.request urllib.robotparser uuid warnings wave weakref wsgiref
    xml.dom.minidom xml.etree.ElementTree xml.sax xmlrpc.client zipfile zlib zoneinfo
""".split()))

#: Queries the default sample (``stdlib_corpus()``, limit 300) can answer.
EXAMPLE_QUERIES: tuple[str, ...] = (
    "parse a JSON string into Python objects",
    "compress data with gzip",
    "generate a random UUID",
    "regular expression matching",
    "read and write CSV files",
    "current date and time",
)

#: For each of :data:`EXAMPLE_QUERIES`, ids of sample documents that answer it (all present at limit 300).
EXAMPLE_ANSWERS: dict[str, tuple[str, ...]] = {
    "parse a JSON string into Python objects": ("json",),
    "compress data with gzip": ("gzip",),
    "generate a random UUID": ("uuid",),
    "regular expression matching": ("re",),
    "read and write CSV files": ("csv",),
    "current date and time": ("time", "datetime"),
}

MAX_WORDS = 120
MIN_WORDS = 4  # "Generate a random UUID." (uuid.uuid4) is short but informative; "Same as a + b." is kept too
_MODULE_MIN_WORDS = 20  # module docs gather paragraphs until at least this many words (capped to MAX_WORDS)
_SIGNATURE_RE = re.compile(r"^[A-Za-z_][\w.]*\(.*\)(\s*-+>\s*.+)?$")
_INLINE_SIGNATURE_RE = re.compile(r"^[A-Za-z_][\w.]*\([^()]*\)\s+-+\s+(?=\S)")
_BULLET_RE = re.compile(r"^(?:[-*+o]\s|\d+[.)]\s)")
_LIST_LINE_RE = re.compile(r"^(?:[-*+o]\s|\d+[.)]\s|[\w.]+\s+--\s|[\w.]+\s*:\s*$)")


def _paragraphs(doc: str) -> list[str]:
    """Split a cleaned docstring into paragraphs, dropping a leading call-signature line ("f(x) -> y")."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    while paras:
        first_line, _, rest = paras[0].partition("\n")
        if _SIGNATURE_RE.match(first_line.strip()) or first_line.strip() == "--":
            rest = rest.strip()
            if rest.startswith("--"):
                rest = rest[2:].strip()
            if rest:
                paras[0] = rest
            else:
                paras.pop(0)
            continue
        break
    if paras:
        paras[0] = _INLINE_SIGNATURE_RE.sub("", paras[0], count=1)
    return paras


def _prose_lines(paragraph: str) -> tuple[str, bool]:
    """The paragraph up to its first list or definition line; and whether it was cut there.

    A cut paragraph loses a trailing line that ends with ``:`` (it introduced the dropped list).
    """
    lines = paragraph.splitlines()
    kept: list[str] = []
    for i, line in enumerate(lines):
        if i > 0 and _LIST_LINE_RE.match(line.strip()):
            while kept and kept[-1].rstrip().endswith(":"):
                kept.pop()
            return "\n".join(kept), True
        kept.append(line)
    return paragraph, False


def _is_prose(paragraph: str) -> bool:
    """True if a paragraph is prose rather than a code example, a table or a field list."""
    head = paragraph.lstrip()
    if _BULLET_RE.match(head):
        return False
    return not (head.startswith((">>>", "$ ", "::", "...", "+-", "==", "--")) or head.startswith("    "))


def _cap(words: list[str]) -> str:
    """Join at most :data:`MAX_WORDS` words."""
    return " ".join(words[:MAX_WORDS])


def _module_text(doc: str) -> str:
    """Opening prose paragraphs of a module docstring, whitespace-normalised, capped to MAX_WORDS words."""
    words: list[str] = []
    for para in _paragraphs(doc):
        if not _is_prose(para):
            break
        prose, cut = _prose_lines(para)
        words.extend(prose.split())
        if cut or len(words) >= _MODULE_MIN_WORDS:
            break
    if words and words[-1].endswith(":"):  # drop an introduction to a list that was left out
        ends = [i for i, w in enumerate(words[:-1]) if w.endswith((".", "!", "?"))]
        if ends:
            words = words[: ends[-1] + 1]
    return _cap(words)


def _member_text(doc: str) -> str:
    """First prose paragraph of a function or class docstring, whitespace-normalised, capped."""
    for para in _paragraphs(doc):
        if _is_prose(para):
            return _cap(_prose_lines(para)[0].split())
        break
    return ""


def _own_doc(obj: Any) -> str | None:
    """The object's own docstring (not one inherited from a base class, unlike :func:`inspect.getdoc`)."""
    try:
        doc = obj.__doc__
    except Exception:  # noqa: BLE001 - exotic descriptors
        return None
    if not isinstance(doc, str):
        return None
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        if not isinstance(doc, str):
            return None
    return doc


def _public_members(module: ModuleType) -> list[tuple[str, Any]]:
    """Sorted public top-level functions and classes of ``module``.

    Names come from ``__all__`` when the module defines it (its declared API, re-exports included), else from
    ``dir()`` restricted to objects defined in the module itself.
    """
    modname = module.__name__
    declared = getattr(module, "__all__", None)
    if isinstance(declared, (list, tuple)):
        names = sorted({n for n in declared if isinstance(n, str) and not n.startswith("_")})
        own_only = False
    else:
        names = sorted(n for n in dir(module) if not n.startswith("_"))
        own_only = True
    members: list[tuple[str, Any]] = []
    for name in names:
        try:
            obj = getattr(module, name)
        except Exception:  # noqa: BLE001 - lazy attributes may fail
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if own_only:
            owner = getattr(obj, "__module__", None)
            if not isinstance(owner, str) or not (owner == modname or owner.startswith(modname + ".")):
                continue
        members.append((name, obj))
    return members


def _import(modname: str) -> ModuleType | None:
    """Import a module, returning None (and logging why) if it cannot be imported here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(modname)
    except Exception as exc:  # noqa: BLE001 - any import failure just drops the module
        logger.debug("sample corpus: skipping %s (%s: %s)", modname, type(exc).__name__, exc)
        return None


def _module_documents(modname: str) -> tuple[Document | None, list[Document]]:
    """The module's own document (or None) and its members' documents, sorted by id."""
    module = _import(modname)
    if module is None:
        return None, []
    module_doc: Document | None = None
    doc = _own_doc(module)
    if doc:
        text = _module_text(doc)
        if len(text.split()) >= MIN_WORDS:
            module_doc = Document(id=modname, text=text, title=modname,
                                  metadata={"module": modname, "kind": "module"})
    members: list[Document] = []
    for name, obj in _public_members(module):
        doc = _own_doc(obj)
        if not doc:
            continue
        text = _member_text(doc)
        if len(text.split()) < MIN_WORDS:
            continue
        doc_id = f"{modname}.{name}"
        kind = "class" if inspect.isclass(obj) else "function"
        members.append(Document(id=doc_id, text=text, title=doc_id,
                                metadata={"module": modname, "kind": kind}))
    return module_doc, members


def stdlib_corpus(limit: int | None = 300) -> list[Document]:
    """Build the sample corpus from the docstrings of :data:`STDLIB_MODULES`.

    Args:
        limit: keep at most this many documents (None: all of them, a few thousand). The selection is
            deterministic and spread over topics: first the modules' own documents (evenly spaced over
            the sorted modules when ``limit`` is smaller than their number), then the modules'
            functions and classes taken round-robin (each module's first member, then each one's second, ...;
            within a module functions come before classes, each sorted by name).

    Returns:
        the documents, sorted by id, with unique ids and non-empty texts.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}. Pass e.g. limit=300.")
    seen: set[str] = set()
    module_docs: list[Document] = []
    member_lists: list[list[Document]] = []
    for modname in STDLIB_MODULES:
        module_doc, members = _module_documents(modname)
        if module_doc is not None and module_doc.id not in seen:
            seen.add(module_doc.id)
            module_docs.append(module_doc)
        unique = []
        for d in members:
            if d.id not in seen:
                seen.add(d.id)
                unique.append(d)
        if unique:
            # round-robin priority inside a module: functions (they name tasks) before classes, then by name
            unique.sort(key=lambda d: (d.metadata["kind"] != "function", d.id))
            member_lists.append(unique)

    if limit is None:
        chosen = module_docs + [d for lst in member_lists for d in lst]
    else:
        if limit < len(module_docs):  # evenly spaced over the (sorted) modules, not just the first letters
            chosen = [module_docs[(i * len(module_docs)) // limit] for i in range(limit)]
        else:
            chosen = list(module_docs)
        depth = 0
        while len(chosen) < limit:
            layer = [lst[depth] for lst in member_lists if depth < len(lst)]
            if not layer:
                break
            chosen.extend(layer[: limit - len(chosen)])
            depth += 1
    chosen.sort(key=lambda d: d.id)
    logger.debug("sample corpus: %d documents (limit %s)", len(chosen), limit)
    return chosen


def write_stdlib_corpus(path: PathLike, limit: int | None = 300) -> int:
    """Write :func:`stdlib_corpus` as a BEIR-style JSONL corpus (``_id``, ``title``, ``text``, ``metadata``).

    Parent directories are created. Returns the number of documents written.
    """
    docs = stdlib_corpus(limit)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for d in docs:
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata},
                                ensure_ascii=False) + "\n")
    os.replace(tmp, p)
    logger.info("wrote %d sample documents to %s", len(docs), p)
    return len(docs)
