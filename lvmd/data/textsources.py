"""Real text that installs offline (shared/DATA.md), cleaned to prose paragraphs.

Each source yields `Doc`s (a title and its paragraphs in reading order) plus a provenance dict
for build.json. Markup is removed here; splitting into chunks happens in databuild. Sources:
  wikipedia     the en-Wikipedia XML dump that ships in gensim's wheel (CC BY-SA)
  austen        Jane Austen's six novels from Debian's r-cran-janeaustenr, one doc per chapter
  pydocs        the Python 3.11 documentation sources from Debian's python3.11-doc (PSF)
  textdir:PATH  every .txt / .md file under PATH, one doc per file
The Debian packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
the cache: installing r-cran-janeaustenr would pull in all of R.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import warnings
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lvmd.errors import UserError

NAMED = ("wikipedia", "austen", "pydocs")
SOURCES = (*NAMED, "textdir:PATH")
EXTRA_HINT = "pip install 'lvmd[embed]'"


@dataclass(frozen=True)
class Doc:
    title: str
    paragraphs: tuple[str, ...]


def check_spec(spec: str) -> None:
    if spec not in NAMED and not spec.startswith("textdir:"):
        raise UserError(f"unknown source {spec!r}; choose one of: {', '.join(SOURCES)}")


def load_source(spec: str, cache_dir: Path) -> tuple[list[Doc], dict]:
    """The documents of a source spec and where they came from."""
    check_spec(spec)
    if spec == "wikipedia":
        return wikipedia_docs()
    if spec == "austen":
        return austen_docs(cache_dir)
    if spec == "pydocs":
        return pydocs_docs(cache_dir)
    return textdir_docs(Path(spec[len("textdir:"):]))


def tidy(text: str) -> str:
    """One line of prose: collapse whitespace and close the gaps that removed markup leaves."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\(\s*[,;:]?\s*\)", "", text)          # "()" "( ; )" left by dropped templates
    text = re.sub(r"\(\s*[,;]\s*", "(", text)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    return re.sub(r"\s{2,}", " ", text).strip()


def _is_prose(par: str, min_words: int = 4) -> bool:
    # captions, table cells and list stubs rarely end like a sentence
    return len(par.split()) >= min_words and bool(re.search(r"[.!?][\"'”’)\]]*$", par))


def _require(module: str, source: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UserError(f"source {source!r} needs the Python package {module!r} from the embed extra: "
                        f"{EXTRA_HINT}") from None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


# -- wikipedia ------------------------------------------------------------------------------
WIKI_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# sections from here on are apparatus, not article prose
WIKI_TAIL = {"references", "see also", "notes", "further reading", "external links", "bibliography",
             "sources", "footnotes", "citations", "works cited", "notes and references", "primary sources",
             "secondary sources", "selected bibliography", "works", "publications", "discography",
             "filmography"}


def wikipedia_docs() -> tuple[list[Doc], dict]:
    import bz2

    gensim = _require("gensim", "wikipedia")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = Path(gensim.__file__).parent / WIKI_DUMP
    if not dump.exists():
        raise UserError(f"source 'wikipedia': {dump} is missing; it ships in gensim==4.4.0 ({EXTRA_HINT})")
    docs = []
    with bz2.open(dump, "rb") as fh:
        for title, wikitext, _pageid in extract_pages(fh, filter_namespaces=("0",)):
            if wikitext.lstrip().upper().startswith("#REDIRECT"):
                continue
            pars = clean_wikitext(filter_wiki(wikitext))
            if pars:
                docs.append(Doc(title, tuple(pars)))
    return docs, {"source": "wikipedia", "package": f"gensim=={_version('gensim')}", "file": WIKI_DUMP,
                  "licence": "CC BY-SA (Wikipedia contributors; attribute)"}


def clean_wikitext(text: str) -> list[str]:
    """filter_wiki output -> prose paragraphs: no headings, lists, tables, captions or tail sections.
    In wikitext one line is one paragraph."""
    pars = []
    for line in text.splitlines():
        line = line.strip()
        heading = re.fullmatch(r"(=+)\s*(.*?)\s*\1", line)
        if heading:
            if heading.group(2).lower() in WIKI_TAIL:
                break
            continue
        if not line or line[0] in "*#:;|!{}+" or line.lower().startswith(("category:", "file:", "image:")):
            continue
        line = tidy(line.replace("'''", "").replace("''", ""))
        if _is_prose(line):
            pars.append(line)
    return pars


# -- Debian packages, unpacked into the cache -------------------------------------------------
def debian_package(name: str, cache_dir: Path) -> tuple[Path, str]:
    """Root of the unpacked package and its .deb file name (which carries the version)."""
    root = cache_dir / "debian" / name
    done = root / ".unpacked"
    if done.exists():
        return root, done.read_text().strip()
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise UserError(f"fetching Debian package {name!r} needs {tool} (a Debian or Ubuntu machine)")
    root.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["apt-get", "download", name], cwd=root, capture_output=True, text=True)
    debs = sorted(root.glob(f"{name}_*.deb"))
    if got.returncode != 0 or not debs:
        why = (got.stderr.strip().splitlines() or ["no .deb written"])[-1]
        raise UserError(f"apt-get download {name} failed ({why}); run `apt-get update` once and retry")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    done.write_text(debs[-1].name)
    debs[-1].unlink()
    return root, done.read_text().strip()


