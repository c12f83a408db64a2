"""`loracle ingest | index | search`: documents into an index, the indexes on disk, retrieval from one."""
from __future__ import annotations

import argparse
import json
import sys

from app.cliconfig import positive_int
from app.config import DEFAULT_INDEX, DEFAULT_K


def register(sub: argparse._SubParsersAction) -> None:
    from ingest.config import DEFAULT_EMBEDDER, ChunkConfig

    d = ChunkConfig()
    p = sub.add_parser("ingest", help="add files, folders or a JSONL corpus to an index (incremental)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (pdf, docx, html, md, txt, xml) "
                   "or a .jsonl corpus of {doc_id, text} records")
    p.add_argument("--index", default=DEFAULT_INDEX,
                   help=f"index name under indexes/ or a folder (default: {DEFAULT_INDEX})")
    p.add_argument("--remove", action="append", default=[], metavar="DOC", help="remove a document id (repeatable)")
    p.add_argument("--chunk-size", type=int, default=None, help=f"chunk size (default {d.size}); on an existing index "
                   "the new settings must come with all of its documents, which are then re-chunked")
    p.add_argument("--chunk-overlap", type=int, default=None, help=f"chunk overlap (default {d.overlap})")
    p.add_argument("--chunk-unit", choices=("char", "token"), default=None, help=f"chunk size unit (default {d.unit})")
    p.add_argument("--embedder", default=None, help=f"sentence-transformers folder or id (default {DEFAULT_EMBEDDER}; "
                   "must match the index's)")
    p.add_argument("--index-type", choices=("auto", "flat", "hnsw", "ivf"), default=None, help="vector index of a NEW "
                   "index: auto (default: exact flat below 100k chunks, IVF-SQ8 above), flat, hnsw or ivf (docs/scale.md)")
    p.add_argument("--store", choices=("faiss", "milvus"), default=None, help="where a NEW index keeps its vectors: "
                   "faiss (default, a file in the index folder) or milvus")
    p.add_argument("--uri", default=None, help="with --store milvus: a .db path for the embedded milvus-lite (default: "
                   "vectors.db in the index folder) or http://HOST:19530 for a Milvus server")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run_ingest)

    p = sub.add_parser("index", help="list, show or remove indexes")
    isub = p.add_subparsers(dest="index_command", required=True)
    q = isub.add_parser("list", help="list indexes with their counts")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_run_index)
    for cmd, help_ in (("show", "show an index's manifest and documents"), ("remove", "delete a whole index")):
        q = isub.add_parser(cmd, help=help_)
        q.add_argument("name", help="index name or folder")
        q.add_argument("--json", action="store_true")
        if cmd == "remove":
            q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        q.set_defaults(func=_run_index)

    p = sub.add_parser("search", help="retrieve passages for a question (or a JSONL file of questions)")
    p.add_argument("query", nargs="?", help="the question, in quotes")
    p.add_argument("--index", default=DEFAULT_INDEX, help=f"index name or folder (default: {DEFAULT_INDEX})")
    p.add_argument("-k", type=positive_int, default=DEFAULT_K, help=f"passages (or, with --queries, documents) to return (default {DEFAULT_K})")
    p.add_argument("--hybrid", action="store_true", help="dense + BM25, fused by reciprocal rank fusion")
    p.add_argument("--reranker", default=None, help="local cross-encoder folder to rerank candidates")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--queries", default=None, metavar="FILE.jsonl", help="QA JSONL ({id, question, "
                   "context_doc_id?}); writes one JSON line per question and prints recall@k when gold ids exist")
    p.add_argument("--out", default=None, metavar="FILE", help="with --queries: write the lines here (default stdout)")
    p.set_defaults(func=_run_search)


def _ingest_config(args):
    """IngestConfig from the chunking/embedder flags over the index's own settings; None when none is given."""
    from ingest.config import DEFAULT_EMBEDDER, ChunkConfig, IngestConfig
    from ingest.index import Index, index_path

    if all(v is None for v in (args.chunk_size, args.chunk_overlap, args.chunk_unit, args.embedder)):
        return None
    d = ChunkConfig()
    units = "characters" if d.unit == "char" else "tokens"
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size {args.chunk_size}: give a chunk size of at least 1 (default {d.size} {units})")
    if args.chunk_overlap is not None and args.chunk_overlap < 0:
        raise ValueError(f"--chunk-overlap {args.chunk_overlap}: give 0 or more (default {d.overlap} {units})")
    base = Index.open(args.index) if (index_path(args.index) / "manifest.json").is_file() else None
    chunk = base.chunk_config if base else ChunkConfig()
    config = IngestConfig(
        embedder=args.embedder or (base.embedder if base else DEFAULT_EMBEDDER),
        chunk=ChunkConfig(size=chunk.size if args.chunk_size is None else args.chunk_size,
                          overlap=chunk.overlap if args.chunk_overlap is None else args.chunk_overlap,
                          unit=args.chunk_unit or chunk.unit))
    if base:
        base.close()
    return config


def _run_ingest(args) -> int:
    from tqdm import tqdm

    from ingest.config import DEFAULT_EMBEDDER, ChunkConfig
    from ingest.index import Index, index_path, remove_index
    from ingest.pipeline import ingest_paths

    if not args.paths and not args.remove:
        raise ValueError("nothing to do: give files/folders to add, or --remove DOC")
    config = _ingest_config(args)
    layout = {"index_type": args.index_type, "store": args.store, "uri": args.uri}
    exists = (index_path(args.index) / "manifest.json").is_file()
    created = bool(args.paths) and not exists  # only for files to add: ingest_paths refuses a removal from none
    if created:
        Index.create(args.index, embedder=config.embedder if config else DEFAULT_EMBEDDER,
                     chunk=config.chunk if config else ChunkConfig(),
                     **{k: v for k, v in layout.items() if v is not None}).close()
    elif exists and any(v is not None for v in layout.values()):
        m = json.loads((index_path(args.index) / "manifest.json").read_text())
        vectors = m.get("vectors") or {"store": "faiss"}
        have = {"index_type": m.get("index_type"), "store": vectors["store"], "uri": vectors.get("uri")}
        bad = [f"--{k.replace('_', '-')} {v} (it has {have[k]})" for k, v in layout.items() if v is not None and v != have[k]]
        if bad:
            raise ValueError(f"index '{args.index}' exists; {', '.join(bad)} only apply to a new index: "
                             "drop the flag, or ingest into a new --index")
    bar = tqdm(total=0, unit="doc", desc=f"ingest -> {args.index}", disable=args.json or not args.paths)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(name[-40:], refresh=True)

    report = None
    try:
        report = ingest_paths(args.paths, index=args.index, config=config, progress=progress, remove=args.remove)
    finally:
        bar.close()
        if created and not (report and report.added):  # a typo'd name (or a failed run) leaves no empty index
            remove_index(args.index)
    if created and not report.added:
        report.index = f"{report.index} (not created: no document was added)"
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(report), indent=1))
    else:
        print(f"index {report.index}: added {len(report.added)} ({len(report.replaced)} replaced, "
              f"{report.chunks_added} chunks), skipped {len(report.skipped)} unchanged, "
              f"removed {len(report.removed)}, rejected {len(report.rejected)}")
        for path, reason in report.rejected:
            print(f"  rejected {path}: {reason}")
        for doc_id, twin in report.duplicates:
            print(f"  note: {doc_id} has the same content as {twin}; both are kept (`loracle ingest --remove "
                  f"{doc_id} --index {args.index}` if it is a copy)")
    return 0 if report.added or report.removed or report.skipped or not report.rejected else 1


