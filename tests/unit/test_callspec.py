"""Naming of AOT-Inductor call-spec leaves and binding of config names (pure, no compilation)."""

from __future__ import annotations

import collections
import re

import pytest
import torch
import torch.utils._pytree as pytree

from pytorch_backend.config import parse_model_config
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.binding.callspec import (
    CallSpecError,
    parse_call_spec,
    resolve_bindings,
)

T = torch.zeros(1)

# The exact strings a package compiled from tests/aoti_models.py:ComplexModel-like code returns.
PACKAGE_IN_SPEC = (
    '[1, {"type": "builtins.tuple", "context": "null", "children_spec": [{"type": '
    '"builtins.tuple", "context": "null", "children_spec": [{"type": null, "context": null, '
    '"children_spec": []}, {"type": "builtins.tuple", "context": "null", "children_spec": '
    '[{"type": null, "context": null, "children_spec": []}, {"type": null, "context": null, '
    '"children_spec": []}]}, {"type": "builtins.dict", "context": "[\\"k1\\", \\"k2\\"]", '
    '"children_spec": [{"type": null, "context": null, "children_spec": []}, {"type": null, '
    '"context": null, "children_spec": []}]}]}, {"type": "builtins.dict", "context": '
    '"[\\"scale\\"]", "children_spec": [{"type": null, "context": null, "children_spec": []}]}]}]'
)
PACKAGE_OUT_SPEC = (
    '[1, {"type": "builtins.dict", "context": "[\\"sum\\", \\"pair\\", \\"nested\\"]", '
    '"children_spec": [{"type": null, "context": null, "children_spec": []}, {"type": '
    '"builtins.tuple", "context": "null", "children_spec": [{"type": null, "context": null, '
    '"children_spec": []}, {"type": null, "context": null, "children_spec": []}]}, {"type": '
    '"builtins.dict", "context": "[\\"k1\\"]", "children_spec": [{"type": "builtins.tuple", '
    '"context": "null", "children_spec": [{"type": null, "context": null, "children_spec": []}, '
    '{"type": null, "context": null, "children_spec": []}]}]}]}]'
)
PACKAGE_INPUTS = [
    "ARGS[0]",
    "ARGS[1][0]",
    "ARGS[1][1]",
    "ARGS[2][k1]",
    "ARGS[2][k2]",
    "KWARGS[scale]",
]
PACKAGE_OUTPUTS = [
    "RESULT[sum]",
    "RESULT[pair][0]",
    "RESULT[pair][1]",
    "RESULT[nested][k1][0]",
    "RESULT[nested][k1][1]",
]


def dumps(tree: object) -> str:
    return pytree.treespec_dumps(pytree.tree_structure(tree))


def spec_of(args: tuple, kwargs: dict, result: object):
    return parse_call_spec(dumps((args, kwargs)), dumps(result))


def config(inputs: list[str], outputs: list[str], *, dtype: dict[str, str] | None = None):
    dtype = dtype or {}
    return parse_model_config(
        {
            "name": "aoti_model",
            "platform": "torch_aoti",
            "max_batch_size": 0,
            "input": [
                {"name": n, "data_type": dtype.get(n, "TYPE_FP32"), "dims": [1]} for n in inputs
            ],
            "output": [
                {"name": n, "data_type": dtype.get(n, "TYPE_FP32"), "dims": [1]} for n in outputs
            ],
        }
    )


# -- naming ------------------------------------------------------------------------------------


def test_package_call_spec_names_both_schemes():
    spec = parse_call_spec(PACKAGE_IN_SPEC, PACKAGE_OUT_SPEC)
    assert [x.name for x in spec.inputs] == PACKAGE_INPUTS
    assert [x.ordinal for x in spec.inputs] == [f"INPUT__{i}" for i in range(6)]
    assert [x.index for x in spec.inputs] == list(range(6))
    assert [x.name for x in spec.outputs] == PACKAGE_OUTPUTS
    assert [x.ordinal for x in spec.outputs] == [f"OUTPUT__{i}" for i in range(5)]


