"""The kernel-spectrum cache, for every implementation: a value prepared from a kernel (the
CPU path's spectrum rows, ``fft_convnd``'s spectrum, the Triton path's Monarch-order planes)
is reused only while the kernel's values are, bit for bit, those it was prepared from.

The rule (DESIGN.md, Soundness: caches): a hit needs proof that the values are unchanged,
whatever wrote them.  Version counters are no proof: ``torch.optim`` with ``fused=True``, FSDP2's
all-gather (under ``torch.autograd._unsafe_preserve_version_counter``), writes through
``p.data``, ``buffer.data`` or a numpy view change values and leave ``_version`` as it was.  So
every entry keeps a copy of the kernel's bits, and a lookup compares the kernel with it:
- bit patterns, not values (``same_bits``: each element's bits viewed as an integer): a
  kernel holding NaN hits when its bits are unchanged, and -0.0 after 0.0 is a change, as it
  may change the prepared value's signs;
- on CPU with numpy, in 256 KiB chunks (``CHUNK_BYTES``), so the pass stays in cache and a
  changed kernel (a training step) stops at its first chunk; elsewhere ``torch.equal`` of the
  integer views (on a GPU that returns its answer to the host: a synchronisation).

What it costs (measured on the 2-core machine at load average ~4.7 from other jobs, one thread,
float32 kernels (H, K), medians of 30; the CPU path's prepare is an rfft of every row at n = 2K):
    H, K         kernel   compare, unchanged   prepare saved   prepare / compare   store's copy
    256, 1024     1 MiB        0.05 ms            0.66 ms            13x              0.03 ms
    256, 4096     4 MiB        0.25 ms            8.1 ms             33x              0.14 ms
    256, 16384   16 MiB        1.5 ms           115 ms               77x              1.7 ms
    64, 131072   32 MiB        7.9 ms           313 ms               40x             43 ms
A changed kernel is rejected in about 20 us when its first chunk differs (a training step), and
at worst in one pass.  A store copies the kernel once (the copy is the proof), so an entry costs
its spectrum plus the kernel's own bytes.  At op level, the comparison is what "k const" costs
over "k frozen" in bench/cpu.py (README, Performance).

Two keys:
- ``lookup`` (a kernel the compiler proved is module state, ``constant_kernel``): the
  storage plus the view geometry.  A weak reference to the StorageImpl (``StorageWeakRef``)
  is held by the entry: while it exists no new storage can have the same StorageImpl, and
  ``expired()`` says the old one died (the entry is dropped).  Activations must not fill the
  cache: an entry is stored only the second time a key is seen without a valid entry; the
  first sighting records the key alone, and so does a lookup that finds the kernel changed
  (so a kernel that changes every step pays a comparison, and every other step a copy);
- ``lookup_value`` (a kernel rebuilt with the same values call after call, e.g. a graph
  computing ``irfftn(weight)`` at inference: a fresh storage each time): shape, dtype and
  device; a few entries (``MAX_VALUE_ENTRIES``), stored on the first miss.
Both live in one LRU bounded in bytes (``convfuse.config.cpu_cache_mb``, default 256 MiB, read at
import) and entries.

The opt-in that skips the comparison: ``convfuse.freeze(model)`` (``freeze``) says the
storages of a module's parameters and buffers, as they are now, will not be written while
frozen; their entries then hit by storage and geometry alone (stored at once, no copy, no
comparison: the README's line says what that assumes).  Freezing again drops the spectra it
trusted (write new values, then freeze again); ``unfreeze`` ends it.  A rebound parameter
(``p.data = t``, a new ``nn.Parameter``) has a new storage, which is not frozen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, Iterable, NamedTuple

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

try:
    import numpy as _np
except ImportError:  # torch runs without numpy: torch.equal then
    _np = None

MAX_BYTES = int(__import__("convfuse.config").config.cpu_cache_mb * 2**20)  # convfuse.config, at import
MAX_ENTRIES = 64
MAX_SEEN = 256  # first sightings remembered (keys only, a few hundred bytes each)
MAX_VALUE_ENTRIES = 8
CHUNK_BYTES = 256 * 1024

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class _Entry(NamedTuple):
    ref: StorageWeakRef | None  # the kernel's storage (``lookup``'s entries)
    bits: Tensor | None  # the bits it was prepared from (None: stored while frozen, trusted)
    value: Tensor
    nbytes: int


_lock = threading.Lock()
_entries: OrderedDict[Hashable, _Entry] = OrderedDict()
_seen: OrderedDict[Hashable, StorageWeakRef] = OrderedDict()
_frozen: dict[int, StorageWeakRef] = {}  # StorageImpl address -> a weak ref holding it
_bytes = 0
stats = {"hits": 0, "misses": 0, "stores": 0, "stale": 0}  # stale: the kernel had changed
value_stats = {"hits": 0, "misses": 0}


# -- comparing bits -------------------------------------------------------------------------


def bits(t: Tensor) -> Tensor:
    """A view of ``t``'s bit patterns as integers (complex as pairs), detached."""
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.is_floating_point():
        t = t.view(_INT_OF_SIZE[t.element_size()])
    return t


