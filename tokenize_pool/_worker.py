"""Code that runs inside the pool's worker processes.

Each worker keeps its own warm LRU of codecs. Requests (``PoolOp``s) arrive as raw pickled bytes
and answers leave as raw pickled bytes, so the pool host in between never (un)pickles a payload:
it only moves bytes. Token ids travel as ``array('i')``, which pickles as four bytes a token.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from typing import TYPE_CHECKING, Any

from tokenize_pool.codec import CodecCache
from tokenize_pool.errors import TokenizePoolError
from tokenize_pool.heap import freeze_live_objects
from tokenize_pool.ops import PoolOp
from tokenize_pool.wire import KIND_TASK, frame, read_frame_from
from tokenize_pool.workers import setup_logging

if TYPE_CHECKING:
    from tokenize_pool.workers import PoolConfig

logger = logging.getLogger(__name__)

_cache: CodecCache | None = None


def init(config: PoolConfig, reports: Any) -> None:
    """ProcessPoolExecutor initializer: build the cache, warm the preloaded tokenizers, and tell
    the host (through the ``reports`` queue) that this worker is warm."""
    global _cache
    setup_logging(config, "pool")
    # Only tokenizers are used here, so transformers' advice that PyTorch is missing is noise;
    # its other messages go through this process's handlers, in the server's format.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # Each worker is one core's share of the pool: no Rust thread pool of its own beside it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    _cache = CodecCache(config.cache_size, trust_remote_code=config.trust_remote_code)
    for key in config.preload:
        try:
            _cache.get(key)
        except TokenizePoolError as exc:
            logger.error("preloading %s failed: %s", key, exc)
    # What start-up loaded goes out of the full collections' way once; so does each tokenizer
    # loaded later.
    freeze_live_objects()
    _cache.after_load = freeze_live_objects
    reports.put(_state())


def _state() -> dict[str, Any]:
    assert _cache is not None
    return {"pid": os.getpid(), "tokenizers": _cache.keys(), "hits": _cache.hits, "misses": _cache.misses}


def handle(payload: bytes) -> tuple[bytes, dict[str, Any]]:
    """Run one pickled ``PoolOp``; answer pickled ``(ok, result)`` and this worker's state (pid,
    warm tokenizers) for the host's health report.

    Our own errors go back as errors; anything else is a bug, logged here in full and answered
    with its type only, so that no traceback leaves the pool.
    """
    try:
        request = pickle.loads(payload)
        if not isinstance(request, PoolOp):
            raise TypeError(f"not a pool request: {type(request).__name__}")
        assert _cache is not None
        result: Any = request.run_in(_cache)
        return pickle.dumps((True, result), protocol=pickle.HIGHEST_PROTOCOL), _state()
    except TokenizePoolError as exc:
        return pickle.dumps((False, exc), protocol=pickle.HIGHEST_PROTOCOL), _state()
    except Exception as exc:
        logger.exception("pool task failed")
        error = TokenizePoolError(f"internal error in tokenize pool ({type(exc).__name__})")
        return pickle.dumps((False, error), protocol=pickle.HIGHEST_PROTOCOL), _state()


def serve(path: str) -> None:
    """A long task, one per worker process: answer requests on this worker's own connection to
    the pool until the pool closes it. Each answer carries the worker's state, as ``handle``'s,
    and the seconds it took."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        with sock.makefile("rb") as stream:
            while (request := read_frame_from(stream)) is not None:
                request_id, _, payload = request
                started = time.thread_time()
                answer, state = handle(payload)
                # The CPU seconds it took go with the answer: the pool sizes its pipeline by them.
                # (Not wall time, which on a shared core counts other processes' time slices.)
                answer = pickle.dumps(
                    (answer, state, time.thread_time() - started), protocol=pickle.HIGHEST_PROTOCOL
                )
                sock.sendall(frame(request_id, KIND_TASK, answer))
