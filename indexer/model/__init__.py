"""The model: the ONNX towers on ONNX Runtime (:class:`~clipindex.model.encode.Embedder`), the tokenizer, the
model folder's manifest and where it lives, similarity and zero-shot classification.

May import the core modules and :mod:`clipindex.images`; never the store, ingest, ops, web or CLI.
"""
