"""torch_compat: each version-dependent API, on the torch this test runs with (every matrix cell
runs it: 2.9, 2.13 and 2.15), plus the pure parsing of texts from every version."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.utils._pytree as pytree

from pytorch_backend import torch_compat
from pytorch_backend.executors.aoti.checks import (
    DimCheck,
    InputCheck,
    package_source,
    parse_input_checks,
    violation,
)
from tests import aoti_models as models

# What each torch says when a package refuses an input (2.13, 2.15: the check; 2.9: only this).
CHECK_TEXT = (
    "run_func_( container_handle_, input_handles.data(), ...) API call failed at "
    "/pytorch/torch/csrc/inductor/aoti_runner/model_container_runner.cpp, line 145\n"
    "input_handles[0]: dim value is too small at 1, expected it to be >= 2, but got: 1"
)
OPAQUE_TEXT = (
    "run_func_( container_handle_, input_handles.data(), input_handles.size(), ...) API call "
    "failed at /pytorch/torch/csrc/inductor/aoti_runner/model_container_runner.cpp, line 145"
)


def test_version_and_the_oldest_supported():
    assert torch_compat.version("2.9.0+cu128") == (2, 9)
    assert torch_compat.version("2.15.0") == (2, 15)
    assert torch_compat.unsupported_reason("2.9.0") is None
    assert torch_compat.unsupported_reason() is None  # the torch running this test
    reason = torch_compat.unsupported_reason("2.6.0+cpu")
    assert reason is not None and "torch 2.6.0+cpu is not supported" in reason
    assert "oldest supported torch is 2.9" in reason and "AOT-Inductor package loader" in reason


def test_runner_messages_of_every_version():
    check = torch_compat.parse_aoti_check(CHECK_TEXT)
    assert check is not None and (check.leaf, check.kind, check.dim, check.value) == (
        0,
        "small",
        1,
        2,
    )
    large = torch_compat.parse_aoti_check(
        "input_handles[2]: dim value is too large at 0, expected to be <= 16, but got: 17"
    )
    assert large is not None and (large.leaf, large.kind, large.value) == (2, "large", 16)
    dtype = torch_compat.parse_aoti_check(
        "input_handles[1]: unmatched dtype, expected: 4(at::kLong), but got: 6(at::kFloat)"
    )
    assert dtype is not None and dtype.kind == "dtype" and dtype.expected == "at::kLong"
    assert torch_compat.parse_aoti_check(OPAQUE_TEXT) is None
    assert torch_compat.aoti_error_is_opaque(OPAQUE_TEXT)
    assert not torch_compat.aoti_error_is_opaque(CHECK_TEXT)
    assert not torch_compat.aoti_error_is_opaque("RuntimeError: the model raised")


def test_package_loader_and_stated_checks_on_this_torch():
    path = models.build_padded()
    loader = torch_compat.aoti_package_loader(str(path), "model", -1)
    in_spec, out_spec = loader.get_call_spec()
    assert pytree.treespec_loads(in_spec).num_leaves == 1
    source = package_source(path)
    assert source is not None, "the package states no input checks"
    (check,) = parse_input_checks(source)
    assert check.dtype == "FP32"
    assert check.dims[0] == DimCheck(models.PADDED_MIN_BATCH, models.PADDED_MAX_BATCH)
    assert check.dims[1] == DimCheck(2, 32)
    x = torch.ones(models.PADDED_MIN_BATCH, 4)
    torch.testing.assert_close(loader.run([x])[0], x * 2 + 1)


def test_violations_use_the_runtime_check_words():
    check = InputCheck("FP32", (DimCheck(3, 16), DimCheck(2, 32), DimCheck(4, 4)))
    assert violation(0, check, torch.zeros(3, 2, 4)) is None
    too_large = violation(1, check, torch.zeros(3, 40, 4))
    assert too_large is not None and too_large.text == (
        "input_handles[1]: dim value is too large at 1, expected to be <= 32, but got: 40"
    )
    too_small = violation(0, check, torch.zeros(3, 1, 4))
    assert too_small is not None
    parsed = torch_compat.parse_aoti_check(too_small.text)
    assert parsed is not None and (parsed.leaf, parsed.kind, parsed.dim, parsed.value) == (
        0,
        "small",
        1,
        2,
    )
    static = violation(0, check, torch.zeros(3, 2, 5))
    assert static is not None and static.kind == "static" and "expected: 4" in static.text
    rank = violation(0, check, torch.zeros(3, 2))
    assert rank is not None and rank.kind == "rank"


def test_dynamo_counter_and_compile_errors():
    assert isinstance(torch_compat.dynamo_unique_graphs(), int)
    types = torch_compat.compile_error_types()
    assert types and all(issubclass(t, BaseException) for t in types)
    x = torch.zeros(4, 3)
    torch_compat.mark_dynamic(x, 0)


class _Twice(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_export_call_spec_and_size_symbol():
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(_Twice(), (torch.zeros(2, 3),), dynamic_shapes=({0: batch},))
    in_spec, out_spec = torch_compat.program_call_spec(program)
    assert in_spec.num_leaves == 1 and out_spec.num_leaves == 1
    assert len(torch_compat.treespec_children(in_spec)) == 2  # (args, kwargs)
    node = next(n for n in program.graph.nodes if n.op == "placeholder")
    symbol = torch_compat.size_symbol(node.meta["val"].shape[0])
    assert symbol is not None and symbol in program.range_constraints
    assert torch_compat.size_symbol(3) is None


@pytest.mark.parametrize("category", torch_compat.JIT_DEPRECATION_CATEGORIES)
def test_quiet_torchscript_keeps_both_categories_and_passes_others(category):
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with torch_compat.quiet_torchscript(caught):
            warnings.warn(
                "`torch.jit.load` is deprecated. Please switch to `torch.export`.",
                category,
                stacklevel=1,
            )
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert caught == ["`torch.jit.load` is deprecated. Please switch to `torch.export`."]
    assert [str(w.message) for w in shown] == ["something else"]
    line = torch_compat.torchscript_deprecation(caught)
    assert line is not None and torch.__version__ in line
    assert "pytorch-backend convert" in line and "pytorch-backend package" in line
    assert torch_compat.torchscript_deprecation([]) is None


def test_jit_load_on_this_torch_warns_nothing_through_quiet(tmp_path):
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_Twice()), str(path))
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with torch_compat.quiet_torchscript(caught):
            torch.jit.load(str(path))
    assert not [w for w in shown if "deprecated" in str(w.message)]
    # torch 2.13 deprecates TorchScript (DeprecationWarning), 2.14+ with a FutureWarning.
    assert bool(caught) == (torch_compat.version() >= (2, 13)), caught


def test_an_unsupported_torch_fails_the_load_naming_the_version(tmp_path, monkeypatch):
    from pytorch_backend.errors import ModelLoadError
    from tests.unit.builders import build, ts_config, ts_repo

    model_dir = ts_repo(tmp_path)
    monkeypatch.setattr(torch, "__version__", "2.6.0+cu124")
    with pytest.raises(ModelLoadError) as info:
        build(model_dir, ts_config())
    message = str(info.value)
    assert message.startswith("model 'm': torch 2.6.0+cu124 is not supported"), message
    assert "oldest supported torch is 2.9" in message


def test_without_stated_checks_the_runtime_is_probed_where_its_messages_allow(monkeypatch):
    """The fallback for a package without generated source: 2.13 and 2.15 raise the failed
    check (the range is probed); 2.9 only prints it, and the load says so."""
    from pytorch_backend.errors import ModelLoadError
    from pytorch_backend.executors.aoti import executor as aoti
    from tests.unit.test_aoti_executor import PADDED_IN, PADDED_OUT, make_config

    monkeypatch.setattr(aoti, "stated_checks", lambda path: None)
    config = make_config(16, PADDED_IN, PADDED_OUT)
    if torch_compat.version() >= (2, 13):
        ex = aoti.AotiExecutor(config, models.build_padded(), torch.device("cpu"))
        assert ex.input_checks is None
        assert ex.batch_range == (models.PADDED_MIN_BATCH, models.PADDED_MAX_BATCH)
        with pytest.raises(aoti.RequestError, match="too large at 1"):
            ex.run({"ARGS[0]": torch.zeros(4, 40)})
    else:
        with pytest.raises(ModelLoadError, match="reports input-check failures only on stderr"):
            aoti.AotiExecutor(config, models.build_padded(), torch.device("cpu"))
