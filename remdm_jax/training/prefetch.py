"""Batches placed on the devices ahead of use: a small background-thread prefetcher.

`DevicePrefetcher(source, put, size)` pulls `(local numpy batch, data_state)` pairs from `source`,
calls `put(batch)` (e.g. `Trainer.put_batch`: host -> sharded global device array) in a background
thread and keeps up to `size` of them ready. Iterating yields `(device_batch, data_state)` in the
source order, so the data state saved with a checkpoint is the state *after the batch that was
actually consumed* (never the prefetcher's read-ahead position). An exception raised by `source`
or `put` is re-raised by `__next__` in the consumer thread; `close()` stops the thread. size 0
means no thread (put is called synchronously). Nothing here changes any number: the batches and
their order are exactly those of `source`.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_END = object()


class DevicePrefetcher:
  """Iterator of (put(batch), data_state) with `size` items prepared ahead in a thread.

  Args:
    source: iterator of (numpy batch, data_state) pairs.
    put: batch -> device array (thread-safe: `jax.device_put` / `make_array_from_process_local_data`).
    size: number of batches prepared ahead (0: synchronous, no thread).
  """

  def __init__(self, source: Iterator[tuple[Any, Any]], put: Callable[[Any], Any], size: int = 2):
    if size < 0:
      raise ValueError(f"train.prefetch={size} must be >= 0")
    self._source, self._put, self._size = source, put, size
    self._stop = threading.Event()
    self._thread = None
    self._done = False
    if size > 0:
      self._queue: queue.Queue = queue.Queue(maxsize=size)
      self._thread = threading.Thread(target=self._work, name="remdm-prefetch", daemon=True)
      self._thread.start()

  def _offer(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self):
    try:
      for batch, state in self._source:
        if self._stop.is_set() or not self._offer((self._put(batch), state)):
          return
      self._offer(_END)
    except BaseException as e:  # handed to the consumer
      self._offer(e)

  def __iter__(self):
    return self

  def __next__(self):
    if self._done:
      raise StopIteration
    if self._thread is None:
      try:
        batch, state = next(self._source)
      except StopIteration:
        self._done = True
        raise
      return self._put(batch), state
    item = self._queue.get()
    if item is _END:
      self._done = True
      raise StopIteration
    if isinstance(item, BaseException):
      self._done = True
      raise item
    return item

  def close(self) -> None:
    """Stops the background thread (pending batches are dropped)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
      self._thread = None
    self._done = True

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def with_states(it) -> Iterator[tuple[Any, Any]]:
  """(next(it), it.get_state()) pairs of a stateful data iterator (`data.make_dataset`)."""
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    yield batch, it.get_state()
