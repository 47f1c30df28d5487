"""NumPy oracle of the example models' outputs (``pytorch_backend.serving.examples``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pytorch_backend.serving.examples import (
    DROPIN_MODEL,
    EAGER_MODEL,
    EXPORTED_MODEL,
    MODELS,
    PACKAGED_MODEL,
)


def _ascii_upper(text: str) -> str:
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in text)


def _as_str(item: object) -> str:
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def _aoti_reference(*leaves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``leaves`` in flattened order: x, a, b, gain, bias, scale."""
    x, a, b, gain, bias, scale = (np.asarray(v, dtype=np.float32) for v in leaves)
    total = ((x + a * b) * gain * scale + bias).astype(np.float32)
    return (
        total,
        (a - b).astype(np.float32),
        np.argmax(total, axis=1).reshape(-1, 1).astype(np.int64),
    )


def reference_outputs(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Expected outputs of example ``model`` for batched ``inputs`` keyed by config input name.

    STRING tensors are ``np.object_`` arrays (``bytes`` or ``str`` elements in, ``bytes`` out)
    shaped ``[B]`` or ``[B, 1]``; string outputs are returned shaped ``[B]``.
    """
    if model in ("mlp_batched", DROPIN_MODEL, PACKAGED_MODEL, EAGER_MODEL):
        name_in, name_out = {
            PACKAGED_MODEL: ("ARGS[0]", "RESULT"),
            EAGER_MODEL: ("x", "OUTPUT__0"),
        }.get(model, ("INPUT__0", "OUTPUT__0"))
        x = np.asarray(inputs[name_in], dtype=np.float32)
        out = np.stack([x.sum(1), np.abs(x).sum(1), x[:, 0] - x[:, 3] + 1], axis=1)
        return {name_out: out.astype(np.float32)}
    if model == "named_multi_output":
        image = np.asarray(inputs["image"], dtype=np.float32)
        scale = np.asarray(inputs["scale"], dtype=np.float32)
        scaled = image * scale.reshape(-1, 1, 1)
        best = np.argmax(scaled.reshape(len(scaled), -1), axis=1).reshape(-1, 1)
        return {"OUTPUT__0": scaled, "OUTPUT__1": best.astype(np.int64), "OUTPUT__2": scaled > 0}
    if model == "dict_input":
        x = np.asarray(inputs["x"], dtype=np.float32)
        y = np.asarray(inputs["y"], dtype=np.float32)
        return {"OUTPUT__0": x + y, "OUTPUT__1": x * y}
    if model == "string_io":
        texts = [_as_str(item) for item in np.asarray(inputs["INPUT__0"]).reshape(-1)]
        upper = [_ascii_upper(t).encode("utf-8") for t in texts]
        words = [" ".join(reversed(t.split(" "))).encode("utf-8") for t in texts]
        lengths = [len(t.encode("utf-8")) for t in texts]
        return {
            "OUTPUT__0": np.array(upper, dtype=np.object_),
            "OUTPUT__1": np.array(words, dtype=np.object_),
            "OUTPUT__2": np.array(lengths, dtype=np.int64).reshape(-1, 1),
        }
    if model in ("aoti_nested", EXPORTED_MODEL):
        names = ("ARGS[0]", "ARGS[1][0]", "ARGS[1][1]", "ARGS[2][gain]", "ARGS[2][bias]")
        outs = _aoti_reference(*(inputs[n] for n in names), inputs["KWARGS[scale]"])
        return dict(zip(("RESULT[total]", "RESULT[parts][0]", "RESULT[parts][1]"), outs))
    if model == "aoti_nested_ordinal":
        outs = _aoti_reference(*(inputs[f"INPUT__{i}"] for i in range(6)))
        return {f"OUTPUT__{i}": out for i, out in enumerate(outs)}
    raise KeyError(f"unknown example model {model!r} (known: {', '.join(MODELS)})")
