"""Loading a local omni / vision-language checkpoint folder: model, processor and prompt builder.

``AutoModelForCausalLM`` does not load these families, and ``AutoProcessor`` needs torchvision,
so :func:`load_folder` picks the family's model class from ``config.json`` and builds the
processor with :func:`~omnitrace_core.media.omni.processors.load_processor`. A full Qwen2.5-Omni
folder holds a thinker (text) and a talker (speech); only the thinker is loaded and traced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitrace_core.errors import ModelLoadError
from omnitrace_core.media.omni.builder import OmniPromptBuilder
from omnitrace_core.media.omni.processors import load_processor
from omnitrace_core.media.omni.specs import ModalitySpec, spec_for_model_type


@dataclass(frozen=True)
class OmniCheckpoint:
    """A loaded omni / vision-language model with its processor and prompt builder."""

    model: Any
    processor: Any
    builder: OmniPromptBuilder

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def folder_spec(folder: str | Path) -> ModalitySpec | None:
    """The registered family of a model folder (by ``config.json``'s ``model_type``), or None."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text()).get("model_type", "")
    except (OSError, ValueError):
        return None
    return spec_for_model_type(str(model_type))


def load_folder(folder: str | Path, **model_kwargs: Any) -> OmniCheckpoint:
    """Load a local omni / vision-language folder (never downloads).

    Args:
        folder: The checkpoint folder (``config.json``, weights, tokenizer, preprocessor configs).
        **model_kwargs: Passed to ``from_pretrained`` (``dtype``, ``device_map``...).

    Raises:
        ModelLoadError: if the folder is not of a registered family or cannot be loaded.
    """
    import torch
    import transformers

    path = Path(folder).expanduser()
    spec = folder_spec(path)
    if spec is None:
        raise ModelLoadError(f"{path} is not an omni / vision-language model folder of a registered family")
    model_kwargs.setdefault("dtype", torch.float32)
    model_kwargs["local_files_only"] = True
    try:
        model_type = json.loads((path / "config.json").read_text())["model_type"]
        if model_type == "qwen2_5_omni":  # thinker + talker: keep the thinker only
            full = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
                str(path), enable_audio_output=False, **model_kwargs
            )
            model = full.thinker
            model.generation_config = full.generation_config
        else:
            model = getattr(transformers, spec.model_class).from_pretrained(str(path), **model_kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a {spec.family} model from folder {path}: {exc}") from exc
    processor = load_processor(path, spec)
    _ensure_eos(model, processor.tokenizer)
    builder = OmniPromptBuilder.for_model(model, processor, model_name=path.name)
    return OmniCheckpoint(model=model, processor=processor, builder=builder)


def _ensure_eos(model: Any, tokenizer: Any) -> None:
    """Stop decoding at the end of the assistant turn even when the generation config has no eos."""
    config = model.generation_config
    if getattr(config, "eos_token_id", None) is None and tokenizer.eos_token_id is not None:
        config.eos_token_id = tokenizer.eos_token_id
