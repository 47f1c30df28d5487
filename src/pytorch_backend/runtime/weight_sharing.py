"""``ENABLE_WEIGHT_SHARING`` across instance processes: one copy of a model's CPU weights in RAM.

In the C++ backend the instances of a model are threads sharing one module object. Here every
instance is its own stub process, so the module cannot be shared; its **tensor memory** can.
:func:`share_module_weights` puts every CPU parameter, buffer (and TorchScript tensor attribute)
of a loaded module into one file in ``/dev/shm`` and re-points the module's tensors, in place, at
a memory map of that file. N instances of one model version then map the same physical pages
instead of holding N private copies; the private copy each instance loaded is freed.

Protocol (``L`` = ``<name>.lock``, ``D`` = ``<name>.weights``, one pair per key):

* everything that creates, checks, counts or deletes ``D`` happens under an exclusive ``flock``
  on ``L``. That lock is only ever waited for with a bound (:func:`_lock` polls): a load that
  cannot get it in ``lock_timeout`` seconds keeps its weights private, and a release that cannot
  get it quickly just drops its reference. Nothing calls out (logs) while holding it;
* the first instance writes ``D`` (to a temporary name, then ``rename``), so ``D`` is always
  complete; later instances reuse it only after checking its layout **and every byte** against
  their own freshly loaded weights (a stale or foreign file is replaced, never trusted);
* each instance that maps ``D`` holds a shared ``flock`` on it (the reference: the kernel drops
  it when the process dies, however it dies) and adds one to the mapping count kept in ``L``.
  The instance that brings the count to ``instances`` (the model's number of CPU instances)
  **unlinks** ``D`` and ``L``: from then on nothing of the model is left in the directory, even if
  a stub is SIGKILLed later, while every instance keeps its mapping (a mapping keeps the pages of
  an unlinked file alive). An instance that comes later (a restarted stub, the next load) finds
  no file and writes a new one, which it cleans up in turn;
* :meth:`SharedWeightsInfo.release` (call it from ``finalize``; it also runs at interpreter exit)
  drops the reference and deletes ``D`` and ``L`` when no other instance holds ``D`` (the case of
  a model whose instances did not all map it). It never blocks without a bound;
* file names carry the owning server (the stub's parent tritonserver: pid and start time), so
  two servers never share or delete each other's files; every load first sweeps the directory:
  weights files of its own server or of a server that is gone that no live process holds (their
  holders all died, e.g. SIGKILLed before the count was reached) are deleted, its own key's
  included, as are lock files without a weights file and temporary files of dead writers.

Instances map ``D`` copy-on-write (``MAP_PRIVATE``): a model that writes into its own buffers
(a stateful model, which upstream warns against sharing) only un-shares the pages it writes and
never changes what the other instances see.

Scope and limits: only CPU tensors are shared. CUDA instances do not share (each process has its
own CUDA context; device memory cannot be mapped between processes this way): CUDA tensors are
skipped with a log line. Quantized, sparse, conjugate/negative-bit and empty tensors stay
private, as do constants that ``torch.jit.freeze`` folded into the graph (they are not module
attributes any more). The key must identify the artifact (see :func:`weights_key`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .devices import module_tensors
from .shm_files import (  # noqa: F401 - _HOLDERS, _release_all, _unused: used by tests
    _HOLDERS,
    PREFIX,
    RELEASE_TIMEOUT,
    Owner,
    _count_mapping,
    _Holder,
    _lock,
    _mapped_by_all,
    _release_all,
    _remove,
    _same_file,
    _share_lock,
    _unused,
    file_stem,
    server_owner,
    sweep,
    weights_key,
)

MAGIC = b"PTBKWSH1"
_HEADER = struct.Struct("<8sQ")
_ALIGN = 64  # >= the itemsize of every dtype, and cache-line aligned
_DATA_ALIGN = 4096
LOCK_TIMEOUT = 120.0  # default bound on waiting for ``L`` at load (another instance may be writing)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class _Entry:
    tensor: torch.Tensor
    storage: int  # index into the plan's storages
    offset: int  # element offset inside its original storage
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass
class _Plan:
    storages: list[torch.UntypedStorage] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # byte offset of each storage in the file
    entries: list[_Entry] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def manifest(self, key: str) -> bytes:
        return json.dumps(
            {
                "key": key,
                "total": self.total,
                "storages": [[o, s.nbytes()] for o, s in zip(self.offsets, self.storages)],
                "tensors": [
                    [e.storage, str(e.tensor.dtype), e.offset, list(e.size), list(e.stride)]
                    for e in self.entries
                ],
            },
            separators=(",", ":"),
        ).encode()


def _skip_reason(tensor: torch.Tensor) -> str | None:
    if tensor.device.type != "cpu":
        return f"on {tensor.device.type}"
    if tensor.layout != torch.strided:
        return "not strided"
    if tensor.is_quantized:
        return "quantized"
    if tensor.is_conj() or tensor.is_neg():
        return "conjugate/negative view"
    if tensor.untyped_storage().nbytes() == 0:
        return "empty"
    return None


def _plan(module: Any) -> _Plan:
    plan = _Plan()
    seen_tensors: set[int] = set()
    storage_index: dict[int, int] = {}
    cursor = 0
    for tensor in module_tensors(module):
        if tensor._cdata in seen_tensors:
            continue
        seen_tensors.add(tensor._cdata)
        reason = _skip_reason(tensor)
        if reason is not None:
            plan.skipped[reason] = plan.skipped.get(reason, 0) + 1
            continue
        storage = tensor.untyped_storage()
        index = storage_index.get(storage.data_ptr())
        if index is None:
            index = storage_index[storage.data_ptr()] = len(plan.storages)
            cursor = _align(cursor, _ALIGN)
            plan.storages.append(storage)
            plan.offsets.append(cursor)
            cursor += storage.nbytes()
        plan.entries.append(
            _Entry(
                tensor=tensor,
                storage=index,
                offset=tensor.storage_offset(),
                size=tuple(tensor.size()),
                stride=tuple(tensor.stride()),
            )
        )
    plan.total = cursor
    return plan


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage)


@dataclass(frozen=True)
class SharedWeightsInfo:
    """Result of :func:`share_module_weights`. ``path`` is None when nothing was shared."""

    path: Path | None
    nbytes: int
    created: bool
    tensors: int = 0  # tensors now backed by the shared file
    skipped: int = 0  # tensors left private (see the module docstring)
    _holder: _Holder | None = field(default=None, repr=False, compare=False)
    unlinked: bool = False  # this instance completed the mapping count and unlinked the file

    def release(self, timeout: float = RELEASE_TIMEOUT) -> bool:
        """Drop this instance's reference (call from ``finalize``); idempotent, never hangs.

        Returns True when this was the last holder and it deleted the file (False when the file
        was already unlinked because every instance had mapped it).
        """
        return self._holder.release(timeout) if self._holder is not None else False


def _write(path: Path, plan: _Plan, manifest: bytes) -> int:
    data_start = _align(_HEADER.size + len(manifest), _DATA_ALIGN)
    total = data_start + max(plan.total, 1)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(_HEADER.pack(MAGIC, len(manifest)))
            handle.write(manifest)
            for offset, storage in zip(plan.offsets, plan.storages):
                handle.seek(data_start + offset)
                handle.write(memoryview(_bytes_of(storage).numpy()))
            handle.truncate(total)
        os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return data_start


def _read_header(fd: int) -> tuple[bytes, int] | None:
    head = os.pread(fd, _HEADER.size, 0)
    if len(head) != _HEADER.size:
        return None
    magic, length = _HEADER.unpack(head)
    if magic != MAGIC or length > 1 << 30:
        return None
    manifest = os.pread(fd, length, _HEADER.size)
    return manifest, _align(_HEADER.size + length, _DATA_ALIGN)


def _matches(mapped: torch.Tensor, data_start: int, plan: _Plan) -> bool:
    for offset, storage in zip(plan.offsets, plan.storages):
        begin = data_start + offset
        region = mapped[begin : begin + storage.nbytes()]
        if not torch.equal(region, _bytes_of(storage)):
            return False
    return True


def _map(path: Path, size: int) -> torch.Tensor:
    # shared=False: MAP_PRIVATE on a read-only descriptor, i.e. copy-on-write pages of the file.
    return torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)


def _repoint(plan: _Plan, mapped: torch.Tensor, data_start: int) -> None:
    storage = mapped.untyped_storage()
    for entry in plan.entries:
        tensor = entry.tensor
        byte_offset = data_start + plan.offsets[entry.storage]
        element_offset = byte_offset // tensor.element_size() + entry.offset
        guard = torch.inference_mode() if tensor.is_inference() else torch.no_grad()
        with guard:
            tensor.set_(storage, element_offset, entry.size, entry.stride)


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc keeps it otherwise)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def share_module_weights(
    module: Any,
    key: str,
    log: Callable[[str], None],
    directory: Path = Path("/dev/shm"),
    *,
    instances: int | None = None,
    warn: Callable[[str], None] | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
    owner: Owner | None = None,
) -> SharedWeightsInfo:
    """Back the CPU tensors of ``module`` (nn.Module or ScriptModule) by a file shared by key.

    Works in place: the module object stays the same and its forward gives identical results.
    Every instance of one model version (same ``key``, e.g. from :func:`weights_key`) calls this
    right after loading, and :meth:`SharedWeightsInfo.release` from ``finalize``. ``instances``
    is how many instances will map the file (the model's KIND_CPU instance count): the one that
    maps it last unlinks it, so nothing is left behind however the instances end. ``None`` keeps
    the file until the last :meth:`~SharedWeightsInfo.release`. If the file cannot be written
    (e.g. ``/dev/shm`` is full) or its lock not had within ``lock_timeout`` seconds, the weights
    stay private and ``warn`` (default ``log``) says why; the load does not fail. ``owner``: the
    server the file belongs to (default: this process's parent, the tritonserver).
    """
    warn = warn or log
    plan = _plan(module)
    skipped = sum(plan.skipped.values())
    if plan.skipped:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(plan.skipped.items()))
        log(f"weight sharing leaves {skipped} tensor(s) private ({reasons})")
    if not plan.entries:
        log("weight sharing: the module has no CPU tensors to share")
        return SharedWeightsInfo(None, 0, False, 0, skipped)
    if instances is not None and instances < 1:
        instances = None

    directory = Path(directory)
    owner = owner or server_owner()  # files are named after their server (see sweep)
    stem = file_stem(key, owner)
    data_path = directory / f"{stem}.weights"
    lock_path = directory / f"{stem}.lock"
    if not directory.is_dir():
        warn(f"weight sharing disabled: {directory} is not a directory")
        return SharedWeightsInfo(None, 0, False, 0, skipped)
    # Before taking our lock (sweep never waits). Our own key too: a weights file nobody holds
    # any more is rewritten rather than reused, so the mapping count restarts with it.
    sweep(directory, log, owner=owner)
    manifest = plan.manifest(key)
    created = unlinked = False
    notes: list[str] = []  # logged once the lock is released: never call out while holding it
    try:
        lock_fd = _lock(lock_path, lock_timeout)
    except OSError as exc:
        warn(f"weight sharing disabled: cannot lock {lock_path}: {exc}")
        return SharedWeightsInfo(None, 0, False, 0, skipped)
    if lock_fd is None:
        warn(
            f"weight sharing disabled: {lock_path} stayed locked for "
            f"{lock_timeout:g} s; this instance keeps its own weights"
        )
        return SharedWeightsInfo(None, 0, False, 0, skipped)
    data_fd: int | None = None
    failure: str | None = None
    holder: _Holder | None = None
    try:
        mapped: torch.Tensor | None = None
        data_start = 0
        try:
            data_fd = os.open(data_path, os.O_RDONLY)
        except FileNotFoundError:
            data_fd = None
        if data_fd is not None and not _share_lock(data_fd, lock_timeout):
            failure = f"{data_path} stayed locked for {lock_timeout:g} s"
            os.close(data_fd)
            data_fd = None
        elif data_fd is not None:
            header = _read_header(data_fd)
            size = os.fstat(data_fd).st_size
            if header is not None and header[0] == manifest and size >= header[1] + plan.total:
                data_start = header[1]
                mapped = _map(data_path, size)
                if not _matches(mapped, data_start, plan):
                    mapped = None
            if mapped is None:
                notes.append(f"replacing stale shared weights file {data_path}")
                os.close(data_fd)
                data_fd = None
        if mapped is None and failure is None:
            try:
                data_start = _write(data_path, plan, manifest)
            except OSError as exc:  # e.g. ENOSPC: /dev/shm is full
                failure = f"cannot write {data_path}: {exc}"
            else:
                created = True
                data_fd = os.open(data_path, os.O_RDONLY)
                if not _share_lock(data_fd, lock_timeout):  # only _unused, under L, takes LOCK_EX
                    failure = f"{data_path} stayed locked for {lock_timeout:g} s"
                    _remove(data_path)  # ours, unmapped, and we still hold L
                else:
                    mapped = _map(data_path, os.fstat(data_fd).st_size)
        if failure is None:
            assert mapped is not None and data_fd is not None
            _repoint(plan, mapped, data_start)
            holder = _Holder(data_path, lock_path, data_fd)
            data_fd = None
            if instances is not None and _mapped_by_all(lock_fd, data_path, instances):
                # Every instance has mapped it: unlink now, nothing can outlive the instances.
                _remove(data_path)
                _remove(lock_path)
                unlinked = True
    finally:
        if data_fd is not None:
            os.close(data_fd)
        os.close(lock_fd)
    for note in notes:
        log(note)
    if failure is not None:
        warn(f"weight sharing disabled: {failure}")
        return SharedWeightsInfo(None, 0, False, 0, skipped)

    tensors, nbytes = len(plan.entries), plan.total
    plan = _Plan()  # drop the last references to the private storages
    gc.collect()
    _malloc_trim()
    count = f" of {instances}" if instances is not None else ""
    log(
        f"weight sharing: {tensors} tensor(s), {_mib(nbytes)} "
        f"{'written to' if created else 'mapped from'} {data_path}"
        + (f" (mapped by all{count} instances: unlinked)" if unlinked else "")
    )
    return SharedWeightsInfo(data_path, nbytes, created, tensors, skipped, holder, unlinked)


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"
