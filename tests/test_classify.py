"""`clipindex classify`: zero-shot probabilities equal transformers' CLIPModel (logits_per_image softmax)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipindex.cli.commands import cli
from clipindex.errors import ImageError
from clipindex.model.classify import classify, label_texts, parse_labels
from clipindex.model.encode import Embedder
from clipindex.model.similarity import zero_shot_probabilities

LABELS = ["a cat", "a dog", "a red car", "a rocket", "a cup of coffee", "a flower"]
NAMES = ("chelsea", "coffee", "rocket", "flower", "astronaut")


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory: pytest.TempPathFactory, sample_photos: dict[str, Any]) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("classify")
    paths = {}
    for name in NAMES:
        paths[name] = folder / f"{name}.png"
        sample_photos[name].save(paths[name])
    return paths


def reference_probabilities(torch_clip: Any, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    """transformers: ``CLIPModel(input_ids, pixel_values).logits_per_image.softmax(-1)``."""
    import torch

    model, tokenizer, processor = torch_clip
    ids = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits_per_image
    return np.asarray(logits.softmax(dim=-1).numpy(), dtype=np.float64)


def as_matrix(results: list[dict[str, Any]], labels: list[str]) -> np.ndarray:
    return np.array([[{s["label"]: s["probability"] for s in r["labels"]}[label] for label in labels] for r in results])


def test_probabilities_equal_transformers(tiny_model_dir: Path, torch_clip, photo_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    images = [Image.open(photo_files[n]).convert("RGB") for n in NAMES]
    embedder = Embedder(tiny_model_dir)
    assert embedder.manifest.logit_scale == pytest.approx(float(torch_clip[0].logit_scale.detach().exp()))
    by_template: dict[str | None, np.ndarray] = {}
    for template in (None, "a photo of {}"):
        expected = reference_probabilities(torch_clip, images, label_texts(LABELS, template))
        results = classify(embedder, [photo_files[n] for n in NAMES], LABELS, template=template)
        assert [r.image for r in results] == [str(photo_files[n]) for n in NAMES]
        got = as_matrix([r.as_json() for r in results], LABELS)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
        by_template[template] = got
        for result in results:
            probabilities = [s.probability for s in result.labels]
            assert probabilities == sorted(probabilities, reverse=True)
            assert result.best == result.labels[0]
    # PIL images give the same as their files
    from_pil = classify(embedder, images, ",".join(LABELS))
    np.testing.assert_allclose(as_matrix([r.as_json() for r in from_pil], LABELS), by_template[None], atol=1e-6)
    assert not np.allclose(by_template[None], by_template["a photo of {}"], atol=1e-3)  # the template matters
    assert from_pil[0].image == "<image 0>"


def test_cli_json_and_text(tiny_model_dir: Path, torch_clip, photo_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    files = [str(photo_files[n]) for n in ("chelsea", "rocket")]
    args = ["classify", *files, "--labels", "a cat, a dog", "--labels", "a red car", "--model-dir", str(tiny_model_dir)]
    result = CliRunner().invoke(cli, [*args, "--json", "--template", "a photo of {}"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["image"] for d in data] == files
    assert all(list(d) == ["image", "labels"] for d in data)
    assert all(set(s) == {"label", "probability", "similarity"} for d in data for s in d["labels"])
    labels = ["a cat", "a dog", "a red car"]
    images = [Image.open(f).convert("RGB") for f in files]
    expected = reference_probabilities(torch_clip, images, label_texts(labels, "a photo of {}"))
    np.testing.assert_allclose(as_matrix(data, labels), expected, atol=1e-4, rtol=0)
    again = CliRunner().invoke(cli, [*args, "--json", "--template", "a photo of {}"])
    assert again.stdout == result.stdout
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0] == files[0] and lines[4] == files[1] and len(lines) == 8
    for line in lines[1:4]:
        percent, label = line.split("%", 1)
        assert label.strip() in labels and 0 <= float(percent) <= 100


def test_unreadable_image_is_reported_and_the_rest_classified(
    tiny_model_dir: Path, photo_files: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    files = [str(photo_files["chelsea"]), str(broken), str(tmp_path / "missing.png")]
    result = CliRunner().invoke(
        cli, ["classify", *files, "--labels", "a cat,a dog", "--json", "--model-dir", str(tiny_model_dir)]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [d["image"] for d in json.loads(result.stdout)] == [files[0]]
    assert f"failed: {broken}" in result.stderr and "missing.png" in result.stderr
    assert "2 of 3 image(s) could not be read" in result.stderr
    with pytest.raises(ImageError):
        classify(Embedder(tiny_model_dir), [broken], ["a cat", "a dog"])


def test_labels_and_template_are_checked(tiny_model_dir: Path, photo_files: dict[str, Path]) -> None:
    assert parse_labels(" cat, dog ,,a red car ") == ["cat", "dog", "a red car"]
    assert parse_labels(["cat,dog", "bird"]) == ["cat", "dog", "bird"]
    for bad in ("", " , ", "cat,cat"):
        with pytest.raises(ValueError):
            parse_labels(bad)
    with pytest.raises(ValueError):
        label_texts(["cat"], "a photo")
    assert label_texts(["cat"], "a {} photo, a {}") == ["a cat photo, a cat"]
    image = str(photo_files["chelsea"])
    for extra in (["--labels", "cat,cat"], ["--labels", " , "], ["--labels", "cat", "--template", "no slot"]):
        result = CliRunner().invoke(cli, ["classify", image, *extra, "--model-dir", str(tiny_model_dir)])
        assert result.exit_code == 2, (extra, result.output)
    result = CliRunner().invoke(cli, ["classify", image, "--model-dir", str(tiny_model_dir)])
    assert result.exit_code == 2 and "--labels" in result.output


def test_softmax_is_stable_and_scaled() -> None:
    images = np.array([[1.0, 0.0], [0.0, 2.0]])
    texts = np.array([[1.0, 0.0], [0.6, 0.8]])
    probs = zero_shot_probabilities(images, texts, 100.0)
    expected_first = np.exp(100 * np.array([1.0, 0.6]))
    np.testing.assert_allclose(probs[0], expected_first / expected_first.sum())
    assert np.isfinite(zero_shot_probabilities(images, texts, 1e6)).all()
