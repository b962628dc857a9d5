"""The sandbox: where untrusted code runs (traced programs, generated solutions, agent commands).

    from cwm.sandbox import Limits, run_function, run_command
    res = run_function(fn, *args, limits=Limits(timeout=5))

The layer below everything that runs code it did not write: it imports nothing from the rest of
cwm. How a run is built, and what it guarantees: `cwm.sandbox.core` and docs/sandbox.md.
"""

from cwm.sandbox.core import (
    STATUSES,
    Limits,
    SandboxResult,
    allow_result_type,
    clean_environment,
    run_command,
    run_each,
    run_function,
)  # fmt: skip

__all__ = [
    "STATUSES", "Limits", "SandboxResult", "allow_result_type", "clean_environment", "run_command", "run_each",
    "run_function",
]  # fmt: skip
