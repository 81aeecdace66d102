"""Ingest: walk a folder, decode ahead, embed in batches, upsert verified points, remember failures, and report
live progress (:func:`clipindex.ingest.pipeline.ingest`).

May import the core modules, :mod:`clipindex.images`, :mod:`clipindex.model` and :mod:`clipindex.store`; never
ops, web or the CLI.
"""
