"""The CPU side of the rollout server: warm tokenizer processes, chat rendering, mask building.

It knows nothing about HTTP. ``start_pool_host`` starts one host process that owns a
``ProcessPoolExecutor``; any number of ``PoolClient`` (one per Sanic worker) talk to it over a
Unix socket. Importing this package does not import transformers: only worker processes do.
"""

from tokenize_pool.client import ExtendResult, FirstResult, PoolClient
from tokenize_pool.codec import TokenizerKey
from tokenize_pool.errors import (
    PoolTimeout,
    PoolUnavailable,
    TemplateError,
    TokenizePoolError,
    TokenizerLoadError,
)
from tokenize_pool.host import PoolConfig, start_pool_host

__all__ = [
    "ExtendResult",
    "FirstResult",
    "PoolClient",
    "PoolConfig",
    "PoolTimeout",
    "PoolUnavailable",
    "TemplateError",
    "TokenizePoolError",
    "TokenizerKey",
    "TokenizerLoadError",
    "start_pool_host",
]
