"""Checks at the public boundary: every refusal an :class:`InvalidInputError` naming field and value.

The tracer, its constructors, the CLI and the adapters call these before anything reaches
the tokenizer or ``model.generate``, so a bad argument fails with a message such as
``max_new_tokens=nan: must be a positive whole number`` instead of a ``TypeError`` deep in
transformers. What is checked (and why) is listed in ``docs/reliability.md``.
"""

from __future__ import annotations

import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from omnitrace_core.errors import InvalidInputError

#: How much of a refused value an error message shows.
_SHOW = 80


def show(value: Any) -> str:
    """A short, printable ``repr`` of a refused value (long strings and bytes cut)."""
    try:
        text = repr(value)
    except Exception:  # a value whose repr raises still gets named
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


def invalid(field: str, value: Any, problem: str) -> InvalidInputError:
    """An :class:`InvalidInputError` ``"{field}={value!r}: {problem}"`` with ``.field`` / ``.value`` set."""
    exc = InvalidInputError(f"{field}={show(value)}: {problem}")
    exc.field = field  # type: ignore[attr-defined]
    exc.value = value  # type: ignore[attr-defined]
    return exc


def first_surrogate(text: str) -> int | None:
    """Index of the first lone UTF-16 surrogate (``\\ud800``-``\\udfff``) in ``text``, if any.

    Such code points cannot be encoded as UTF-8: tokenizers refuse them with a ``TypeError``
    and JSON output would not round-trip. They come from surrogate-escaped bytes
    (``errors="surrogateescape"``) or broken UTF-16 input.
    """
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return None


