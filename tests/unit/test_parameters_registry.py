"""The registry as the one source: fields, log lines (the generated "no effect" line), Decision."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from pytorch_backend.config import BackendParameters, ModelKind
from pytorch_backend.config.backend_parameters import dataclass_of
from pytorch_backend.config.compile_options import CompileOptions
from pytorch_backend.config.decision import Decision
from pytorch_backend.config.parameter_types import PYTHON_BACKEND, shown
from pytorch_backend.config.parameters import BY_KEY, PARAMETERS, Parameter
from pytorch_backend.config.values import parse_bool

PLURALS = {
    ModelKind.TORCHSCRIPT: "TorchScript models",
    ModelKind.AOTI: "AOT-Inductor packages",
    ModelKind.EAGER: "nn.Module models",
    ModelKind.EXPORTED_PROGRAM: "torch.export programs",
}
GATED = [p for p in PARAMETERS if p.logged and not p.explains_kind]


def logged(key: str, kind: ModelKind | None, **values: object) -> str:
    """The line's value for ``key`` where only the parameters and the kind are read."""
    params = dataclasses.replace(BackendParameters(), **values)
    return BY_KEY[key].logged_value(SimpleNamespace(params=params, kind=kind))  # type: ignore[arg-type]


def test_every_field_is_one_entry_whose_parser_returns_the_field_type() -> None:
    fields = [p.field for p in PARAMETERS if p.field is not None]
    assert sorted(fields) == sorted(f.name for f in dataclasses.fields(BackendParameters))
    for parameter in PARAMETERS:
        if parameter.field is None:
            continue
        declared = BackendParameters.__dataclass_fields__[parameter.field].type
        returned = parameter.parse.__annotations__["return"]  # type: ignore[union-attr]
        assert returned in str(declared).split(" | "), (parameter.key, declared, returned)
        assert parameter.default == getattr(BackendParameters(), parameter.field)


def test_an_incomplete_entry_fails_at_import() -> None:
    with pytest.raises(ValueError, match="'NEW_KEY' read by backend needs a field, a type and a"):
        Parameter("NEW_KEY", "effect")
    with pytest.raises(ValueError, match="'NEW_KEY' read by backend needs a field, a type and a"):
        Parameter("NEW_KEY", "effect", field="new_field", parse=parse_bool)


def test_a_new_entry_is_a_new_field_of_the_parameters() -> None:
    entry = Parameter(
        "NEW_KEY", "effect", field="new_field", parse=parse_bool, type="bool", default=True
    )
    generated = dataclass_of((*PARAMETERS, entry))
    assert [f.name for f in dataclasses.fields(generated)][-1] == "new_field"
    assert generated().new_field is True and generated(new_field=False).new_field is False
    assert generated().grad_policy == BackendParameters().grad_policy
    with pytest.raises(ValueError, match="'NEW_KEY' read by python_backend takes no field"):
        Parameter("NEW_KEY", "effect", field="warmup", parse=parse_bool, reader=PYTHON_BACKEND)


@pytest.mark.parametrize("parameter", GATED, ids=lambda p: p.key)
def test_no_effect_line_is_generated_from_applies_to(parameter: Parameter) -> None:
    outside = [kind for kind in ModelKind if kind not in parameter.applies_to]
    for kind in outside:
        assert logged(parameter.key, kind) == f"no effect on {PLURALS[kind]}"
    # Inside applies_to, or where the kind is not known yet, the entry's describer speaks.
    described = dataclasses.replace(parameter, describe=lambda e: "described")
    for kind in [*(k for k in ModelKind if k in parameter.applies_to), None]:
        effective = SimpleNamespace(params=BackendParameters(), kind=kind)
        assert described.logged_value(effective) == "described", (parameter.key, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "kind", "values", "expected"),
    [
        ("MODULE_CLASS", ModelKind.TORCHSCRIPT, {"module_class": "Double"}, "Double given, "),
        ("ENABLE_JIT_PROFILING", ModelKind.AOTI, {"enable_jit_profiling": False}, "false given, "),
        ("DISABLE_OPTIMIZED_EXECUTION", ModelKind.EAGER, {}, ""),
        (
            "TORCH_COMPILE_OPTIONAL_PARAMETERS",
            ModelKind.AOTI,
            {"torch_compile": CompileOptions('{"backend": "eager"}')},
            '{"backend": "eager"} given, ',
        ),
    ],
)
def test_no_effect_line_names_a_given_value(
    key: str, kind: ModelKind, values: dict[str, object], expected: str
) -> None:
    assert logged(key, kind, **values) == f"{expected}no effect on {PLURALS[kind]}"


def test_entries_that_explain_their_kind_keep_their_describer() -> None:
    assert {p.key for p in PARAMETERS if p.explains_kind} == {
        "ENABLE_NVFUSER",
        "ENABLE_WEIGHT_SHARING",
    }
    assert logged("ENABLE_NVFUSER", ModelKind.TORCHSCRIPT).startswith("not given (NVFuser")
    why = Decision.no_effect("an AOT-Inductor package keeps its weights inside its compiled code")
    params = BackendParameters(enable_weight_sharing=True)
    effective = SimpleNamespace(params=params, kind=ModelKind.AOTI, weight_sharing=why)
    assert BY_KEY["ENABLE_WEIGHT_SHARING"].logged_value(effective) == why.reason  # type: ignore[arg-type]


def test_plain_values_are_shown_as_the_log_reads_them() -> None:
    assert [shown(None), shown(True), shown(False), shown(3), shown("x")] == [
        "not given",
        "true",
        "false",
        "3",
        "x",
    ]
    assert (shown(()), shown((1, 4))) == ("none", "1, 4")
    assert logged("METHOD", ModelKind.TORCHSCRIPT) == "forward"
    assert logged("MODEL_FILENAME", None) == "not given"
    assert logged("OUTPUT_SHAPE_CHECK", None).startswith("warn (an output shape")


def test_decision_texts() -> None:
    assert Decision.off() == Decision(None, "false")
    assert Decision.no_effect("why") == Decision(None, "true, no effect: why")
    hook = object()
    assert Decision.on(hook) == Decision(hook, "true")
    assert Decision.on(hook, "3 graphs").reason == "true (3 graphs)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        Decision.off().reason = "true"  # type: ignore[misc]
