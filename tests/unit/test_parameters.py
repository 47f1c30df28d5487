"""config.pbtxt parameters: spellings, defaults, refusals, aliases, unknown-key warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytorch_backend.config import BackendParameters, GradPolicy, OutputShapeCheck
from pytorch_backend.config.parameter_parsing import parse_parameters
from pytorch_backend.config.parameter_table import markdown_table
from pytorch_backend.config.parameters import (
    KNOWN_KEYS,
    PARAMETERS,
    parse_bool,
)
from pytorch_backend.errors import ModelLoadError

README = Path(__file__).resolve().parents[2] / "README.md"


def parse(raw: dict[str, str]) -> tuple[BackendParameters, list[str]]:
    warnings: list[str] = []
    return parse_parameters("m", raw, warnings.append), warnings


def refused(raw: dict[str, str]) -> str:
    with pytest.raises(ModelLoadError) as info:
        parse(raw)
    return str(info.value)


def test_defaults_when_absent() -> None:
    params, warnings = parse({})
    assert params == BackendParameters()
    assert params.inference_mode is True
    assert params.enable_grad is False
    assert params.disable_optimized_execution is False
    assert params.enable_jit_executor is None
    assert params.enable_jit_profiling is None
    assert params.enable_tensor_fuser is None
    assert params.enable_nvfuser is None
    assert params.disable_cudnn is False
    assert params.enable_cache_cleaning is False
    assert params.intra_op_thread_count is None
    assert params.inter_op_thread_count is None
    assert params.enable_weight_sharing is False
    assert params.custom_op_libraries == ()
    assert params.model_filename is None
    assert params.output_shape_check is OutputShapeCheck.WARN
    assert params.grad_policy is GradPolicy.INFERENCE_MODE
    assert warnings == []


TRUE_SPELLINGS = ["true", "TRUE", "True", "on", "ON", "On", "1"]
FALSE_SPELLINGS = ["false", "FALSE", "False", "off", "OFF", "0"]
ALL_BOOL_KEYS = {p.key: p.field for p in PARAMETERS if p.parse is parse_bool}


@pytest.mark.parametrize("key", sorted(ALL_BOOL_KEYS))
@pytest.mark.parametrize("spelling", TRUE_SPELLINGS)
def test_bool_true_spellings(key: str, spelling: str) -> None:
    params, _ = parse({key: spelling})
    assert getattr(params, ALL_BOOL_KEYS[key]) is True


@pytest.mark.parametrize("key", sorted(ALL_BOOL_KEYS))
@pytest.mark.parametrize("spelling", FALSE_SPELLINGS)
def test_bool_false_spellings(key: str, spelling: str) -> None:
    params, _ = parse({key: spelling})
    assert getattr(params, ALL_BOOL_KEYS[key]) is False


@pytest.mark.parametrize("key", sorted(ALL_BOOL_KEYS))
@pytest.mark.parametrize("bad", ["yes", "no", "2", "", " true", "true ", "enabled", "t", "-1"])
def test_bool_invalid_values_refused(key: str, bad: str) -> None:
    message = refused({key: bad})
    assert "'m'" in message
    assert f"'{key}'" in message
    assert repr(bad) in message


def test_grad_policies() -> None:
    assert parse({"INFERENCE_MODE": "false"})[0].grad_policy is GradPolicy.NO_GRAD
    assert parse({"INFERENCE_MODE": "true"})[0].grad_policy is GradPolicy.INFERENCE_MODE
    enabled, _ = parse({"ENABLE_GRAD": "true"})
    assert enabled.grad_policy is GradPolicy.ENABLE_GRAD
    assert enabled.inference_mode is False
    both, _ = parse({"ENABLE_GRAD": "on", "INFERENCE_MODE": "off"})
    assert both.grad_policy is GradPolicy.ENABLE_GRAD
    assert parse({"ENABLE_GRAD": "false"})[0].grad_policy is GradPolicy.INFERENCE_MODE


def test_enable_grad_with_explicit_inference_mode_is_refused() -> None:
    message = refused({"ENABLE_GRAD": "true", "INFERENCE_MODE": "1"})
    assert "'ENABLE_GRAD'" in message and "'INFERENCE_MODE'" in message
    assert "'m'" in message


@pytest.mark.parametrize(
    "key, field",
    [
        ("INTRA_OP_THREAD_COUNT", "intra_op_thread_count"),
        ("NUM_THREADS", "intra_op_thread_count"),
        ("INTER_OP_THREAD_COUNT", "inter_op_thread_count"),
        ("NUM_INTEROP_THREADS", "inter_op_thread_count"),
    ],
)
def test_thread_counts(key: str, field: str) -> None:
    assert getattr(parse({key: "4"})[0], field) == 4
    assert getattr(parse({key: " 8 "})[0], field) == 8
    assert getattr(parse({key: "016"})[0], field) == 16
    assert getattr(parse({key: "0"})[0], field) == 0  # 0 = torch's default
    for bad in ["-1", "4abc", "abc", "", "1.5", "+3", "2147483648", "1e3", "0x10"]:
        message = refused({key: bad})
        assert f"'{key}'" in message and repr(bad) in message and "'m'" in message


@pytest.mark.parametrize(
    "key, alias, field",
    [
        ("INTRA_OP_THREAD_COUNT", "NUM_THREADS", "intra_op_thread_count"),
        ("INTER_OP_THREAD_COUNT", "NUM_INTEROP_THREADS", "inter_op_thread_count"),
    ],
)
def test_thread_aliases(key: str, alias: str, field: str) -> None:
    assert getattr(parse({key: "3", alias: "03"})[0], field) == 3  # same value: fine
    message = refused({key: "3", alias: "4"})
    assert f"'{key}'" in message and f"'{alias}'" in message
    assert "'3'" in message and "'4'" in message


def test_custom_op_libraries() -> None:
    params, _ = parse({"CUSTOM_OP_LIBRARIES": "a.so, /x/b.so:lib/c.so,,"})
    assert params.custom_op_libraries == ("a.so", "/x/b.so", "lib/c.so")
    assert parse({"CUSTOM_OP_LIBRARIES": ""})[0].custom_op_libraries == ()


def test_model_filename() -> None:
    assert parse({"MODEL_FILENAME": "weights.pt"})[0].model_filename == "weights.pt"
    for bad in ["", "  ", "sub/model.pt", "/abs/model.pt", "..", "a\\b.pt"]:
        message = refused({"MODEL_FILENAME": bad})
        assert "'MODEL_FILENAME'" in message and repr(bad) in message


@pytest.mark.parametrize(
    "typo, suggestion",
    [
        ("INFERENCE_MDOE", "INFERENCE_MODE"),
        ("inference_mode", "INFERENCE_MODE"),  # keys are case-sensitive
        ("CACHE_CLEANING_ENABLED", "ENABLE_CACHE_CLEANING"),  # upstream's dead AOTI spelling
        ("DISABLE_CUDDN", "DISABLE_CUDNN"),
        ("INTRA_OP_THREADS", "INTRA_OP_THREAD_COUNT"),
        ("ENABLE_WEIGHTS_SHARING", "ENABLE_WEIGHT_SHARING"),
    ],
)
def test_unknown_key_warns_with_closest_known_key(typo: str, suggestion: str) -> None:
    params, warnings = parse({typo: "true"})
    assert params == BackendParameters()
    assert len(warnings) == 1
    assert f"'{typo}'" in warnings[0] and f"'{suggestion}'" in warnings[0]


def test_unknown_key_far_from_everything_lists_known_keys() -> None:
    _, warnings = parse({"ZZZZ": "1"})
    assert len(warnings) == 1 and "'ZZZZ'" in warnings[0] and "INFERENCE_MODE" in warnings[0]


def test_python_backend_keys_are_known_and_silent() -> None:
    _, warnings = parse({"FORCE_CPU_ONLY_INPUT_TENSORS": "no", "EXECUTION_ENV_PATH": "$$X/e.tgz"})
    assert warnings == []


def test_torch_compile_parameters_are_parsed() -> None:
    params, warnings = parse(
        {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"mode": "max-autotune", "fullgraph": true}'}
    )
    assert warnings == []
    assert params.torch_compile.kwargs() == {"mode": "max-autotune", "fullgraph": True}
    assert not params.torch_compile.disabled
    off, _ = parse({"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"disable": true}'})
    assert off.torch_compile.disabled and off.torch_compile.kwargs() == {}
    assert BackendParameters().torch_compile.kwargs() == {}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"model": 1}', "'model' is not an optional parameter"),
        ('{"fulgraph": true}', "unknown key 'fulgraph'"),
        ('{"fullgraph": "yes"}', "key 'fullgraph' must be a boolean"),
        ('{"backend": 3}', "key 'backend' must be a string"),
        ('{"options": []}', "key 'options' must be an object"),
        ('{"mode": "default", "options": {"a": 1}}', "cannot both be given"),
    ],
)
def test_bad_torch_compile_parameters_fail_naming_the_key(value: str, fragment: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        parse({"TORCH_COMPILE_OPTIONAL_PARAMETERS": value})
    text = str(info.value)
    assert "model 'm'" in text and "'TORCH_COMPILE_OPTIONAL_PARAMETERS'" in text
    assert fragment in text


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("MODULE_FILENAME", "net.py", "module_filename", "net.py"),
        ("MODULE_CLASS", "Net", "module_class", "Net"),
    ],
)
def test_module_parameters(key: str, value: str, field: str, expected: str) -> None:
    params, warnings = parse({key: value})
    assert warnings == [] and getattr(params, field) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MODULE_FILENAME", "net.pt"),
        ("MODULE_FILENAME", "../net.py"),
        ("MODULE_CLASS", "not a class"),
    ],
)
def test_bad_module_parameters(key: str, value: str) -> None:
    with pytest.raises(ModelLoadError, match=f"parameter '{key}' has invalid value"):
        parse({key: value})


def test_every_known_key_parses_without_warning() -> None:
    values = {
        "CUSTOM_OP_LIBRARIES": "x.so",
        "MODEL_FILENAME": "model.pt",
        "MODULE_FILENAME": "net.py",
        "MODULE_CLASS": "Net",
        "TORCH_COMPILE_OPTIONAL_PARAMETERS": "{}",
        "INTRA_OP_THREAD_COUNT": "2",
        "NUM_THREADS": "2",
        "INTER_OP_THREAD_COUNT": "1",
        "NUM_INTEROP_THREADS": "1",
        "FORCE_CPU_ONLY_INPUT_TENSORS": "yes",
        "EXECUTION_ENV_PATH": "env.tar.gz",
        "WARMUP_BATCH_SIZES": "1,4",
        "OUTPUT_SHAPE_CHECK": "error",
    }
    raw = {key: values.get(key, "false") for key in KNOWN_KEYS}
    params, warnings = parse(raw)
    assert warnings == []
    assert params.intra_op_thread_count == 2 and params.inter_op_thread_count == 1
    assert params.grad_policy is GradPolicy.NO_GRAD


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("warn", OutputShapeCheck.WARN),
        ("error", OutputShapeCheck.ERROR),
        ("off", OutputShapeCheck.OFF),
        (" Error ", OutputShapeCheck.ERROR),
        ("OFF", OutputShapeCheck.OFF),
    ],
)
def test_output_shape_check(value: str, expected: OutputShapeCheck) -> None:
    params, warnings = parse({"OUTPUT_SHAPE_CHECK": value})
    assert params.output_shape_check is expected and warnings == []
    assert BackendParameters().output_shape_check is OutputShapeCheck.WARN  # as the C++ backend


@pytest.mark.parametrize("value", ["", "strict", "true", "warning"])
def test_bad_output_shape_check_is_refused(value: str) -> None:
    assert refused({"OUTPUT_SHAPE_CHECK": value}) == (
        f"model 'm': parameter 'OUTPUT_SHAPE_CHECK' has invalid value {value!r}: expected one of "
        "'warn', 'error', 'off'"
    )


def test_parameters_are_frozen() -> None:
    params = BackendParameters()
    with pytest.raises(AttributeError):
        params.inference_mode = False  # type: ignore[misc]


def test_registry_keys_are_unique_and_every_key_read_here_is_logged() -> None:
    assert len(KNOWN_KEYS) == len(set(KNOWN_KEYS))
    assert len(ALL_BOOL_KEYS) == 16
    logged = {p.key for p in PARAMETERS if p.logged}
    assert logged == {p.key for p in PARAMETERS if p.field is not None}
    fields = {p.field for p in PARAMETERS if p.field is not None}
    assert fields == set(BackendParameters.__dataclass_fields__)


def test_readme_parameter_table_matches_the_registry() -> None:
    assert markdown_table() in README.read_text(encoding="utf-8")
