"""Send one request to each example model and print its outputs.

    pytorch-backend serve model_repository_examples      # in another shell
    python model_repository_examples/client.py           # HTTP on localhost:8000
    python model_repository_examples/client.py --grpc    # gRPC on localhost:8001

Exits with status 1 if any request fails. Needs ``tritonclient[http,grpc]`` and numpy.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

# Each model: {input name: array}; every request carries a batch of 2 (first dimension).
X = np.array([[1.0, -2.0, 3.0, -4.0], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
ROWS = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 2.0]], dtype=np.float32)
AOTI_LEAVES = [X, ROWS, ROWS * 2, np.ones_like(X), np.zeros_like(X)]  # x, a, b, gain, bias
SCALE = np.array([[2.0], [-1.0]], dtype=np.float32)

REQUESTS: dict[str, dict[str, np.ndarray]] = {
    "mlp_batched": {"INPUT__0": X},
    "named_multi_output": {
        "image": np.arange(12, dtype=np.float32).reshape(2, 2, 3) - 5,
        "scale": np.array([[2.0], [0.5]], dtype=np.float32),
    },
    "dict_input": {"x": X, "y": ROWS},
    "string_io": {
        "INPUT__0": np.array([[b"hello world"], ["grüß dich".encode()]], dtype=np.object_)
    },
    "aoti_nested": {
        **dict(
            zip(
                ["ARGS[0]", "ARGS[1][0]", "ARGS[1][1]", "ARGS[2][gain]", "ARGS[2][bias]"],
                AOTI_LEAVES,
            )
        ),
        "KWARGS[scale]": SCALE,
    },
    "aoti_nested_ordinal": {f"INPUT__{i}": v for i, v in enumerate([*AOTI_LEAVES, SCALE])},
    "dropin_python": {"INPUT__0": X},
    "packaged_mlp": {"ARGS[0]": X},  # config.pbtxt written by pytorch_backend.package
    "eager_module": {"x": X},
}
REQUESTS["exported_nested"] = REQUESTS["aoti_nested"]
OUTPUTS = {
    "mlp_batched": ["OUTPUT__0"],
    "named_multi_output": ["OUTPUT__0", "OUTPUT__1", "OUTPUT__2"],
    "dict_input": ["OUTPUT__0", "OUTPUT__1"],
    "string_io": ["OUTPUT__0", "OUTPUT__1", "OUTPUT__2"],
    "aoti_nested": ["RESULT[total]", "RESULT[parts][0]", "RESULT[parts][1]"],
    "aoti_nested_ordinal": ["OUTPUT__0", "OUTPUT__1", "OUTPUT__2"],
    "dropin_python": ["OUTPUT__0"],
    "packaged_mlp": ["RESULT"],
    "eager_module": ["OUTPUT__0"],
    "exported_nested": ["RESULT[total]", "RESULT[parts][0]", "RESULT[parts][1]"],
}


def triton_dtype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == np.object_ else {"float32": "FP32"}[array.dtype.name]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    parser.add_argument(
        "--url", help="server address (default localhost:8000, or :8001 with --grpc)"
    )
    parser.add_argument("models", nargs="*", default=list(REQUESTS), help="models to call (all)")
    args = parser.parse_args()

    if args.grpc:
        import tritonclient.grpc as triton
    else:
        import tritonclient.http as triton
    url = args.url or ("localhost:8001" if args.grpc else "localhost:8000")
    client = triton.InferenceServerClient(url=url)

    failures = 0
    for model in args.models:
        inputs = []
        for name, array in REQUESTS[model].items():
            tensor = triton.InferInput(name, list(array.shape), triton_dtype(array))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(name) for name in OUTPUTS[model]]
        print(f"== {model}")
        try:
            result = client.infer(model, inputs, outputs=outputs)
        except Exception as error:  # report and go on with the next model
            print(f"   FAILED: {error}")
            failures += 1
            continue
        for name in OUTPUTS[model]:
            value = result.as_numpy(name)
            if value.dtype == np.object_:  # BYTES: show the UTF-8 text
                value = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value)
            text = np.array2string(value, separator=", ").replace("\n", "\n" + " " * 6)
            print(f"   {name} {value.dtype} {list(value.shape)}:\n      {text}")
    if failures:
        print(f"{failures} of {len(args.models)} model(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
