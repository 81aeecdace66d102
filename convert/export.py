"""Export CLIP's two towers, with their projections, to ONNX.

``vision.onnx``: ``pixel_values`` float32 [batch, 3, S, S] -> ``image_embeds`` float32 [batch, D]
``text.onnx``:   ``input_ids`` int64 [batch, sequence<=context_length] -> ``text_embeds`` float32 [batch, D]

Both are exactly ``CLIPModel.get_image_features`` / ``get_text_features`` (projected, not normalised). The text
tower pools the way transformers does for this checkpoint's config: at ``argmax(input_ids)`` for the legacy
``eos_token_id: 2`` of the hub's openai/clip-* configs, else at the first ``eos_token_id``. Either way that is the
first end-of-text token, and the causal mask keeps padding after it from mattering, so no attention mask is
needed and padded and unpadded inputs give the same vector.
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


def text_pooling_rule(model: Any) -> str:
    """How transformers pools this checkpoint's text tower: ``argmax_input_ids`` or ``first_eos_token``."""
    return "argmax_input_ids" if int(model.config.text_config.eos_token_id) == 2 else "first_eos_token"


def _tower_modules(model: Any) -> tuple[Any, Any]:
    import torch

    class VisionTower(torch.nn.Module):
        def __init__(self, clip: Any) -> None:
            super().__init__()
            self.vision_model = clip.vision_model
            self.visual_projection = clip.visual_projection

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            pooled = self.vision_model(pixel_values=pixel_values).pooler_output
            return self.visual_projection(pooled)

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
