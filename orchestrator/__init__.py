"""ecapture: a declarative, YAML-driven eBPF capture orchestrator."""
from orchestrator import fastpath as _fastpath

_fastpath.install()