def _run_index(args) -> int:
    from ingest.index import Index, index_path, list_indexes, remove_index

    if args.index_command == "list":
        rows = []
        for name in list_indexes():
            m = json.loads((index_path(name) / "manifest.json").read_text())
            rows.append({"name": name, **m["counts"], "embedder": m["embedder"]["name"], "updated": m["updated"]})
        if args.json:
            print(json.dumps(rows, indent=1))
        for r in [] if args.json else rows:
            print(f"{r['name']:<24} {r['documents']:>6} docs {r['chunks']:>7} chunks  {r['embedder']}  "
                  f"{r['updated'][:19]}")
        if not rows and not args.json:
            print("no indexes yet: `loracle ingest PATH --index NAME`")
    elif args.index_command == "show":
        ix = Index.open(args.name)
        try:
            m, docs = ix.manifest, ix.documents()
        finally:
            ix.close()
        if args.json:
            print(json.dumps({**{k: v for k, v in m.items() if k != "documents"}, "documents": docs}, indent=1))
            return 0
        vectors = m.get("vectors") or {"store": "faiss"}
        where = f"Milvus {vectors['uri']} ({vectors['collection']})" if vectors["store"] == "milvus" else "FAISS"
        print(f"index {ix.path}\n  embedder {m['embedder']['name']} (dim {m['embedder']['dim']}), {m['index_type']} "
              f"{where}, chunks {m['chunker']['size']}/{m['chunker']['overlap']} {m['chunker']['unit']}\n"
              f"  {m['counts']['documents']} documents, {m['counts']['chunks']} chunks, updated {m['updated'][:19]}")
        for d in docs:
            print(f"  {d['doc_id']:<32} {d['chunks']:>4} chunks  {d['format']:<5} {d['title'][:40]}  {d['source']}")
    else:
        manifest = index_path(args.name) / "manifest.json"  # its counts: no need to load the vectors to ask
        if not args.yes and sys.stdin.isatty() and manifest.is_file():
            n = json.loads(manifest.read_text())["counts"]["documents"]
            if input(f"delete index {index_path(args.name)} and its {n} document(s)? [y/N] ").strip().lower() != "y":
                print("kept")
                return 1
        path = remove_index(args.name)
        print(json.dumps({"removed": str(path)}) if args.json else f"removed index {path}")
    return 0