def check_text(value: Any, field: str, *, allow_empty: bool = False) -> str:
    """A text argument (question, response, source text): a ``str`` with no lone surrogate.

    Raises:
        InvalidInputError: naming ``field`` and the value (type, empty, or the surrogate's index).
    """
    if not isinstance(value, str):
        raise invalid(field, value, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        exc = InvalidInputError(f"{field} is empty (got {show(value)})")
        exc.field, exc.value = field, value  # type: ignore[attr-defined]
        raise exc
    at = first_surrogate(value)
    if at is not None:
        raise invalid(
            field,
            value,
            f"holds a lone surrogate {value[at]!r} at character {at} (not valid Unicode text: "
            "decode the bytes as UTF-8, or replace undecodable bytes)",
        )
    return value


def check_positive_int(value: Any, field: str) -> int:
    """A count such as ``max_new_tokens``: an ``int`` (not ``bool``), finite, ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise invalid(field, value, f"must be a positive whole number, got {type(value).__name__}")
    if int(value) < 1:
        raise invalid(field, value, "must be >= 1")
    return int(value)


def check_number(
    value: Any,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (not ``bool``) in ``[low, high]`` (``(`` / ``)`` when open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise invalid(field, value, f"must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise invalid(field, value, "must be a finite number")
    lo_bad = low is not None and (number <= low if low_open else number < low)
    hi_bad = high is not None and (number >= high if high_open else number > high)
    if lo_bad or hi_bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise invalid(field, value, f"must be in {left}{lo}, {hi}{right}")
    return number


def check_generation_kwargs(gen: Mapping[str, Any]) -> None:
    """Check the decoding arguments the tracer passes to ``model.generate``.

    ``max_new_tokens`` a positive int; ``temperature`` finite ``>= 0``; ``top_p`` in ``(0, 1]``;
    ``top_k`` an int ``>= 0``; ``repetition_penalty`` finite ``> 0``; ``no_repeat_ngram_size``
    an int ``>= 0``; ``max_time`` finite ``> 0``; ``stop_strings`` non-empty strings;
    ``use_cache`` not ``False`` (capture reads each step's query against the cached keys);
    ``do_sample`` a bool.

    Raises:
        InvalidInputError: naming the argument and its value.
    """
    check_positive_int(gen.get("max_new_tokens"), "max_new_tokens")
    if gen.get("temperature") is not None:
        check_number(gen["temperature"], "temperature", low=0.0)
    if gen.get("top_p") is not None:
        check_number(gen["top_p"], "top_p", low=0.0, high=1.0, low_open=True)
    if gen.get("top_k") is not None:
        top_k = gen["top_k"]
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
            raise invalid("top_k", top_k, "must be a whole number >= 0")
    if gen.get("repetition_penalty") is not None:
        check_number(gen["repetition_penalty"], "repetition_penalty", low=0.0, low_open=True)
    if gen.get("max_time") is not None:
        check_number(gen["max_time"], "max_time", low=0.0, low_open=True)
    if "no_repeat_ngram_size" in gen:
        size = gen["no_repeat_ngram_size"]
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
            raise invalid("no_repeat_ngram_size", size, "must be a whole number >= 0")
    if "do_sample" in gen and not isinstance(gen["do_sample"], bool):
        raise invalid("do_sample", gen["do_sample"], "must be True or False")
    if "use_cache" in gen and gen["use_cache"] is not True:
        raise invalid(
            "use_cache",
            gen["use_cache"],
            "must stay on while tracing (attention is captured against the cached keys of each "
            "decoding step); drop the argument",
        )
    if gen.get("stop_strings") is not None:
        check_stop_strings(gen["stop_strings"], "stop_strings")


def check_stop_strings(value: Any, field: str = "stop") -> list[str]:
    """Stop strings: a string or a list of non-empty strings.

    An empty stop string would end the answer at once (transformers matches it everywhere),
    and a non-string one reaches the tokenizer unchecked.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise invalid(field, value, f"must be a string or a list of strings, got {type(value).__name__}")
    out: list[str] = []
    for k, item in enumerate(items):
        if not isinstance(item, str):
            raise invalid(f"{field}[{k}]", item, f"must be a string, got {type(item).__name__}")
        if not item:
            raise invalid(f"{field}[{k}]", item, "is empty (it would end every answer at once)")
        check_text(item, f"{field}[{k}]", allow_empty=True)
        out.append(item)
    return out


class ConfigError(InvalidInputError):
    """A configuration value is refused (the message names the model, the field and the value).

    Raised instead of pydantic's ``ValidationError`` by every config model, so a bad config is
    an :class:`InvalidInputError` like any other bad input; the pydantic error is its
    ``__cause__``.
    """


def model_error(
    model: str, exc: ValidationError, cls: type[InvalidInputError] = InvalidInputError
) -> InvalidInputError:
    """A pydantic error as one line per problem: ``Model.field=value: what is wrong``."""
    problems = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        where = f"{model}.{loc}" if loc else model
        value = f"={show(e['input'])}" if loc and "input" in e else ""
        problems.append(f"{where}{value}: {e['msg'].removeprefix('Value error, ')}")
    return cls("; ".join(problems))


def _annotation_types(annotation: Any) -> set[Any]:
    """The plain types a field annotation accepts (``object`` when anything goes)."""
    if annotation is Any or annotation is None:
        return {object}
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {type(a) for a in args}
    if origin in (typing.Union, types.UnionType):
        out: set[Any] = set()
        for arg in args:
            out |= _annotation_types(arg)
        return out
    if origin is not None:
        return {origin}
    return {annotation}


class CheckedModel(BaseModel):
    """A frozen pydantic model that refuses unknown fields and NaN / inf, raising
    :attr:`error_class` (an :class:`InvalidInputError`) instead of ``ValidationError``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    error_class: ClassVar[type[InvalidInputError]] = ConfigError

    @field_validator("*", mode="before")
    @classmethod
    def _no_silent_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse what pydantic would quietly convert: ``True`` -> ``1``, ``b"x"`` -> ``"x"``;
        and text holding a lone surrogate (not encodable, not JSON round-trippable)."""
        field = cls.model_fields.get(info.field_name or "")
        accepts = _annotation_types(field.annotation) if field is not None else {object}
        if object in accepts:
            return value
        if isinstance(value, bool) and bool not in accepts:
            raise ValueError(f"must not be a bool, got {value!r}")
        if bool in accepts and isinstance(value, (int, float)) and not isinstance(value, bool) and not (
            accepts & {int, float}
        ):
            raise ValueError(f"must be True or False, got {value!r}")
        if isinstance(value, bytes) and bytes not in accepts:
            raise ValueError("must be a string, got bytes (decode it first)")
        if isinstance(value, str) and str not in accepts and accepts & {int, float, bool}:
            raise ValueError(f"must be a {'bool' if bool in accepts else 'number'}, got the string {value!r}")
        if isinstance(value, str):
            at = first_surrogate(value)
            if at is not None:
                raise ValueError(
                    f"holds a lone surrogate {value[at]!r} at character {at} (not valid Unicode text: "
                    "decode the bytes as UTF-8, or replace undecodable bytes)"
                )
        return value

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise model_error(type(self).__name__, exc, self.error_class) from exc

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise model_error(cls.__name__, exc, cls.error_class) from exc

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise model_error(cls.__name__, exc, cls.error_class) from exc


def check_dtype(value: Any) -> Any:
    """A torch dtype, or its name (``"float32"``, ``"bfloat16"``, ``"auto"``) -> the dtype (or ``"auto"``)."""
    import torch

    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        name = value.strip().removeprefix("torch.")
        if name == "auto":
            return "auto"
        found = getattr(torch, name, None) if name.isidentifier() else None
        if isinstance(found, torch.dtype) and found.is_floating_point:
            return found
        raise invalid(
            "dtype",
            value,
            "is not a torch floating-point dtype (float32, float16, bfloat16, float64 or auto)",
        )
    raise invalid("dtype", value, f"must be a torch.dtype or its name, got {type(value).__name__}")


def check_device(value: Any) -> Any:
    """A device that exists on this machine: ``cpu``, ``cuda[:N]`` (if CUDA is available), ``mps``..."""
    import torch

    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, str):
        try:
            device = torch.device(value)
        except (RuntimeError, ValueError) as exc:
            raise invalid("device", value, "is not a device name (cpu, cuda, cuda:0, mps)") from exc
    else:
        raise invalid("device", value, f"must be a device name such as 'cpu', got {type(value).__name__}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise invalid("device", value, "CUDA is not available on this machine (use 'cpu')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise invalid("device", value, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise invalid("device", value, "MPS is not available on this machine (use 'cpu')")
    elif device.type not in ("cpu", "meta", "xpu", "hpu", "npu"):
        raise invalid("device", value, "is not a device this library runs on (cpu, cuda, mps)")
    return value


def _looks_like_tokenizer(obj: Any) -> bool:
    return callable(getattr(obj, "decode", None)) and hasattr(obj, "all_special_ids")


def _looks_like_model(obj: Any) -> bool:
    import torch

    generates = callable(getattr(obj, "generate", None))
    return isinstance(obj, torch.nn.Module) and generates and hasattr(obj, "config")


def check_model_and_tokenizer(model: Any, tokenizer: Any) -> None:
    """``model`` a loaded transformers causal LM, ``tokenizer`` its tokenizer (and not swapped)."""
    if _looks_like_tokenizer(model) and _looks_like_model(tokenizer):
        raise invalid(
            "model",
            model,
            "model and tokenizer are swapped: call Tracer(model, tokenizer), model first",
        )
    if not _looks_like_model(model):
        raise invalid(
            "model",
            model,
            "must be a loaded transformers causal LM (a torch.nn.Module with .generate and .config), "
            f"got {type(model).__name__}; load one with Tracer.from_pretrained(name_or_folder)",
        )
    if not _looks_like_tokenizer(tokenizer) or not callable(tokenizer):
        raise invalid(
            "tokenizer",
            tokenizer,
            f"must be the model's transformers tokenizer (AutoTokenizer.from_pretrained(...)), "
            f"got {type(tokenizer).__name__}",
        )
