"""Kernel-spectrum cache for the CPU path: a constant kernel is transformed once.

A kernel that is a parameter or buffer reaches the operator as the same storage call
after call (under torch.compile often through a fresh detached alias, so the Python
tensor object is not a usable key).  The key is therefore the storage plus the view
geometry plus the tensor's version counter, which every in-place update bumps
(``opt.step()``, ``p.mul_()``, ``p.copy_()`` under no_grad; detached aliases share it).

Why it can never return a stale entry:
- a weak reference to the StorageImpl (``StorageWeakRef``) is held by the entry; while
  it exists the StorageImpl's memory is not freed, so no new storage can be allocated
  at the same address (the data_ptr-reuse trap), and ``expired()`` tells us the old
  storage died, in which case the entry is dropped;
- a changed version (in-place update) misses;
- inference tensors have no version counter: they are never cached.
Known blind spot, shared with autograd: writes through an alias that has its own
version counter (``p.data.mul_()``) are not seen.

Activations must not fill the cache: an entry is stored only the second time the same
(storage, version, variant) key is seen; the first sighting records the key alone.
The cache is an LRU bounded in bytes (``CONVFUSE_CPU_CACHE_MB``, default 256) and
entries.

``lookup_value`` is the other key, for a kernel nobody proved constant but that is rebuilt
with the same values call after call (a graph computing ``irfftn(weight)`` every call at
inference: a fresh storage each time).  An entry keeps a copy of the kernel and is used
only when the kernel equals that copy element for element, so it can never be stale,
whatever wrote the memory; a miss costs a comparison that stops at the first difference
and a copy of the kernel.  Its entries are few (``MAX_VALUE_ENTRIES``) and bounded in
bytes on their own.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable, Hashable

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

MAX_BYTES = int(__import__("convfuse.config").config.cpu_cache_mb * 2**20)  # convfuse.config, at import
MAX_ENTRIES = 64
MAX_SEEN = 256  # first sightings remembered (keys only, a few hundred bytes each)

_lock = threading.Lock()
_entries: OrderedDict[Hashable, tuple[StorageWeakRef, Tensor]] = OrderedDict()
_seen: OrderedDict[Hashable, StorageWeakRef] = OrderedDict()
_bytes = 0
stats = {"hits": 0, "misses": 0, "stores": 0}
MAX_VALUE_ENTRIES = 8
_by_value: OrderedDict[Hashable, tuple[Tensor, Tensor]] = OrderedDict()  # key -> (kernel copy, value)
_value_bytes = 0
value_stats = {"hits": 0, "misses": 0}


def tensor_key(k: Tensor) -> tuple[Hashable, StorageWeakRef] | None:
    """(key, weak storage ref) for a tensor that may be cached, or None."""
    if k.is_inference() or k.requires_grad and torch.is_grad_enabled() and k.grad_fn is not None:
        return None  # no version counter / a non-leaf being differentiated: changes every step
    try:
        version = k._version
    except RuntimeError:
        return None
    storage = k.untyped_storage()
    ref = StorageWeakRef(storage)
    key = (ref.cdata, k.storage_offset(), tuple(k.shape), tuple(k.stride()), k.dtype, k.device, version)
    return key, ref


def _evict_locked() -> None:
    global _bytes
    while _entries and (_bytes > MAX_BYTES or len(_entries) > MAX_ENTRIES):
        _, (_, value) = _entries.popitem(last=False)
        _bytes -= value.numel() * value.element_size()


def lookup(k: Tensor, variant: Hashable, compute: Callable[[], Tensor]) -> Tensor | None:
    """The cached prepared kernel for (k, variant), computing and storing it when k was
    seen before; None when the caller should compute it itself (fused per block)."""
    global _bytes
    tk = tensor_key(k)
    if tk is None:
        return None
    key, ref = tk
    key = (key, variant)
    with _lock:
        hit = _entries.get(key)
        if hit is not None:
            if not hit[0].expired():
                _entries.move_to_end(key)
                stats["hits"] += 1
                return hit[1]
            _bytes -= hit[1].numel() * hit[1].element_size()
            del _entries[key]
        stats["misses"] += 1
        old = _seen.get(key)
        if old is None or old.expired():
            _seen[key] = ref
            while len(_seen) > MAX_SEEN:
                _seen.popitem(last=False)
            return None
        del _seen[key]
    value = compute()  # outside the lock: it is the expensive part
    nbytes = value.numel() * value.element_size()
    if nbytes > MAX_BYTES:
        return value
    with _lock:
        _entries[key] = (ref, value)
        _bytes += nbytes
        stats["stores"] += 1
        _evict_locked()
    return value


def lookup_value(k: Tensor, variant: Hashable, compute: Callable[[], Tensor]) -> Tensor:
    """The prepared kernel for (k, variant): the stored one when k equals the kernel it was
    computed from (``torch.equal``), else computed now and stored in place of the last one
    with k's geometry."""
    global _value_bytes
    key = (tuple(k.shape), tuple(k.stride()), k.dtype, k.device, variant)
    with _lock:
        hit = _by_value.get(key)
    if hit is not None and torch.equal(hit[0], k):  # outside the lock: a pass over k
        with _lock:
            value_stats["hits"] += 1
            if key in _by_value:
                _by_value.move_to_end(key)
        return hit[1]
    value = compute()
    copy = k.clone()
    nbytes = sum(t.numel() * t.element_size() for t in (copy, value))
    with _lock:
        value_stats["misses"] += 1
        old = _by_value.pop(key, None)
        if old is not None:
            _value_bytes -= sum(t.numel() * t.element_size() for t in old)
        if nbytes <= MAX_BYTES:
            _by_value[key] = (copy, value)
            _value_bytes += nbytes
        while _by_value and (_value_bytes > MAX_BYTES or len(_by_value) > MAX_VALUE_ENTRIES):
            _, old = _by_value.popitem(last=False)
            _value_bytes -= sum(t.numel() * t.element_size() for t in old)
    return value


def clear() -> None:
    global _bytes, _value_bytes
    with _lock:
        _entries.clear()
        _seen.clear()
        _bytes = 0
        for name in stats:
            stats[name] = 0
        _by_value.clear()
        _value_bytes = 0
        for name in value_stats:
            value_stats[name] = 0


def size_bytes() -> int:
    return _bytes
