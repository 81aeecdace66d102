"""clipindex conversion: CLIP checkpoint (hub id or local folder) -> verified ONNX model folder.

Needs the ``[convert]`` extra (torch, transformers, onnx). Nothing here is imported by the runtime.
"""
