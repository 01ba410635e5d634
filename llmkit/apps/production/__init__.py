"""Production guards: `guarded(llm, ...)` wraps any `LLM` with timeouts, retries (backoff, jitter,
``Retry-After``), a fallback chain, circuit breakers, exact and semantic caches, token and cost
budgets, guards (fail closed) and a call log in llmkit serve's request-log schema, and is itself
an `LLM`. `FaultServer` is the fault-injecting OpenAI-compatible server its tests run against.

    from llmkit.apps.production import guarded
    llm = guarded(llmkit.load("http://127.0.0.1:8000/v1"), retries=3, fallbacks=[llmkit.load("runs/qs")],
                  cache="exact", budget={"session_tokens": 100_000}, log="calls.jsonl")
"""

from .breaker import CircuitBreaker, classify
from .budget import Budget, Reservation
from .cache import (DEFAULT_THRESHOLD, CacheEntry, CacheStats, ExactCache, SemanticCache, same_order, same_specifics,
                    specifics)
from .cache_pairs import CachePair, cache_report, choose_threshold, load_cache_pairs, wilson_upper
from .calllog import CallLog, CallRecord, JsonlCallLog, SQLiteCallLog, open_call_log
from .errors import AllAttemptsFailed, BudgetExceeded, GuardFailed, GuardRefused, StreamInterrupted
from .faults import Fault, FaultServer
from .guarded import Guarded, guarded
from .guards import Decision, Guard  # safety's: the one Decision, the one Guard protocol

__all__ = ["AllAttemptsFailed", "Budget", "BudgetExceeded", "CacheEntry", "CachePair", "CacheStats", "CallLog",
           "CallRecord", "CircuitBreaker", "DEFAULT_THRESHOLD", "Decision", "ExactCache", "Fault", "FaultServer",
           "Guard", "GuardFailed", "GuardRefused", "Guarded", "JsonlCallLog", "Reservation", "SQLiteCallLog",
           "SemanticCache", "StreamInterrupted", "cache_report", "choose_threshold", "classify", "guarded",
           "load_cache_pairs", "open_call_log", "same_order", "same_specifics", "specifics", "wilson_upper"]
