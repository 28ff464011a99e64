"""Every bad argument at the public boundary is an InvalidInputError naming the field and the value.

Nothing here reaches the model: each call is refused before decoding, so the file runs in
about a second on the tiny random model.
"""

from __future__ import annotations

import math

import pytest

from omnitrace_core import InvalidInputError, TextSource, Tracer, TracerConfig
from omnitrace_core.config import ConfigError
from tests.reliability.conftest import named

NAN, INF = float("nan"), float("inf")

BAD_TEXT = [
    pytest.param(42, "42", id="int"),
    pytest.param(None, "None", id="none"),
    pytest.param(b"bytes", "b'bytes'", id="bytes"),
    pytest.param(["a"], "['a']", id="list"),
    pytest.param(1.5, "1.5", id="float"),
    pytest.param(True, "True", id="bool"),
    pytest.param("", "empty", id="empty"),
    pytest.param("   \n", "empty", id="blank"),
    pytest.param("x\ud800", "surrogate", id="lone-high-surrogate"),
    pytest.param("\udfffabc", "surrogate", id="lone-low-surrogate"),
    pytest.param("caf\udce9", "surrogate", id="surrogateescape-byte"),
    pytest.param({"q": 1}, "{'q': 1}", id="dict"),
]


@pytest.mark.parametrize(("value", "fragment"), BAD_TEXT)
def test_generate_question(tiny_tracer, good_sources, value, fragment):
    with pytest.raises(InvalidInputError) as info:
        tiny_tracer.generate(good_sources, value, max_new_tokens=2)
    named(info.value, "question", fragment)


@pytest.mark.parametrize(("value", "fragment"), BAD_TEXT)
def test_stream_question(tiny_tracer, good_sources, value, fragment):
    with pytest.raises(InvalidInputError) as info:
        next(iter(tiny_tracer.stream(good_sources, value, max_new_tokens=2)))
    named(info.value, "question", fragment)


@pytest.mark.parametrize(("value", "fragment"), BAD_TEXT)
def test_attribute_response(tiny_tracer, good_sources, value, fragment):
    with pytest.raises(InvalidInputError) as info:
        tiny_tracer.attribute(good_sources, "When?", value)
    named(info.value, "response", fragment)


@pytest.mark.parametrize(("value", "fragment"), BAD_TEXT)
def test_attribute_question(tiny_tracer, good_sources, value, fragment):
    with pytest.raises(InvalidInputError) as info:
        tiny_tracer.attribute(good_sources, value, "It was 1905.")
    named(info.value, "question", fragment)


@pytest.mark.parametrize(("value", "fragment"), BAD_TEXT[:6] + BAD_TEXT[8:])
def test_layout_question(tiny_tracer, good_sources, value, fragment):
    with pytest.raises(InvalidInputError) as info:
        tiny_tracer.layout(good_sources, value)
    named(info.value, "question", fragment)


BAD_GENERATION = [
    ("max_new_tokens", None),
    ("max_new_tokens", NAN),
    ("max_new_tokens", INF),
    ("max_new_tokens", -INF),
    ("max_new_tokens", "16"),
    ("max_new_tokens", True),
    ("max_new_tokens", False),
    ("max_new_tokens", 0),
    ("max_new_tokens", -1),
    ("max_new_tokens", 1.5),
    ("max_new_tokens", 2.0),
    ("max_new_tokens", []),
    ("top_p", 2.0),
    ("top_p", 0.0),
    ("top_p", -0.1),
    ("top_p", NAN),
    ("top_p", INF),
    ("top_p", "0.5"),
    ("top_p", True),
    ("temperature", -1.0),
    ("temperature", NAN),
    ("temperature", INF),
    ("temperature", "hot"),
    ("top_k", -1),
    ("top_k", 1.5),
    ("top_k", "3"),
    ("top_k", True),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", NAN),
    ("no_repeat_ngram_size", -1),
    ("no_repeat_ngram_size", 1.5),
    ("no_repeat_ngram_size", True),
    ("use_cache", False),
    ("use_cache", 0),
    ("use_cache", None),
    ("do_sample", "yes"),
    ("do_sample", 1),
    ("max_time", 0.0),
    ("max_time", NAN),
    ("stop_strings", [""]),
    ("stop_strings", [123]),
    ("stop_strings", 5),
]