def test_single_tensor_output_is_result_and_one_tuple_is_result_0():
    assert [x.name for x in spec_of((T,), {}, T).outputs] == ["RESULT"]
    assert [x.name for x in spec_of((T,), {}, (T,)).outputs] == ["RESULT[0]"]


def test_kwargs_use_brackets_and_nested_kwargs_are_expanded():
    spec = spec_of(
        (T, [T, T]),
        {"mask": T, "cfg": (T, {"w": T})},
        {"b": T, "a": [T, {"deep": (T, T)}]},
    )
    assert [x.name for x in spec.inputs] == [
        "ARGS[0]",
        "ARGS[1][0]",
        "ARGS[1][1]",
        "KWARGS[mask]",
        "KWARGS[cfg][0]",
        "KWARGS[cfg][1][w]",
    ]
    # dict outputs keep insertion order ("b" before "a"), deep nesting is expanded
    assert [(x.name, x.ordinal) for x in spec.outputs] == [
        ("RESULT[b]", "OUTPUT__0"),
        ("RESULT[a][0]", "OUTPUT__1"),
        ("RESULT[a][1][deep][0]", "OUTPUT__2"),
        ("RESULT[a][1][deep][1]", "OUTPUT__3"),
    ]


def test_ordered_dict_is_named_like_dict():
    spec = spec_of((collections.OrderedDict(z=T, y=T),), {}, T)
    assert [x.name for x in spec.inputs] == ["ARGS[0][z]", "ARGS[0][y]"]


def test_kwargs_only_model():
    spec = spec_of((), {"x": T}, T)
    assert [(x.name, x.ordinal) for x in spec.inputs] == [("KWARGS[x]", "INPUT__0")]


def test_unsupported_container_type_is_refused():
    with pytest.raises(CallSpecError, match=r"defaultdict.*only tensors, tuples, lists and dicts"):
        spec_of((collections.defaultdict(list, a=T),), {}, T)


def test_non_string_dict_key_is_refused():
    with pytest.raises(CallSpecError, match=r"non-string key 3"):
        spec_of((T,), {}, {3: T})


def test_input_spec_must_be_args_kwargs_pair():
    with pytest.raises(CallSpecError, match=r"tuple\[args tuple, kwargs dict\]"):
        parse_call_spec(dumps((T, T, T)), dumps(T))
    with pytest.raises(CallSpecError, match="cannot read"):
        parse_call_spec("not json", dumps(T))


# -- binding -----------------------------------------------------------------------------------


def package_spec():
    return parse_call_spec(PACKAGE_IN_SPEC, PACKAGE_OUT_SPEC)


def test_forward_names_bind_in_leaf_order_whatever_the_config_order():
    cfg = config(list(reversed(PACKAGE_INPUTS)), ["RESULT[pair][1]", "RESULT[sum]"])
    b = resolve_bindings(package_spec(), cfg)
    assert b.inputs == tuple(PACKAGE_INPUTS)
    assert dict(b.outputs) == {"RESULT[pair][1]": 2, "RESULT[sum]": 0}


def test_ordinal_names_bind():
    cfg = config([f"INPUT__{i}" for i in (5, 0, 1, 2, 3, 4)], ["OUTPUT__4", "OUTPUT__1"])
    b = resolve_bindings(package_spec(), cfg)
    assert b.inputs == tuple(f"INPUT__{i}" for i in range(6))
    assert dict(b.outputs) == {"OUTPUT__4": 4, "OUTPUT__1": 1}


def test_schemes_can_be_mixed_per_entry():
    inputs = ["ARGS[0]", "INPUT__1", "ARGS[1][1]", "INPUT__3", "ARGS[2][k2]", "INPUT__5"]
    cfg = config(inputs, ["OUTPUT__0", "RESULT[nested][k1][1]"])
    b = resolve_bindings(package_spec(), cfg)
    assert b.inputs == tuple(inputs)
    assert dict(b.outputs) == {"OUTPUT__0": 0, "RESULT[nested][k1][1]": 4}


