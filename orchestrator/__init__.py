"""ecapture: a declarative, YAML-driven eBPF capture orchestrator."""