@pytest.mark.parametrize(("field", "value"), BAD_GENERATION, ids=[f"{f}={v!r}" for f, v in BAD_GENERATION])
def test_generation_arguments(tiny_tracer, good_sources, field, value):
    kwargs = {"max_new_tokens": 2, field: value}
    with pytest.raises(InvalidInputError) as info:
        tiny_tracer.generate(good_sources, "When?", **kwargs)
    named(info.value, field)
    shown = value[0] if isinstance(value, list) and value else value  # a list: its bad item is named
    if not (isinstance(shown, float) and math.isnan(shown)):
        assert repr(shown)[:20] in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"), BAD_GENERATION[:12], ids=[f"{f}={v!r}" for f, v in BAD_GENERATION[:12]]
)
def test_stream_generation_arguments(tiny_tracer, good_sources, field, value):
    with pytest.raises(InvalidInputError) as info:
        next(iter(tiny_tracer.stream(good_sources, "When?", **{field: value})))
    named(info.value, field)


def test_beam_search_is_refused(tiny_tracer, good_sources):
    with pytest.raises(InvalidInputError, match="beam search"):
        tiny_tracer.generate(good_sources, "When?", max_new_tokens=2, num_beams=2)


def test_huge_max_new_tokens_is_a_context_error(tiny_tracer, good_sources):
    with pytest.raises(InvalidInputError, match="context window"):
        tiny_tracer.generate(good_sources, "When?", max_new_tokens=2**70)


BAD_CONFIGS = [
    pytest.param({"signal": "rawatt"}, "TracerConfig(**", id="dict"),
    pytest.param("rawatt", "TracerConfig(signal='rawatt')", id="signal-name"),
    pytest.param(5, "int", id="int"),
    pytest.param([], "list", id="list"),
    pytest.param(TracerConfig, "an instance", id="the-class"),
    pytest.param(True, "bool", id="bool"),
]


@pytest.mark.parametrize(("config", "fragment"), BAD_CONFIGS)
def test_generate_config(tiny_tracer, good_sources, config, fragment):
    with pytest.raises(InvalidInputError) as info:
        tiny_tracer.generate(good_sources, "When?", config=config, max_new_tokens=2)
    named(info.value, "config", fragment)


@pytest.mark.parametrize(("config", "fragment"), BAD_CONFIGS)
def test_attribute_config(tiny_tracer, good_sources, config, fragment):
    with pytest.raises(InvalidInputError) as info:
        tiny_tracer.attribute(good_sources, "When?", "In 1905.", config=config)
    named(info.value, "config", fragment)


@pytest.mark.parametrize(("config", "fragment"), BAD_CONFIGS)
def test_tracer_config(tiny_model, tiny_tokenizer, config, fragment):
    with pytest.raises(InvalidInputError) as info:
        Tracer(tiny_model, tiny_tokenizer, config=config)
    named(info.value, "config", fragment)


def test_unknown_signal_in_a_per_call_config(tiny_tracer, good_sources):
    with pytest.raises(KeyError, match="unknown signal 'nope'"):
        tiny_tracer.generate(good_sources, "When?", config=TracerConfig(signal="nope"), max_new_tokens=2)


# -- construction -------------------------------------------------------------------------


def test_tracer_none_none():
    with pytest.raises(InvalidInputError) as info:
        Tracer(None, None)
    named(info.value, "model=None", "from_pretrained")


def test_tracer_swapped(tiny_model, tiny_tokenizer):
    with pytest.raises(InvalidInputError, match="swapped"):
        Tracer(tiny_tokenizer, tiny_model)


def test_tracer_missing_tokenizer(tiny_model):
    with pytest.raises(InvalidInputError) as info:
        Tracer(tiny_model, None)
    named(info.value, "tokenizer=None")


@pytest.mark.parametrize("tokenizer", ["gpt2", 5, object()], ids=["str", "int", "object"])
def test_tracer_bad_tokenizer(tiny_model, tokenizer):
    with pytest.raises(InvalidInputError, match="tokenizer="):
        Tracer(tiny_model, tokenizer)