def accepted_listing(kind: str, names: list[str]) -> str:
    ordinal = "INPUT" if kind == "input" else "OUTPUT"
    return ", ".join(f"{n} (= {ordinal}__{i})" for i, n in enumerate(names))


def test_unknown_input_name_lists_accepted_names():
    cfg = config([*PACKAGE_INPUTS[:5], "KWARGSscale"], ["RESULT[sum]"])  # upstream's spelling
    with pytest.raises(ModelLoadError) as e:
        resolve_bindings(package_spec(), cfg)
    msg = str(e.value)
    assert "'aoti_model'" in msg
    assert "input 'KWARGSscale' matches no model input" in msg
    assert accepted_listing("input", PACKAGE_INPUTS) in msg


def test_unknown_output_name_lists_accepted_names():
    cfg = config(PACKAGE_INPUTS, ["RESULT[nested][k1]"])
    with pytest.raises(ModelLoadError) as e:
        resolve_bindings(package_spec(), cfg)
    msg = str(e.value)
    assert "'aoti_model'" in msg and "output 'RESULT[nested][k1]' matches no model output" in msg
    assert accepted_listing("output", PACKAGE_OUTPUTS) in msg
    with pytest.raises(ModelLoadError, match="OUTPUT__5"):
        resolve_bindings(package_spec(), config(PACKAGE_INPUTS, ["OUTPUT__5"]))


def test_missing_input_is_refused():
    cfg = config([n for n in PACKAGE_INPUTS if n != "ARGS[2][k1]"], ["RESULT[sum]"])
    with pytest.raises(ModelLoadError) as e:
        resolve_bindings(package_spec(), cfg)
    msg = str(e.value)
    assert "missing: ARGS[2][k1] (= INPUT__3)." in msg
    assert accepted_listing("input", PACKAGE_INPUTS) in msg


@pytest.mark.parametrize("kind", ["input", "output"])
def test_leaf_addressed_twice_is_refused(kind):
    if kind == "input":
        cfg = config([*PACKAGE_INPUTS, "INPUT__1"], ["RESULT[sum]"])
        expected = "inputs 'ARGS[1][0]' and 'INPUT__1' both address model input ARGS[1][0]"
    else:
        cfg = config(PACKAGE_INPUTS, ["OUTPUT__0", "RESULT[sum]"])
        expected = "outputs 'OUTPUT__0' and 'RESULT[sum]' both address model output RESULT[sum]"
    with pytest.raises(ModelLoadError) as e:
        resolve_bindings(package_spec(), cfg)
    assert expected in str(e.value)
    assert "'aoti_model'" in str(e.value)


@pytest.mark.parametrize("kind", ["input", "output"])
def test_string_tensors_are_refused(kind):
    name = PACKAGE_INPUTS[0] if kind == "input" else PACKAGE_OUTPUTS[0]
    cfg = config(PACKAGE_INPUTS, PACKAGE_OUTPUTS[:1], dtype={name: "TYPE_STRING"})
    with pytest.raises(ModelLoadError, match=rf"{kind} '{re.escape(name)}' is TYPE_STRING"):
        resolve_bindings(package_spec(), cfg)


@pytest.mark.parametrize("key", ['a"b', "a[b", "a]b", "a b", "a\tb", "a\x01b", "a\u00a0b"])
def test_invalid_dict_keys_are_refused(key):
    spec = spec_of((T, {key: T}), {}, T)
    cfg = config(["ARGS[0]", "INPUT__1"], ["RESULT"])
    with pytest.raises(ModelLoadError) as e:
        resolve_bindings(spec, cfg)
    msg = str(e.value)
    assert f"dict keys that cannot be named: {key!r}" in msg
    assert "'aoti_model'" in msg
    assert "ARGS[0] (= INPUT__0)" in msg and "RESULT (= OUTPUT__0)" in msg


def test_invalid_output_key_is_refused_too():
    spec = spec_of((T,), {}, {"bad key": T})
    with pytest.raises(ModelLoadError, match="'bad key'"):
        resolve_bindings(spec, config(["ARGS[0]"], ["OUTPUT__0"]))
