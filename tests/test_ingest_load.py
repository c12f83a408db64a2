"""Loading and chunking real files of every supported format (no embedder needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.chunk import chunk
from ingest.config import ChunkConfig
from ingest.load import LoadError, load


def make_docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.add_heading("Aspirin and headache", level=1)
    d.add_heading("Background", level=2)
    d.add_paragraph("Aspirin is widely used for tension headache in adults.")
    d.add_heading("Results", level=2)
    d.add_paragraph("Eight hundred patients reported faster relief with 1000 mg aspirin than with placebo.")
    d.save(path)
    return path


def make_pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Two page report")
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def test_every_sample_format_loads_with_title_and_locations(shared_data):
    docs = {p.suffix: load(p)[0] for p in sorted((shared_data / "sample" / "docs").iterdir())}
    assert set(docs) == {".txt", ".md", ".html", ".pdf"}
    corpus = {json.loads(line)["doc_id"]: json.loads(line)["text"]
              for line in (shared_data / "sample" / "corpus.jsonl").read_text().splitlines()}
    for ext, doc in docs.items():
        assert doc.metadata["title"] == f"PubMed {doc.doc_id.split('-')[1]}", ext
        assert doc.metadata["format"] == ext[1:] and len(doc.metadata["sha256"]) == 64
        # the abstract's first words survive every loader
        first_words = " ".join(corpus[doc.doc_id].split()[2:8])
        assert first_words in " ".join(doc.text.split()), ext
        sections = {s[3] for s in doc.metadata["spans"]}
        assert sections & {"BACKGROUND", "OBJECTIVE", "OBJECTIVES", "INTRODUCTION", "AIMS", "PURPOSE"}, ext
    assert {s[2] for s in docs[".pdf"].metadata["spans"]} == {1}


def test_medquad_xml_and_html_keep_question_sections(shared_data):
    docs_dir = shared_data / "sample" / "medquad" / "docs"
    xml = load(docs_dir / "medquad-GARD-0000989.xml")[0]
    assert xml.metadata["title"] == "Cataract anterior polar dominant"
    assert "C1855179" not in xml.text  # UMLS codes are not text
    assert "What are the symptoms of Cataract anterior polar dominant ?" in {s[3] for s in xml.metadata["spans"]}
    html = load(docs_dir / "medquad-MPlusHealthTopics-0000573.html")[0]
    assert html.metadata["title"] == "Lymphoma"
    assert "What is (are) Lymphoma ?" in {s[3] for s in html.metadata["spans"]}


def test_a_text_file_whose_first_line_is_a_paragraph_gets_a_short_title(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Gout is a form of inflammatory arthritis " * 8 + "\n\nIt is treated with colchicine.\n")
    doc = load(path)[0]
    title = doc.metadata["title"]
    assert len(title) <= 121 and title.endswith("…") and title.startswith("Gout is a form of inflammatory arthritis")
    assert "Gout is a form" in doc.text and "colchicine" in doc.text  # the text itself is whole


def test_docx_and_multipage_pdf(tmp_path):
    d = load(make_docx(tmp_path / "aspirin.docx"))[0]
    assert d.metadata["title"] == "Aspirin and headache" and "faster relief" in d.text
    assert {s[3] for s in d.metadata["spans"]} >= {"Background", "Results"}
    p = load(make_pdf(tmp_path / "report.pdf", ["First page about kidneys. " * 20, "Second page about livers. " * 20]))[0]
    pages = {s[2] for s in p.metadata["spans"]}
    assert pages == {1, 2}
    chunks = chunk(p, ChunkConfig(size=300, overlap=0))
    assert any(c.metadata["location"].startswith("p. 2") and "livers" in c.text for c in chunks)
    whole = chunk(p, ChunkConfig(size=3000, overlap=0))  # one chunk over both pages names both
    assert whole[0].metadata["location"].startswith("pp. 1-2") and whole[0].metadata["page"] == 1


def test_jsonl_corpus_records_become_documents(shared_data):
    docs = load(shared_data / "sample" / "corpus.jsonl")
    assert len(docs) == 20 and all(d.metadata["format"] == "jsonl" for d in docs)
    assert docs[0].metadata["year"] and docs[0].metadata["meshes"]
    for d in docs:  # a ~200-word abstract is 1-3 chunks at the default size
        assert 1 <= len(chunk(d)) <= 5  # 700-character chunks (ChunkConfig)


def test_chunks_are_offsets_into_the_document(shared_data):
    doc = load(shared_data / "sample" / "docs" / "pubmed-17089900.txt")[0]
    chunks = chunk(doc, ChunkConfig(size=300, overlap=50))
    assert len(chunks) >= 4
    for n, c in enumerate(chunks):
        assert c.chunk_id == f"{doc.doc_id}#{n}" and doc.text[c.start:c.end] == c.text
        assert c.metadata["source"].endswith("pubmed-17089900.txt") and c.metadata["title"] == "PubMed 17089900"
    assert any(c.metadata["location"] == "RESULTS" for c in chunks)


def test_token_chunking_uses_the_embedder_tokenizer(shared_data):
    from ingest.embed import resolve_embedder

    doc = load(shared_data / "sample" / "docs" / "pubmed-17089900.txt")[0]
    chunks = chunk(doc, ChunkConfig(size=64, overlap=8, unit="token"), tokenizer_path=resolve_embedder("all-MiniLM-L6-v2"))
    assert len(chunks) >= 4 and all(doc.text[c.start:c.end] == c.text for c in chunks)
    with pytest.raises(ValueError, match="chunk unit"):
        chunk(doc, ChunkConfig(unit="word"))
    with pytest.raises(ValueError, match="overlap"):
        chunk(doc, ChunkConfig(size=100, overlap=100))


@pytest.mark.parametrize("name,data,reason", [
    ("empty.txt", b"", "empty file"),
    ("blank.md", b"  \n\n ", "empty file"),
    ("broken.pdf", b"%PDF-1.4\n garbage that is not a pdf body", "corrupt PDF"),
    ("fake.pdf", b"hello, I am not a PDF", "corrupt PDF"),
    ("binary.txt", bytes(range(256)) * 8, "binary"),
    ("slides.pptx", b"PK\x03\x04 something", "unsupported file type '.pptx'"),
    ("broken.docx", b"not a zip at all", "corrupt DOCX"),
    ("bad.jsonl", b'{"doc_id": "a"}\n', "lacks string fields"),
])
def test_bad_files_give_a_one_line_reason(tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(LoadError) as err:
        load(path)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_content_beats_extension(tmp_path):
    """A PDF saved as .txt is loaded as a PDF (magic bytes)."""
    pdf = make_pdf(tmp_path / "x.pdf", ["Renal biopsy findings in lupus nephritis."])
    renamed = tmp_path / "report.txt"
    renamed.write_bytes(pdf.read_bytes())
    doc = load(renamed)[0]
    assert doc.metadata["format"] == "pdf" and "lupus nephritis" in doc.text


def test_safety_and_load_share_one_format_table(tmp_path):
    """ingest.formats is the one table: what the safety screen accepts is what load can read."""
    from ingest.formats import FORMATS, supported_extensions
    from ingest.safety import check_file

    assert supported_extensions() == sorted(FORMATS)
    note = tmp_path / "note.text"  # the rarer spellings are accepted by both
    note.write_text("Aspirin relieved tension headache.\n")
    assert check_file(note) is None and load(note)[0].metadata["format"] == "txt"
    odd = tmp_path / "slides.pptx"
    odd.write_bytes(b"PK\x03\x04 something")
    assert "unsupported" in check_file(odd) and ".text" in check_file(odd)
    with pytest.raises(LoadError, match=r"unsupported.*\.text"):
        load(odd)


def test_pipeline_parses_each_pdf_with_pypdf_once(tmp_path, monkeypatch):
    """The safety screen opens the PDF; load reuses that reader instead of opening it again.
    (unstructured's partition_pdf opens one more itself, for its too-complex-PDF check: not ours.)"""
    import sys

    import pypdf

    from ingest.pipeline import ingest_paths

    ours = []
    original = pypdf.PdfReader.__init__

    def counting_init(self, *args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if "/ingest/" in caller.replace("\\", "/"):
            ours.append(caller)
        original(self, *args, **kwargs)

    monkeypatch.setattr(pypdf.PdfReader, "__init__", counting_init)
    (tmp_path / "docs").mkdir()
    pdf = make_pdf(tmp_path / "docs" / "report.pdf", ["Renal biopsy findings in lupus nephritis."])
    report = ingest_paths([pdf], index=tmp_path / "ix")
    assert report.added == ["report"] and len(ours) == 1, ours
    assert load(pdf)[0].metadata["format"] == "pdf" and len(ours) == 2  # alone, load opens its own