@pytest.mark.parametrize("model", ["smollm2-135m", 5, object(), [1]], ids=["str", "int", "object", "list"])
def test_tracer_bad_model(tiny_tokenizer, model):
    with pytest.raises(InvalidInputError, match="model="):
        Tracer(model, tiny_tokenizer)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model_name": ""}, "model_name"),
        ({"model_name": 5}, "model_name"),
        ({"calibration": "weights.json"}, "calibration"),
        ({"calibration": {"head_weights": []}}, "calibration"),
        ({"observers": object()}, "observers"),
        ({"observers": "otel"}, "observers"),
    ],
    ids=["empty-name", "int-name", "calibration-path", "calibration-dict", "observers-object", "observers-str"],
)
def test_tracer_other_arguments(tiny_model, tiny_tokenizer, kwargs, fragment):
    with pytest.raises(InvalidInputError) as info:
        Tracer(tiny_model, tiny_tokenizer, **kwargs)
    named(info.value, fragment)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"dtype": "float99"}, "dtype='float99'"),
        ({"dtype": "nn"}, "dtype='nn'"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"dtype": "../x"}, "dtype='../x'"),
        ({"dtype": 5}, "dtype=5"),
        ({"device": "nonsense"}, "device='nonsense'"),
        ({"device": "cuda"}, "device='cuda'"),
        ({"device": "cuda:3"}, "device='cuda:3'"),
        ({"device": "mps"}, "device='mps'"),
        ({"device": 5.5}, "device=5.5"),
        ({"device_map": 5}, "device_map=5"),
        ({"config": "attmean"}, "config='attmean'"),
    ],
    ids=lambda v: str(v),
)
def test_from_pretrained_checks_before_loading(kwargs, fragment, monkeypatch):
    import torch

    from omnitrace_core import tracer as tracer_module

    device = kwargs.get("device")
    if isinstance(device, str) and device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")

    def no_load(*args, **kw):  # the checks must come first: nothing is loaded
        raise AssertionError("load_model was called")

    monkeypatch.setattr(tracer_module, "load_model", no_load)
    with pytest.raises(InvalidInputError) as info:
        Tracer.from_pretrained("smollm2-135m", **kwargs)
    named(info.value, fragment)


@pytest.mark.parametrize("name", [None, 5, b"smollm2-135m", "", "   "], ids=["none", "int", "bytes", "empty", "blank"])
def test_from_pretrained_name(name):
    with pytest.raises(InvalidInputError, match="name_or_path"):
        Tracer.from_pretrained(name)


def test_from_default_bad_config():
    with pytest.raises(InvalidInputError, match="config="):
        Tracer.from_default(config={"signal": "attmean"})


@pytest.mark.parametrize("name", ["float32", "torch.float32", "bfloat16", "auto"])
def test_good_dtype_names_pass(name):
    from omnitrace_core.validation import check_dtype

    assert check_dtype(name) is not None


# -- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signal", [object(), "attmean", 5, None, type("NotASignal", (), {"name": "x"})], ids=["object", "str", "int", "none", "other-class"]
)
def test_register_signal_refuses_non_signals(signal):
    from omnitrace_core.signals import register_signal

    with pytest.raises(InvalidInputError, match="register_signal"):
        register_signal(signal)


def test_register_signal_needs_a_name():
    from omnitrace_core.signals import Signal, register_signal

    class Nameless(Signal):
        name = ""

    with pytest.raises(InvalidInputError, match="name"):
        register_signal(Nameless)


# -- config models -------------------------------------------------------------------------

