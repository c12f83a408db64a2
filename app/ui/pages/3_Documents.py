"""Documents: upload files into an index (in the background, with progress), list, remove, create."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import streamlit as st

from app.jobs import runner
from app.ui import state

st.set_page_config(page_title="Loracle · Documents", page_icon="📄", layout="wide")
state.keep_widgets()
st.title("Documents")
st.caption("Upload files into a retrieval index: PDF, DOCX, HTML, Markdown, text, XML. Several at once.")


def human_chars(n: int | None) -> str:
    """A count of characters (of extracted text, not bytes on disk), e.g. '12,345 chars'; '-' if unknown."""
    return f"{int(n):,} chars" if isinstance(n, (int, float)) else "-"


@st.cache_data(max_entries=8, show_spinner=False)
def text_sizes(index_name: str, stamp: tuple) -> dict[str, int]:
    """Characters of extracted text per document (the furthest chunk end); cached per index generation."""
    from ingest.index import Index

    ix = Index.open(index_name)
    try:
        sizes: dict[str, int] = {}
        for _, c in ix.iter_chunks():
            sizes[c.doc_id] = max(sizes.get(c.doc_id, 0), c.end)
        return sizes
    finally:
        ix.close()


def doc_row(d: dict, sizes: dict[str, int]) -> dict:
    """One table row from `Index.documents()`; the text size is the extracted text's length in characters
    (ingest records no file size in bytes)."""
    return {"doc_id": d.get("doc_id"), "title": d.get("title"), "format": d.get("format"), "chunks": d.get("chunks", 0),
            "text size": human_chars(sizes.get(d.get("doc_id"))),
            "added": str(d.get("added") or "")[:19].replace("T", " "),
            "source": d.get("source"), "sha256": str(d.get("sha256") or "")[:12]}


with st.expander("Create a new index"):
    with st.form("create_index", enter_to_submit=False):
        new_name = st.text_input("Index name", key="new_index_name", placeholder="e.g. my-papers")
        from ingest.config import ChunkConfig

        n1, n2 = st.columns(2)
        chunk_size = n1.number_input("Chunk size (characters)", 50, 20000, ChunkConfig.size, key="new_index_size",
                                     help="An adapter reads best from chunks like those it was trained on: its "
                                          "card's answer settings name them (the shipped medical adapter: 3000 / 0, "
                                          "one chunk per abstract).")
        chunk_overlap = n2.number_input("Overlap (characters)", 0, 5000, ChunkConfig.overlap, key="new_index_overlap")
        if st.form_submit_button("Create index"):
            with state.friendly_errors("Creating the index"):
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", new_name or ""):
                    raise ValueError(f"invalid index name '{new_name}': use letters, digits, '-' or '_'")
                if new_name in state.indexes():
                    raise ValueError(f"index '{new_name}' already exists; pick another name")
                from ingest.config import indexes_dir
                from ingest.index import Index

                from ingest.chunk import validate

                chunker = ChunkConfig(size=int(chunk_size), overlap=int(chunk_overlap))
                validate(chunker)
                Index.create(indexes_dir() / new_name, chunk=chunker).close()
                st.session_state["doc_index"] = new_name
                st.success(f"Created index '{new_name}'.")

names = state.indexes()
if not names:
    st.info("No index yet: create one above, or run `loracle ingest` / `make run` to build the default index.")
    st.stop()
index = state.index_picker("doc_index")


def run_ingest(paths: list[Path], index_name: str, tmp: Path, shown: dict[str, str]):
    from ingest.pipeline import ingest_paths

    sources = {str(p): f"upload: {shown.get(str(p), p.name)}" for p in paths}  # not the temporary copy's path

    def job(report):
        try:
            return ingest_paths(paths, index=index_name, sources=sources,
                                progress=lambda done, total, *a: report.steps(done, total, f"{done}/{total} files"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return runner().submit("ingest", f"ingest {len(paths)} file(s) into '{index_name}'", job, targets=(index_name,))


def show_report(report) -> None:
    new = len(report.added) - len(report.replaced)
    done = [f"added {new} new document(s)"] + ([f"replaced {len(report.replaced)} changed one(s)"]
                                                if report.replaced else [])
    done += [f"{report.chunks_added} chunk(s)"] + ([f"skipped {len(report.skipped)} unchanged"]
                                                   if report.skipped else [])
    message = "; ".join(done).capitalize() + "."
    if report.added:
        st.success(message)
    elif report.skipped:
        st.info(message)
    else:
        st.warning("Nothing was added to the index: every file was rejected (reasons below).")
    names = st.session_state.get("upload_names", {})  # stored path -> the name the user uploaded
    rejected = st.session_state.get("upload_refused", []) + [
        (names.get(path, Path(path).name), reason) for path, reason in report.rejected]
    if rejected:
        st.error(f"{len(rejected)} file(s) rejected:")
        import pandas as pd

        st.dataframe(pd.DataFrame(rejected, columns=["file", "reason"]), hide_index=True, width="stretch")


uploads = st.file_uploader("Add files", accept_multiple_files=True, key="uploads",
                           help="Drag and drop several files. Unchanged files are skipped; changed ones replaced.")
if st.button("Add to index", type="primary", key="add_docs", disabled=not uploads):
    with state.friendly_errors("Uploading"):
        from ingest.safety import stage_uploads

        tmp = Path(tempfile.mkdtemp(prefix="loracle-upload-"))
        # safe stored names; bad names, sizes and contents are refused before anything is written
        staged = stage_uploads(((f.name, f.getvalue()) for f in uploads), tmp)
        st.session_state["upload_refused"], st.session_state["upload_names"] = staged.rejected, staged.shown
        st.session_state["ingest_job"] = run_ingest(staged.paths, index, tmp, staged.shown).id

job_id = st.session_state.get("ingest_job")
active = state.active_job("ingest")
if active is not None and active.id != job_id:
    st.info(f"Another ingest is running: {active.title}")
if job_id:
    try:
        job = state.follow_job(runner().get(job_id))
    except KeyError:
        job = None
    if job is not None and job.status == "done":
        show_report(job.result)

st.subheader(f"Documents in '{index}'")
if "doc_notice" in st.session_state:
    st.success(st.session_state.pop("doc_notice"))
with state.friendly_errors("Reading the index"):
    from ingest.index import Index

    idx = Index.open(index)
    docs = idx.documents()
    if not docs:
        st.info("This index is empty: add files above.")
    else:
        import pandas as pd

        sizes = text_sizes(index, idx.stamp())
        df = pd.DataFrame([doc_row(d, sizes) for d in docs])
        st.caption(f"{len(docs)} document(s), {int(df['chunks'].sum())} chunk(s)")
        st.dataframe(df, hide_index=True, width="stretch")
        c1, c2 = st.columns([3, 1])
        doc_ids = [str(d.get("doc_id")) for d in docs]
        victim = c1.selectbox("Remove a document", doc_ids, key="remove_doc", index=None,
                              placeholder="choose a document")
        sure = c1.checkbox("Yes, remove it and its chunks from this index (the source file is not touched)",
                           key=f"remove_sure_{victim}", disabled=victim is None)
        if c2.button("Remove", key="remove_btn", disabled=victim is None or not sure):
            with state.friendly_errors(f"Removing '{victim}'"):
                if not idx.remove(victim):
                    raise ValueError(f"'{victim}' is no longer in index '{index}'")
                st.session_state["doc_notice"] = f"Removed '{victim}' from '{index}'."
                st.rerun()