# -- austen ---------------------------------------------------------------------------------
AUSTEN_BOOKS = {"sensesensibility": "Sense and Sensibility", "prideprejudice": "Pride and Prejudice",
                "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
                "persuasion": "Persuasion"}
CHAPTER = re.compile(r"\s*chapter\s+([ivxlc]+|\d+)\b.{0,40}", re.IGNORECASE)
VOLUME = re.compile(r"\s*volume\s+([ivx]+)\s*", re.IGNORECASE)


def austen_docs(cache_dir: Path) -> tuple[list[Doc], dict]:
    root, deb = debian_package("r-cran-janeaustenr", cache_dir)
    books = read_r_lazyload(root / "usr/lib/R/site-library/janeaustenr/data/Rdata")
    docs = []
    for key, name in AUSTEN_BOOKS.items():  # publication order
        docs += austen_chapters(name, [str(x) for x in books[key]])
    return docs, {"source": "austen", "package": deb, "licence": "public domain"}


def read_r_lazyload(stem: Path) -> dict:
    """Objects of an R lazy-load database (stem.rdx index + stem.rdb blobs). Each blob is a
    4-byte big-endian length followed by zlib data holding one serialized R object."""
    rdata = _require("rdata", "austen")
    from rdata import conversion, parser

    out = {}
    with warnings.catch_warnings():  # rdata warns "Unknown file type: assumed RDS": these are RDS
        warnings.simplefilter("ignore")
        index = rdata.read_rds(str(stem) + ".rdx")
        blob = Path(str(stem) + ".rdb").read_bytes()
        for name, (offset, length) in index["variables"].items():
            raw = zlib.decompress(blob[int(offset) + 4:int(offset) + int(length)])
            out[str(name)] = conversion.convert(parser.parse_data(raw))
    return out


def austen_chapters(book: str, lines: list[str]) -> list[Doc]:
    """A novel's lines -> one Doc per chapter; paragraphs are blank-line separated and re-joined."""
    docs, title, pars, cur, volume = [], None, [], [], ""

    def close_par():
        if cur:
            par = tidy(" ".join(cur).replace("_", ""))  # _word_ marks italics in these texts
            if par:
                pars.append(par)
            cur.clear()

    for line in lines + [""]:
        head = CHAPTER.fullmatch(line)
        vol = VOLUME.fullmatch(line)
        if head or vol or re.fullmatch(r"\s*(THE END|FINIS)\s*", line):
            close_par()
            if title and pars:
                docs.append(Doc(title, tuple(pars)))
            volume = f"Volume {vol.group(1)}, " if vol else volume  # Emma restarts chapter numbers per volume
            title = f"{book}, {volume}Chapter {head.group(1)}" if head else None
            pars = []
        elif not line.strip():
            close_par()
        elif title:  # text before the first chapter is the title page
            cur.append(line.strip())
    close_par()
    if title and pars:
        docs.append(Doc(title, tuple(pars)))
    return docs


# -- pydocs -----------------------------------------------------------------------------------
PYDOCS_SOURCES = "usr/share/doc/python3.11/html/_sources"


