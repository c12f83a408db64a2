"""Ingestion: documents -> chunks -> embeddings -> an on-disk FAISS index. Knows nothing of `app`."""
