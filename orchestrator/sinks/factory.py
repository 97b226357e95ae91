"""Build sink objects from a profile's sink specs."""
from __future__ import annotations

from orchestrator.sinks import jsonl, keylog, rotate, stdout
from orchestrator.profile import models


def build(spec: models.Sink, profile: str = "", ports=None):
    """`ports`: for a packet capture, the only ports its profile's connections can have (None: any)."""
    if spec.type == "jsonl":
        return jsonl.JsonlSink(spec.option("path"), rotation=rotate.Policy.from_options(spec.option("rotate")))
    if spec.type == "keylog":
        return keylog.KeylogSink(spec.option("path"))
    if spec.type == "har":
        from orchestrator.sinks import har
        return har.HarSink(spec.option("path"))
    if spec.type == "web":
        from orchestrator.sinks import web      # websockets and its loop only when a profile asks for them
        return web.WebSink(spec.option("listen", web.DEFAULT_LISTEN), token_file=spec.option("token_file"),
                           show_secrets=spec.option("show_secrets", False))
    if spec.type == "nats":
        from orchestrator.sinks import nats     # nats-py and its loop only when a profile asks for them
        return nats.NatsSink(spec.option("url"), spec.option("subject"), spec.option("stream"),
                             buffer_records=spec.option("buffer_records", nats.BUFFER_RECORDS),
                             buffer_bytes=spec.option("buffer_bytes", nats.BUFFER_BYTES),
                             flush_timeout=spec.option("flush_timeout", nats.FLUSH_TIMEOUT_S),
                             token_file=spec.option("token_file"), user=spec.option("user"),
                             password_file=spec.option("password_file"))
    if spec.type == "pcapng":
        if spec.option("source", "packets") == "plaintext":
            from orchestrator.sinks import pcapng_sink
            return pcapng_sink.PlaintextPcapngSink(spec.option("path"))
        from orchestrator.sinks import packet_sink
        return packet_sink.PacketPcapngSink(spec.option("path"), spec.option("interfaces"), profile, ports=ports)
    if spec.type == "stdout":
        return stdout.StdoutSink(color=spec.option("color", "auto"), show_data=spec.option("show_data", True),
                                 max_body=spec.option("max_body", 2048), show_secrets=spec.option("show_secrets", False),
                                 format=spec.option("format", "text"))
    raise ValueError(f"unknown sink type {spec.type!r}")