def _search_queries(args, retriever, items) -> int:
    """--queries FILE.jsonl: one JSON line per question (to --out or stdout); recall@k on stderr when gold ids exist."""
    from app.retrieve import rank_documents, recall_at

    results = retriever.search_many([it.question for it in items], k=3 * args.k)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    rows = []
    try:
        for it, ps in zip(items, results):
            docs = rank_documents(ps)[:args.k]
            best = {}  # each ranked document's best chunk, so chunk_ids line up with doc_ids
            for p in ps:
                best.setdefault(p.doc_id, p.chunk.chunk_id)
            row = {"id": it.id, "question": it.question, "context_doc_id": it.context_doc_id,
                   "doc_ids": [d for d, _ in docs], "scores": [round(s, 5) for _, s in docs],
                   "chunk_ids": [best.get(d) for d, _ in docs]}
            rows.append(row)
            out.write(json.dumps(row) + "\n")
    finally:
        if args.out:
            out.close()
    gold = [r for r in rows if r["context_doc_id"]]
    if gold:
        ks = sorted({k for k in (1, 5, 10) if k <= args.k} | {args.k})
        summary = recall_at([r["doc_ids"] for r in gold], [r["context_doc_id"] for r in gold], ks)
        print(f"{len(gold)} questions, {'hybrid' if args.hybrid else 'dense'}: "
              + "  ".join(f"recall@{k}={v:.3f}" for k, v in summary.items()), file=sys.stderr)
    return 0


def _run_search(args) -> int:
    from app.questions import load_questions
    from app.retrieve import get_retriever

    if not args.query and not args.queries:
        raise ValueError("give a question, or --queries FILE.jsonl")
    items = load_questions(args.queries) if args.queries else None  # bad lines named before any model loads
    retriever = get_retriever(args.index, hybrid=args.hybrid, reranker=args.reranker)
    if not len(retriever.index):  # an empty result would otherwise read as "nothing matched"
        print(f"index '{args.index}' holds no chunks yet (a build still running or interrupted?): add documents with "
              f"`loracle ingest FILES --index {args.index}`", file=sys.stderr)
    if items:
        return _search_queries(args, retriever, items)
    passages = retriever.search(args.query, k=args.k)
    if args.json:
        print(json.dumps([{"rank": p.rank, "score": round(p.score, 5), "doc_id": p.doc_id, "location": p.location,
                           "title": p.chunk.metadata.get("title"), "source": p.chunk.metadata.get("source"),
                           "chunk_id": p.chunk.chunk_id, "text": p.chunk.text} for p in passages], indent=1))
        return 0
    for p in passages:
        where = ", ".join(x for x in (p.chunk.metadata.get("title"), p.location) if x)
        print(f"[{p.rank}] {p.score:.3f}  {p.doc_id}  ({where})  {p.chunk.metadata.get('source')}")
        print("    " + " ".join(p.chunk.text.split())[:300])
    return 0
