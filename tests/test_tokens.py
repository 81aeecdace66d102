"""Runtime tokenization (`tokenizers` + tokenizer.json) against transformers' CLIPTokenizer, real vocabulary."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from clipindex.model.tokens import TextTokenizer, valid_unicode

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "dog",
    "red",
    "car",
    "astronaut",
    "rocket",
    "coffee",
    "cup",
    "flower",
    "china",
    "vase",
    "beach",
    "sunset",
    "mountain",
    "city",
    "night",
    "portrait",
    "selfie",
    "birthday",
    "party",
    "wedding",
    "snow",
    "tree",
    "forest",
    "river",
    "bridge",
    "street",
    "market",
    "food",
    "pizza",
    "sushi",
    "ramen",
    "bicycle",
    "motorbike",
    "airplane",
    "train",
    "boat",
    "harbour",
    "museum",
    "painting",
    "sculpture",
]
SNIPPETS = [
    "don't",
    "it's",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "she'd",
    "rock'n'roll",
    "e-mail",
    "U.S.A.",
    "3.14159",
    "1,000,000",
    "#hashtag",
    "@user",
    "http://example.com/a?b=c",
    "C++",
    "naïve",
    "café",
    "Straße",
    "Ελληνικά",
    "русский текст",
    "العربية",
    "עברית",
    "हिन्दी",
    "日本語",
    "中文字符",
    "한국어",
    "🐕",
    "🚀🌕",
    "👩‍👩‍👧‍👦",
    "∑∫√∞",
    "…",
    "—",
    "“quoted”",
    "'single'",
    "<|endoftext|>",
    "<|startoftext|>",
    "\t",
    "\n\n",
    "   ",
    "ＦＵＬＬＷＩＤＴＨ",
    "ﬁ ligature",
    "é",
    "é",
]


def varied_strings(count: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    alphabet_ranges = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x3040, 0x30FF),
        (0x4E00, 0x4FFF),
        (0xAC00, 0xAD00),
        (0x1F300, 0x1F64F),
        (0x2000, 0x206F),
    ]
    out = ["", " ", "a photo of a cat", "A PHOTO OF A CAT", "a  photo\tof\na cat"]
    while len(out) < count:
        kind = rng.randrange(5)
        if kind == 0:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        elif kind == 1:
            text = " ".join(rng.choice(WORDS + SNIPPETS) for _ in range(rng.randint(1, 20)))
        elif kind == 2:  # random code points from several scripts
            lo, hi = rng.choice(alphabet_ranges)
            text = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 40)))
        elif kind == 3:  # long: well past 77 tokens
            text = " ".join(rng.choice(WORDS + SNIPPETS) for _ in range(rng.randint(60, 200)))
        else:
            text = rng.choice(WORDS).capitalize() + rng.choice([".", "!", "?", "...", ",", ""]) * rng.randint(1, 3)
            text = rng.choice(["", " ", "  "]) + text + rng.choice(["", " ", "\n"])
        out.append(text)
    return out


@pytest.fixture(scope="module")
def runtime_tokenizer(tiny_model_dir: Path) -> TextTokenizer:
    return TextTokenizer(tiny_model_dir / "tokenizer.json", context_length=77, pad_token_id=49407)


def test_known_ids(runtime_tokenizer: TextTokenizer) -> None:
    assert runtime_tokenizer.token_ids("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert runtime_tokenizer.token_ids("") == [49406, 49407]


def test_ids_equal_clip_tokenizer_on_1000_strings(runtime_tokenizer: TextTokenizer, torch_clip) -> None:  # type: ignore[no-untyped-def]
    _, reference, _ = torch_clip
    texts = varied_strings(1200)
    mismatches = []
    long_texts = 0
    for text in texts:
        expected = reference(text, truncation=True, max_length=77)["input_ids"]
        got = runtime_tokenizer.token_ids(text)
        long_texts += len(expected) == 77
        if got != expected:
            mismatches.append((text, got[:10], expected[:10]))
    assert not mismatches, mismatches[:5]
    assert long_texts >= 100, "the corpus must exercise truncation"


def test_truncation_at_77_keeps_end_token_and_reports_it(runtime_tokenizer: TextTokenizer) -> None:
    long_text = " ".join(["rocket"] * 200)
    batch = runtime_tokenizer.encode([long_text, "a cat"])
    assert batch.input_ids.shape == (2, 77)
    assert batch.input_ids[0, 0] == 49406 and batch.input_ids[0, -1] == 49407
    assert batch.truncated == (True, False)
    # the short row is padded with the pad id after its own end token
    assert list(batch.input_ids[1, :4]) == [49406, 320, 2368, 49407]
    assert np.all(batch.input_ids[1, 4:] == 49407)


def test_text_that_is_not_valid_unicode_is_tokenized_with_replacement_characters(
    runtime_tokenizer: TextTokenizer,
) -> None:
    escaped = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # a non-UTF-8 command-line argument
    replaced = runtime_tokenizer.token_ids("caf\ufffd au lait")
    assert runtime_tokenizer.token_ids(escaped) == replaced
    assert runtime_tokenizer.encode([escaped, "\ud800 lone"]).input_ids.shape[0] == 2
    assert valid_unicode("café 🐈 au lait") == "café 🐈 au lait"  # valid text is untouched


def test_batch_is_padded_to_longest_row_only(runtime_tokenizer: TextTokenizer) -> None:
    batch = runtime_tokenizer.encode(["a cat", "a photo of a cat"])
    assert batch.input_ids.shape == (2, 7)
    assert batch.input_ids.dtype == np.int64


def test_load_tokenizer_equals_tokenizers_own_loader(tiny_model_dir: Path) -> None:
    """The piecewise loader builds the very tokenizer ``Tokenizer.from_file`` builds: same serialised JSON
    (vocabulary, merges, added tokens and their ids, normalizer, pre-tokenizer, post-processor, decoder)."""
    import json

    from tokenizers import Tokenizer

    from clipindex.model.tokens import load_tokenizer

    path = tiny_model_dir / "tokenizer.json"
    ours, theirs = load_tokenizer(path), Tokenizer.from_file(str(path))
    assert json.loads(ours.to_str()) == json.loads(theirs.to_str())
    for text in ("a photo of a cat", "<|endoftext|> Héllo  wörld!! 123", "日本語の写真", ""):
        assert ours.encode(text).ids == theirs.encode(text).ids


def test_an_unreadable_tokenizer_is_a_model_error(tmp_path: Path) -> None:
    from clipindex.errors import ModelNotFoundError

    for body in (b'{"model": {"type": "BPE", "vocab": {}, "merges": [["a", "b"]', b"\xff\xfe not utf-8"):
        path = tmp_path / "tokenizer.json"
        path.write_bytes(body)
        with pytest.raises(ModelNotFoundError, match="unreadable tokenizer"):
            TextTokenizer(path, context_length=77, pad_token_id=49407)