def same_bits(stored: Tensor, k: Tensor) -> bool:
    """Whether ``k``'s elements have the bit patterns of ``stored`` (a contiguous ``bits`` copy)."""
    b = bits(k)
    if b.shape != stored.shape or b.dtype != stored.dtype or b.device != stored.device:
        return False
    if b.device.type != "cpu" or _np is None:
        return torch.equal(stored, b)
    x = stored.numpy()
    if not b.is_contiguous():
        return bool(_np.array_equal(x, b.numpy()))
    x, y = x.reshape(-1), b.reshape(-1).numpy()
    if x.nbytes % 8 == 0 and x.dtype.itemsize < 8:
        x, y = x.view(_np.int64), y.view(_np.int64)  # fewer, wider elements: the same bits
    step = max(1, CHUNK_BYTES // x.dtype.itemsize)
    for i in range(0, x.size, step):
        if not _np.array_equal(x[i : i + step], y[i : i + step]):
            return False
    return True


def _copy_bits(k: Tensor) -> Tensor:
    return bits(k).clone(memory_format=torch.contiguous_format)


# -- keys -----------------------------------------------------------------------------------


def tensor_key(k: Tensor) -> tuple[Hashable, StorageWeakRef] | None:
    """(key, weak storage ref) for a tensor whose prepared value may be cached, or None."""
    if k.requires_grad and torch.is_grad_enabled() and k.grad_fn is not None:
        return None  # a non-leaf being differentiated: a new value every step
    try:
        storage = k.untyped_storage()
    except (RuntimeError, NotImplementedError):  # no storage (a tensor subclass)
        return None
    ref = StorageWeakRef(storage)
    return (ref.cdata, k.storage_offset(), tuple(k.shape), tuple(k.stride()), k.dtype, k.device), ref


def _nbytes(*tensors: Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _drop_locked(key: Hashable) -> None:
    global _bytes
    entry = _entries.pop(key, None)
    if entry is not None:
        _bytes -= entry.nbytes


def _store_locked(key: Hashable, entry: _Entry) -> None:
    global _bytes
    _drop_locked(key)
    for dead in [k for k, e in _entries.items() if e.ref is not None and e.ref.expired()]:
        _drop_locked(dead)  # their kernels are gone: free their memory now
    _entries[key] = entry
    _bytes += entry.nbytes
    values = [k for k in _entries if k[0] == "value"] if key[0] == "value" else []
    for old in values[: max(0, len(values) - MAX_VALUE_ENTRIES)]:
        _drop_locked(old)
    while _entries and (_bytes > MAX_BYTES or len(_entries) > MAX_ENTRIES):
        _drop_locked(next(iter(_entries)))


def _is_frozen(ref: StorageWeakRef) -> bool:
    held = _frozen.get(ref.cdata)
    return held is not None and not held.expired()


# -- lookups ---------------------------------------------------------------------------------


def lookup(k: Tensor, variant: Hashable, compute: Callable[[], Tensor], *, by_value: bool = True) -> Tensor | None:
    """The cached prepared kernel for (k, variant), computing and storing it when k was seen
    before; None when the caller should compute it itself (first sightings: fused per block).

    A hit needs k's bits equal to those the entry was prepared from, or k's storage frozen
    (``freeze``).  ``by_value=False``: frozen kernels only (None for the rest), for a caller
    whose comparison would cost more than it saves (a GPU's synchronisation)."""
    tk = tensor_key(k)
    if tk is None:
        return None
    key, ref = tk
    key = (key, variant)
    with _lock:
        trusted = _is_frozen(ref)
        if not (trusted or by_value):
            return None
        entry = _entries.get(key)
        if entry is not None and entry.ref.expired():
            _drop_locked(key)
            entry = None
    if entry is not None:
        # trusted: frozen, so no comparison; an entry stored while frozen has no copy to compare
        # with once unfrozen, so it is stale
        good = trusted or (entry.bits is not None and same_bits(entry.bits, k))  # outside the lock
        with _lock:
            if good:
                if key in _entries:
                    _entries.move_to_end(key)
                stats["hits"] += 1
                return entry.value
            if _entries.get(key) is entry:
                _drop_locked(key)
            stats["stale"] += 1
    with _lock:
        stats["misses"] += 1
        if not trusted:  # store on the second sighting
            old = _seen.get(key)
            if old is None or old.expired() or entry is not None:
                _seen[key] = ref
                _seen.move_to_end(key)
                while len(_seen) > MAX_SEEN:
                    _seen.popitem(last=False)
                return None
            del _seen[key]
    copy = None if trusted else _copy_bits(k)  # before compute: the bits the value comes from
    value = compute()  # outside the lock: the expensive part
    entry = _Entry(ref, copy, value, _nbytes(copy, value))
    if entry.nbytes > MAX_BYTES:
        return value
    with _lock:
        _store_locked(key, entry)
        stats["stores"] += 1
    return value


def lookup_value(k: Tensor, variant: Hashable, compute: Callable[[], Tensor]) -> Tensor:
    """The prepared kernel for (k, variant): the stored one when k's bits equal those of the
    kernel it was computed from, else computed now and stored in place of the last one with
    k's shape."""
    key = ("value", tuple(k.shape), k.dtype, k.device, variant)
    with _lock:
        entry = _entries.get(key)
    if entry is not None and same_bits(entry.bits, k):  # outside the lock: a pass over k
        with _lock:
            value_stats["hits"] += 1
            if key in _entries:
                _entries.move_to_end(key)
        return entry.value
    copy = _copy_bits(k)
    value = compute()
    entry = _Entry(None, copy, value, _nbytes(copy, value))
    with _lock:
        value_stats["misses"] += 1
        if entry.nbytes <= MAX_BYTES:
            _store_locked(key, entry)
        else:
            _drop_locked(key)
    return value


# -- the opt-in: frozen kernels ------------------------------------------------------------------


def _tensors(obj) -> list[Tensor]:
    if isinstance(obj, torch.nn.Module):
        return [*obj.parameters(), *obj.buffers()]
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Iterable):
        return [t for item in obj for t in _tensors(item)]
    raise TypeError(f"convfuse.freeze: expected a module, a tensor or tensors, got {type(obj).__name__}")


def _refs(obj) -> dict[int, StorageWeakRef]:
    refs = {}
    for t in _tensors(obj):
        t = getattr(t, "_local_tensor", t)  # a DTensor's local shard
        try:
            ref = StorageWeakRef(t.untyped_storage())
        except (RuntimeError, NotImplementedError):
            continue  # no storage: never cached by storage anyway
        refs[ref.cdata] = ref
    return refs


def _drop_storages_locked(cdatas) -> None:
    for key in [key for key, e in _entries.items() if e.ref is not None and e.ref.cdata in cdatas]:
        _drop_locked(key)


def freeze(obj):
    """Opt in to trusting that kernels stay constant: ``convfuse.freeze(model)`` (or a tensor, or
    tensors) declares that the storages of the module's parameters and buffers, as they are
    now, are not written until ``unfreeze`` (by anything: an optimizer, ``.data``,
    ``load_state_dict``, ``copy_``, numpy, FSDP).  Spectra of kernels read from them are then
    reused with no comparison (the default compares every call).  Spectra cached before are
    dropped, so freezing again after writing new values is how to update.  Returns ``obj``."""
    refs = _refs(obj)
    with _lock:
        for cdata in [c for c, r in _frozen.items() if r.expired()]:
            del _frozen[cdata]
        _frozen.update(refs)
        _drop_storages_locked(refs.keys())
    return obj


def unfreeze(obj=None):
    """End ``freeze`` for ``obj``'s storages (all when None), dropping the spectra trusted for them.
    Returns ``obj``."""
    with _lock:
        cdatas = set(_frozen) if obj is None else set(_refs(obj)) & set(_frozen)
        for cdata in cdatas:
            del _frozen[cdata]
        _drop_storages_locked(cdatas)
    return obj


def is_frozen(k: Tensor) -> bool:
    tk = tensor_key(k)
    with _lock:
        return tk is not None and _is_frozen(tk[1])


# -- housekeeping ---------------------------------------------------------------------------------


def discard(variant_matches: Callable[[Hashable], bool]) -> None:
    """Drop the entries whose variant ``variant_matches`` (an implementation's own, on leaving a mode)."""
    with _lock:
        for key in [key for key in _entries if variant_matches(key[-1])]:
            _drop_locked(key)


def clear() -> None:
    """Drop every entry and first sighting, and reset the counters (frozen storages stay frozen)."""
    global _bytes
    with _lock:
        _entries.clear()
        _seen.clear()
        _bytes = 0
        for counters in (stats, value_stats):
            for name in counters:
                counters[name] = 0


def size_bytes() -> int:
    return _bytes