def pydocs_docs(cache_dir: Path) -> tuple[list[Doc], dict]:
    system = Path("/") / PYDOCS_SOURCES
    if system.is_dir():  # the package is installed: read it in place
        base, pkg = system, f"python3.11-doc (installed) {_dpkg_version('python3.11-doc')}".strip()
    else:
        root, pkg = debian_package("python3.11-doc", cache_dir)
        base = root / PYDOCS_SOURCES
    docs = []
    for path in sorted(base.rglob("*.rst.txt")):
        pars = clean_rst(path.read_text(encoding="utf-8", errors="replace"))
        if pars:
            docs.append(Doc(str(path.relative_to(base)).removesuffix(".rst.txt"), tuple(pars)))
    return docs, {"source": "pydocs", "package": pkg, "licence": "PSF License (Python documentation)"}


def _dpkg_version(name: str) -> str:
    if shutil.which("dpkg-query") is None:
        return ""
    got = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True)
    return got.stdout.strip()


def clean_rst(text: str) -> list[str]:
    """reStructuredText -> prose paragraphs: drop directives, literal blocks, headings, lists and
    tables; keep the text of inline roles (:func:`len` -> len)."""
    pars, cur = [], []
    skip_indent = None  # inside a directive body or literal block: skip lines indented deeper

    def close():
        if cur:
            par = tidy(" ".join(cur))
            if _is_prose(par):
                pars.append(par)
            cur.clear()

    lines = text.splitlines()
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not line.strip() or indent > skip_indent:
                continue
            skip_indent = None
        stripped = line.strip()
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if not stripped:
            close()
        elif stripped.startswith(".."):  # directive, comment, target, substitution
            close()
            skip_indent = indent
        elif re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}", stripped) or (nxt and re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}", nxt)):
            close()  # a heading line or its under/overline
        elif indent > 0 and not cur:
            continue  # indented block without a lead paragraph: quotes, definitions, tables
        elif re.match(r"([-*+•]|\d+\.|#\.|\|)\s", stripped) or stripped.startswith(("+-", ">>>", "|")):
            close()
            skip_indent = indent
        else:
            cur.append(_rst_inline(stripped.removesuffix("::") + (":" if stripped.endswith("::") else "")))
            if stripped.endswith("::"):
                close()
                skip_indent = indent
    close()
    return pars


def _rst_inline(text: str) -> str:
    text = re.sub(r":[\w:.-]+:`~?!?([^`<]*?)\s*(<[^>]*>)?`", r"\1", text)   # roles, with or without a target
    text = re.sub(r"`([^`<]*?)\s*<[^>]*>`_{1,2}", r"\1", text)           # hyperlinks
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"`([^`]*)`_{0,2}", r"\1", text)
    return re.sub(r"(?<!\w)\*{1,2}([^*]+)\*{1,2}", r"\1", text)


# -- textdir ----------------------------------------------------------------------------------
def textdir_docs(root: Path) -> tuple[list[Doc], dict]:
    if not root.is_dir():
        raise UserError(f"source textdir:{root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    if not files:
        raise UserError(f"source textdir:{root}: no .txt or .md files in it")
    docs = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        pars = clean_markdown(text) if path.suffix == ".md" else clean_plain(text)
        if pars:
            docs.append(Doc(str(path.relative_to(root)), tuple(pars)))
    return docs, {"source": "textdir", "path": str(root), "files": len(files), "licence": "as the files state"}


def clean_plain(text: str) -> list[str]:
    """Blank-line separated paragraphs, hard-wrapped lines joined."""
    return [p for p in (tidy(block) for block in re.split(r"\n\s*\n", text)) if p]


def clean_markdown(text: str) -> list[str]:
    """Markdown -> prose paragraphs: drop fenced code, headings, lists, tables and quotes; keep link text."""
    text = re.sub(r"(?ms)^(```|~~~).*?^\1[^\n]*$", "", text)
    pars = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines()
                 if not re.match(r"\s*(#{1,6}\s|[-*+]\s|\d+[.)]\s|\||>|<)", ln) and not ln.startswith("    ")]
        par = " ".join(lines)
        par = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", par)
        par = re.sub(r"(\*\*|__|\*|_|`)(.+?)\1", r"\2", par)
        par = tidy(par)
        if par:
            pars.append(par)
    return pars
