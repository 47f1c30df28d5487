"""The tests a compatibility cell of the matrix runs (``./dev test --python X --torch Y``).

Every unit test, and the integration tests named here: at least one per model kind and feature
area, each against a real tritonserver with the Python-backend stub of the cell's Python. They
are marked ``compat`` at collection (``tests/conftest.py``) and selected with ``-m compat``.
Names are ``file::function``; every parametrisation of a function is included.
"""

from __future__ import annotations

import numpy as np
import pytest

#: tritonserver 2.51's Python-backend stub needs NumPy 1.x: under NumPy 2 (the only NumPy for
#: Python 3.13) a TYPE_STRING (BYTES) request kills the stub ("Stub process ... is not
#: healthy"). Tests that send strings skip there; the README's Compatibility says so.
STRINGS_NEED_NUMPY1 = pytest.mark.skipif(
    int(np.__version__.split(".")[0]) >= 2,
    reason="tritonserver 2.51's Python-backend stub crashes on BYTES tensors under NumPy 2",
)

#: Integration tests per area: the one place the cells' selection is kept.
INTEGRATION: dict[str, tuple[str, ...]] = {
    "TorchScript": (
        "test_torchscript.py::test_healthy_models_ready_and_broken_ones_report_why",
        "test_torchscript.py::test_naming_conventions",
        "test_torchscript.py::test_strings_batched_and_unbatched",
        "test_torchscript.py::test_one_bad_request_in_a_dynamic_batch_fails_alone",
        "test_torchscript.py::test_torchscript_deprecation_logged_once_per_model",
    ),
    ".pt2 built with the cell's torch": (
        "test_aoti.py::test_healthy_models_ready_and_broken_ones_report_why",
        "test_aoti.py::test_complex_model_names_kwargs_and_nested_outputs",
        "test_aoti.py::test_padded_model_pads_to_the_exported_minimum",
        "test_aoti.py::test_one_bad_request_in_a_gathered_batch_fails_alone",
        "test_aoti.py::test_bad_requests_get_clear_errors_and_server_keeps_serving",
    ),
    "nn.Module + torch.compile, torch.export programs": (
        "test_eager.py::test_models_are_ready",
        "test_eager.py::test_module_with_weights_serves_reference_values",
        "test_eager.py::test_exported_program_serves_call_spec_names",
        "test_eager.py::test_inductor_compile_at_load_and_no_recompilation_across_batch_sizes",
        "test_eager.py::test_load_errors",
    ),
    "sequences": (
        "test_sequence.py::test_healthy_models_ready_and_broken_ones_report_why",
        "test_sequence.py::test_interleaved_sequences_keep_their_own_state",
        "test_sequence.py::test_pt2_interleaved_sequences",
    ),
    "auto-complete and packaging": (
        "test_autocomplete.py::test_minimal_nested_config_is_completed_and_serves",
        "test_autocomplete.py::test_packaged_models_serve_the_eager_outputs",
        "test_autocomplete.py::test_minimal_torch_export_program_is_completed_and_serves",
    ),
    "metrics": (
        "test_metrics.py::test_requests_answered_and_failed_per_kind",  # sends strings
        "test_metrics.py::test_rows_forwards_and_time_histograms",  # sends strings
        "test_lifecycle.py::test_reload_over_a_busy_instance_keeps_the_new_instance_series",
    ),
    "bad input": (
        "test_bad_inputs.py::test_a_bad_request_gets_its_own_answer_and_its_batch_is_served",
        "test_bad_inputs.py::test_a_bad_model_fails_its_own_load_and_the_server_keeps_serving",
    ),
}

SELECTED = frozenset(name for names in INTEGRATION.values() for name in names)
