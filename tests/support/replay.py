"""Replay a corpus of synthetic ring-buffer records through decode → workers → parsers → JSONL,
in this process's build of the hot path (compiled or Python: see orchestrator/fastpath.py).

    python -m tests.support.replay CORPUS.pickle OUT.jsonl

The corpus is a pickled list of raw records (tests/unit/test_fastpath.py makes it). Prints the
mode that ran. The clock offset is pinned so that two processes write the same bytes.
"""
from __future__ import annotations

import pickle
import sys

from orchestrator import fastpath
from orchestrator.bpf import hooks, render
from orchestrator.pipeline import dispatch, events
from orchestrator.plan import model
from orchestrator.profile import models
from orchestrator.sinks import jsonl

MONO_TO_EPOCH_NS = 1_700_000_000_000_000_000


def probe_set(name: str, kind: str = "openssl", ports=()):
    t = models.Target(name, kind, binary="/usr/sbin/nginx", filters=models.Filters(ports=ports))
    return model.ProbeSet("prof", t, "/lib/libssl.so.3", hooks.BUILTIN["openssl"][:5], (), None,
                          render.Rendered("", "d"), parsers=None)


def main(corpus: str, out: str) -> None:
    events.MONO_TO_EPOCH_NS = MONO_TO_EPOCH_NS
    raws = pickle.loads(open(corpus, "rb").read())
    sources = {"web": probe_set("web"), "ported": probe_set("ported", ports=(443,))}
    sink = jsonl.JsonlSink(out)
    d = dispatch.Dispatcher(lambda _p: [sink])
    for i in range(0, len(raws), 64):
        d.process([events.decode(raw, sources[src]) for src, raw in raws[i:i + 64]])
    d.flush_all()
    sink.close()
    print(fastpath.mode)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
