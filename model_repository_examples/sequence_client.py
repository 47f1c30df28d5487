"""Run two interleaved sequences against the ``accumulator`` example (a stateful model).

    pytorch-backend serve model_repository_examples              # in another shell
    python model_repository_examples/sequence_client.py          # HTTP on localhost:8000
    python model_repository_examples/sequence_client.py --grpc   # gRPC on localhost:8001

Each request carries its sequence's id; the first one says START and the last one END. The
model returns the running sum of its sequence's inputs: the backend keeps each sequence's state
between requests. Exits with status 1 if a sum is wrong. Needs ``tritonclient[http,grpc]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", action="store_true", help="use gRPC (default: HTTP)")
    parser.add_argument("--url", help="server address (default localhost:8000 / :8001)")
    args = parser.parse_args()
    if args.grpc:
        import tritonclient.grpc as triton

        url = args.url or "localhost:8001"
    else:
        import tritonclient.http as triton

        url = args.url or "localhost:8000"
    client = triton.InferenceServerClient(url)
    rng = np.random.default_rng(0)
    steps = 4
    sequences = {101: rng.integers(0, 10, (steps, 1, 4)), 202: rng.integers(0, 10, (steps, 1, 4))}
    sums = {sequence: np.zeros((1, 4), dtype=np.float32) for sequence in sequences}
    failed = False
    for step in range(steps):
        for sequence, values in sequences.items():  # interleaved: 101, 202, 101, 202, ...
            x = values[step].astype(np.float32)
            item = triton.InferInput("INPUT__0", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            result = client.infer(
                "accumulator",
                [item],
                sequence_id=sequence,
                sequence_start=step == 0,
                sequence_end=step == steps - 1,
            )
            got = result.as_numpy("OUTPUT__0")
            sums[sequence] += x
            ok = np.array_equal(got, sums[sequence])
            failed |= not ok
            print(
                f"sequence {sequence} step {step}: sent {x[0].tolist()} -> running sum "
                f"{got[0].tolist()}{'' if ok else f' (expected {sums[sequence][0].tolist()})'}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
