"""clipindex: index images with CLIP on ONNX Runtime into Qdrant, and search them.

The runtime (this package) needs no torch and no transformers: only onnxruntime, numpy, pillow,
tokenizers and the Qdrant clients. Conversion (``convert/``) is the only part that uses PyTorch.
"""

__version__ = "0.1.0"
