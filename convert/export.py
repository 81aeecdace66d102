"""Export CLIP's two towers, with their projections, to ONNX.

``vision.onnx``: ``pixel_values`` float32 [batch, 3, S, S] -> ``image_embeds`` float32 [batch, D]
``text.onnx``:   ``input_ids`` int64 [batch, sequence<=context_length] -> ``text_embeds`` float32 [batch, D]

Both are exactly ``CLIPModel.get_image_features`` / ``get_text_features`` (projected, not normalised). The text
tower pools the way transformers does for this checkpoint's config: at ``argmax(input_ids)`` for the legacy
``eos_token_id: 2`` of the hub's openai/clip-* configs, else at the first ``eos_token_id``. Either way that is the
first end-of-text token, and the causal mask keeps padding after it from mattering, so no attention mask is
needed and padded and unpadded inputs give the same vector.

The vision tower is written out as the same arithmetic as transformers' ``CLIPVisionModel`` in two cheaper shapes
(recorded in the manifest as ``vision_export``: :data:`VISION_EXPORT`; the converter's parity check proves both):

- ``patch_embedding: matmul``: the patch Conv (kernel = stride = patch size, no padding) is a reshape of the image
  into its [patches, 3 * P * P] rows times the Conv weight as a [3 * P * P, width] matrix. ONNX Runtime runs a MatMul
  faster than that Conv, and ``--quantize int8`` quantizes it with the other MatMuls (ORT's ConvInteger is slow).
- ``last_layer: class_token_only``: the embedding is made from the class token alone (``pooler_output`` is
  ``post_layernorm`` of row 0 of the last hidden state), so the last encoder layer computes keys and values for
  every token but the query, attention output, residuals and MLP for the class token only. That skips about 6.6 %
  of ViT-B/32's FLOPs per image, which ONNX Runtime cannot prune by itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

OPSET = 17
VISION_INPUT = "pixel_values"
VISION_OUTPUT = "image_embeds"
TEXT_INPUT = "input_ids"
TEXT_OUTPUT = "text_embeds"
#: how the vision tower was exported, recorded in the manifest (models converted before it have no such key)
VISION_EXPORT: dict[str, str] = {"patch_embedding": "matmul", "last_layer": "class_token_only"}


def text_pooling_rule(model: Any) -> str:
    """How transformers pools this checkpoint's text tower: ``argmax_input_ids`` or ``first_eos_token``."""
    return "argmax_input_ids" if int(model.config.text_config.eos_token_id) == 2 else "first_eos_token"


def _embeddings(embeddings: Any, pixel_values: Any) -> Any:
    """``CLIPVisionEmbeddings`` (at the model's own image size) with the patch Conv as a reshape and a MatMul:
    [batch, 3, S, S] -> [batch, 1 + (S / P) ** 2, width]."""
    import torch

    conv = embeddings.patch_embedding
    patch = int(embeddings.patch_size)
    batch, channels, height, width = pixel_values.shape
    rows, cols = height // patch, width // patch
    patches = (
        pixel_values.reshape(batch, channels, rows, patch, cols, patch)
        .permute(0, 2, 4, 1, 3, 5)  # [batch, rows, cols, channels, P, P]: one Conv window per row, in its order
        .reshape(batch, rows * cols, channels * patch * patch)
    )
    patch_embeds = torch.matmul(patches, conv.weight.reshape(conv.out_channels, -1).t())
    if conv.bias is not None:
        patch_embeds = patch_embeds + conv.bias
    class_embeds = embeddings.class_embedding.expand(batch, 1, -1)
    tokens = torch.cat([class_embeds, patch_embeds], dim=1)
    return tokens + embeddings.position_embedding(embeddings.position_ids)


def _encoder_layer(layer: Any, hidden: Any, *, class_token_only: bool = False) -> Any:
    """One ``CLIPEncoderLayer`` on ``hidden`` [batch, tokens, width] -> [batch, tokens, width], written out from
    its modules (layer norms, Q/K/V/out projections, MLP) with the eager attention of transformers'
    ``CLIPAttention`` (no mask: the vision tower attends everywhere), so the export does not depend on the
    signature of ``CLIPEncoderLayer.forward``, which changed between transformers 4 and 5.
    ``class_token_only``: queries, residuals and MLP for the class token alone -> [batch, 1, width]."""
    import torch

    attention = layer.self_attn
    batch, tokens, width = hidden.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    rows = 1 if class_token_only else tokens
    residual = hidden[:, :1] if class_token_only else hidden
    normed = layer.layer_norm1(hidden)
    query = attention.q_proj(normed[:, :rows]).view(batch, rows, heads, head_dim).transpose(1, 2)
    keys = attention.k_proj(normed).view(batch, tokens, heads, head_dim).transpose(1, 2)
    values = attention.v_proj(normed).view(batch, tokens, heads, head_dim).transpose(1, 2)
    weights = torch.softmax(torch.matmul(query, keys.transpose(-1, -2)) * attention.scale, dim=-1)
    attended = torch.matmul(weights, values).transpose(1, 2).reshape(batch, rows, width)
    out = residual + attention.out_proj(attended)
    return out + layer.mlp(layer.layer_norm2(out))


def _tower_modules(model: Any) -> tuple[Any, Any]:
    import torch

    class VisionTower(torch.nn.Module):
        def __init__(self, clip: Any) -> None:
            super().__init__()
            self.vision_model = clip.vision_model
            self.visual_projection = clip.visual_projection

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            vision = self.vision_model
            hidden = vision.pre_layrnorm(_embeddings(vision.embeddings, pixel_values))
            *layers, last = vision.encoder.layers
            for layer in layers:
                hidden = _encoder_layer(layer, hidden)
            class_token = _encoder_layer(last, hidden, class_token_only=True)[:, 0]
            return self.visual_projection(vision.post_layernorm(class_token))

    class TextTower(torch.nn.Module):
        def __init__(self, clip: Any) -> None:
            super().__init__()
            self.text_model = clip.text_model
            self.text_projection = clip.text_projection

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            pooled = self.text_model(input_ids=input_ids).pooler_output
            return self.text_projection(pooled)

    return VisionTower(model).eval(), TextTower(model).eval()


def export_towers(model: Any, out_dir: Path, *, image_size: int, context_length: int, eos_token_id: int) -> None:
    """Write ``vision.onnx`` and ``text.onnx`` for ``model`` (a transformers ``CLIPModel``) into ``out_dir``."""
    import torch

    vision, text = _tower_modules(model)
    pixel_values = torch.zeros(2, 3, image_size, image_size, dtype=torch.float32)
    input_ids = torch.full((2, context_length), eos_token_id, dtype=torch.int64)
    input_ids[:, 0] = 0
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            vision,
            (pixel_values,),
            str(out_dir / "vision.onnx"),
            input_names=[VISION_INPUT],
            output_names=[VISION_OUTPUT],
            dynamic_axes={VISION_INPUT: {0: "batch"}, VISION_OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        torch.onnx.export(
            text,
            (input_ids,),
            str(out_dir / "text.onnx"),
            input_names=[TEXT_INPUT],
            output_names=[TEXT_OUTPUT],
            dynamic_axes={TEXT_INPUT: {0: "batch", 1: "sequence"}, TEXT_OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