CONFIG_CASES = [
    ("CurationConfig", "gamma", NAN),
    ("CurationConfig", "gamma", INF),
    ("CurationConfig", "gamma", -1.0),
    ("CurationConfig", "alpha", 2.0),
    ("CurationConfig", "alpha", NAN),
    ("CurationConfig", "run_min", INF),
    ("CurationConfig", "p_min", NAN),
    ("CurationConfig", "p_min", -0.1),
    ("CurationConfig", "coverage", 0.0),
    ("CurationConfig", "coverage", INF),
    ("CurationConfig", "min_relative", -0.1),
    ("CurationConfig", "min_relative", NAN),
    ("CurationConfig", "other_pos_weight", INF),
    ("CurationConfig", "other_pos_weight", NAN),
    ("CurationConfig", "other_pos_weight", -1.0),
    ("CurationConfig", "other_pos_weight", 2.0),
    ("CurationConfig", "pos_weights", {"NOUN": NAN}),
    ("CurationConfig", "pos_weights", {"NOUN": INF}),
    ("CurationConfig", "pos_weights", {"NOUN": -1.0}),
    ("CurationConfig", "pos_weights", {"NOUN": 2.0}),
    ("CurationConfig", "pos_weights", {"": 0.5}),
    ("CurationConfig", "pos_weights", {"NOUN": "heavy"}),
    ("CurationConfig", "pos_weights", ["NOUN"]),
    ("CurationConfig", "max_citations", 0),
    ("CurationConfig", "max_citations", 1.5),
    ("CurationConfig", "max_citations", True),
    ("CurationConfig", "enabled", "yes"),
    ("CurationConfig", "enabled", 2),
    ("MappingConfig", "rule", "best"),
    ("MappingConfig", "bias_correction", "bogus"),
    ("MappingConfig", "exclude_first_positions", -1),
    ("MappingConfig", "exclude_first_positions", True),
    ("MappingConfig", "token_rows", "all"),
    ("MappingConfig", "prompt_reference", None),
    ("GenerationConfig", "max_new_tokens", 0),
    ("GenerationConfig", "max_new_tokens", NAN),
    ("GenerationConfig", "max_new_tokens", True),
    ("GenerationConfig", "max_new_tokens", "16"),
    ("GenerationConfig", "no_repeat_ngram_size", -1),
    ("GenerationConfig", "do_sample", 1),
    ("RerankConfig", "top_m", 0),
    ("RerankConfig", "attention_weight", INF),
    ("RerankConfig", "similarity_weight", NAN),
    ("RerankConfig", "vote_smoothing", -1.0),
    ("RerankConfig", "similarity_floor", 2.0),
    ("RerankConfig", "min_relative", NAN),
    ("RerankConfig", "unsupported_similarity", INF),
    ("RerankConfig", "diffuse_top_vote", NAN),
    ("RerankConfig", "title_in_unit", "yes"),
    ("GroundingThresholds", "attention_weight", NAN),
    ("GroundingThresholds", "supported_min", INF),
    ("GroundingThresholds", "weak_min", -0.5),
    ("GroundingThresholds", "min_content_words", -1),
    ("TracerConfig", "signal", ""),
    ("TracerConfig", "signal", 5),
    ("TracerConfig", "system_prompt", "sys\ud800"),
    ("TracerConfig", "system_prompt", b"sys"),
    ("TracerConfig", "split_sources", "yes"),
    ("TracerConfig", "audio_fallback", "whisper"),
    ("TracerConfig", "curation", {"gamma": INF}),
    ("TracerConfig", "mapping", "summed"),
    ("TracerConfig", "unknown_knob", 1),
]


@pytest.mark.parametrize(("model", "field", "value"), CONFIG_CASES, ids=[f"{m}.{f}={v!r}" for m, f, v in CONFIG_CASES])
def test_config_models_refuse(model, field, value):
    from omnitrace_core import config as config_module

    cls = getattr(config_module, model)
    with pytest.raises(ConfigError) as info:
        cls(**{field: value})
    assert isinstance(info.value, InvalidInputError)
    named(info.value, model, field)


@pytest.mark.parametrize(("model", "field", "value"), CONFIG_CASES[:20], ids=[f"{m}.{f}" for m, f, _ in CONFIG_CASES[:20]])
def test_config_model_validate_refuses(model, field, value):
    from omnitrace_core import config as config_module

    cls = getattr(config_module, model)
    with pytest.raises(ConfigError, match=field):
        cls.model_validate({field: value})


def test_grounding_thresholds_order():
    from omnitrace_core.config import GroundingThresholds

    with pytest.raises(ConfigError, match="weak_min"):
        GroundingThresholds(weak_min=0.9, supported_min=0.5)


def test_config_json_with_nan_is_refused():
    with pytest.raises(ConfigError, match="gamma"):
        TracerConfig.model_validate_json('{"curation": {"gamma": NaN}}')


def test_a_config_still_round_trips():
    cfg = TracerConfig(signal="rawatt", split_sources=True)
    assert TracerConfig.model_validate_json(cfg.model_dump_json()) == cfg


# -- the system prompt that quotes the user message ------------------------------------------


def test_source_spans_sit_in_the_user_message_not_in_a_quoting_system_prompt(tiny_tracer):
    src = [TextSource(id="a", text="The lighthouse stands 42 metres tall.")]
    plain = tiny_tracer.layout(src, "How tall?")
    user = plain.text[plain.text.index("Sources:") : plain.text.index("How tall?") + len("How tall?")]
    cfg = TracerConfig(system_prompt=f"Repeat after me:\n{user}")
    layout = tiny_tracer.layout(src, "How tall?", cfg)
    unit = layout.units[0]
    from_ids = tiny_tracer.tokenizer.decode(layout.input_ids[unit.token_start : unit.token_end])
    system_end = layout.text.index(user) + len(user)  # the quote inside the system prompt
    enc = tiny_tracer.tokenizer(layout.text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["offset_mapping"][unit.token_start][0] >= system_end
    assert "42 metres" in from_ids
