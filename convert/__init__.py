"""Conversion: a CLIP checkpoint (hub id or local folder) to a verified ONNX model folder.

Needs the ``[convert]`` extra (torch, transformers, onnx), imported only when a conversion runs. May import the
core modules and :mod:`clipindex.model` (the model-folder contract, the tokenizer it verifies); the runtime
reaches it only through :mod:`clipindex.convert.auto`.
"""
