"""Errors of the tokenize pool.

    TokenizePoolError               base; everything the pool raises to its callers
    ├── TokenizerLoadError          the tokenizer could not be found or loaded
    ├── TemplateError               the chat template refused the conversation
    ├── PoolTimeout                 a pool call took longer than its deadline
    └── PoolUnavailable             the pool host is down or its workers crashed

Foreign errors (transformers, jinja2, OSError from the hub) are translated into these inside the
worker process, so what crosses the process boundary is always one of ours and always
picklable (a single message argument).
"""

from __future__ import annotations

__all__ = ["PoolTimeout", "PoolUnavailable", "TemplateError", "TokenizePoolError", "TokenizerLoadError"]


class TokenizePoolError(Exception):
    """Base class of every error the tokenize pool reports."""


class TokenizerLoadError(TokenizePoolError):
    """The tokenizer could not be found or loaded."""


class TemplateError(TokenizePoolError):
    """The chat template could not render the conversation."""


class PoolTimeout(TokenizePoolError):
    """A pool call did not finish before its deadline."""


class PoolUnavailable(TokenizePoolError):
    """The pool host is not reachable or its worker processes died."""
