"""The CPU side of the rollout server: warm tokenizer processes, chat rendering, mask building.

It knows nothing about HTTP. A ``WorkerPool`` owns a ``ProcessPoolExecutor`` whose processes
keep tokenizers warm. With one Sanic worker it lives in that worker; with several,
``start_pool_host`` starts one host process that owns it, and each Sanic worker reaches it
through a ``HostedPool``. Either way the Sanic side calls a ``PoolClient`` with typed requests
(``PoolOp``). Importing this package does not import transformers: only worker processes do.
"""

from tokenize_pool.client import FirstResult, HostedPool, Pending, PoolClient, TokenizePool
from tokenize_pool.codec import TokenizerKey, ids_text
from tokenize_pool.errors import (
    PoolTimeout,
    PoolUnavailable,
    TemplateError,
    TokenizePoolError,
    TokenizerLoadError,
)
from tokenize_pool.host import start_pool_host
from tokenize_pool.masks import Growth, growth_steps
from tokenize_pool.ops import PoolOp, TurnExplanation
from tokenize_pool.tokens import GrowTurn, ParsedTurn, ParseTurn, TokenGrowth
from tokenize_pool.tool_cap import CutTexts, CutTools, fits_unseen
from tokenize_pool.workers import PoolConfig, WorkerPool

__all__ = [
    "CutTexts",
    "CutTools",
    "FirstResult",
    "fits_unseen",
    "ids_text",
    "Growth",
    "GrowTurn",
    "growth_steps",
    "HostedPool",
    "ParsedTurn",
    "ParseTurn",
    "Pending",
    "PoolClient",
    "PoolConfig",
    "PoolOp",
    "PoolTimeout",
    "PoolUnavailable",
    "TemplateError",
    "TokenizePool",
    "TokenizePoolError",
    "TokenizerKey",
    "TokenGrowth",
    "TokenizerLoadError",
    "TurnExplanation",
    "WorkerPool",
    "start_pool_host",
]
