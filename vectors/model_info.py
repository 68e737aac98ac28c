"""What a vector records about the model it was made on.

The fingerprint hashes the architecture's shape and a sample of the input
embedding, rounded to bfloat16 so that one checkpoint loaded in float32 or
bfloat16 gets the same fingerprint, while a different checkpoint of the same
architecture does not.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from hooks import num_layers


def text_config(model: nn.Module):  # -> PretrainedConfig
    """The text part of the model's config (multimodal configs nest it)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream."""
    return int(text_config(model).hidden_size)


def model_name(model: nn.Module) -> str:
    """A human-readable model id: registry name, hub id or folder path."""
    name = getattr(model.config, "_name_or_path", "") or ""
    return str(name) or type(model).__name__


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """A short hash that tells checkpoints apart (see module docs)."""
    config = text_config(model)
    digest = hashlib.sha256()
    shape = (getattr(config, "model_type", ""), hidden_size(model), num_layers(model), getattr(config, "vocab_size", 0))
    digest.update(repr(shape).encode())
    embeddings = model.get_input_embeddings().weight
    if embeddings.device.type != "meta":
        step = max(1, embeddings.shape[0] // 16)
        sample = embeddings[::step][:16].detach().to("cpu", torch.bfloat16).float()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
