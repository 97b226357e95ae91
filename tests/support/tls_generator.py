"""A process that makes a known number of TLS writes (SSL_write_ex through Python's ssl over a
memory-BIO pair, no sockets): the steady load for hot-reload tests and bench/reload.

    python3 tls_generator.py --comm gen-a --count 5000 --interval 0.001 --cert C --key K [--go FILE]

Each write is `w<comm>:<i:08d>\\n`. It prints `ready <pid>` once set up, waits for --go (if
given) to exist, writes, prints `done <count>` and exits. --count 0 writes until killed or
until the --stop file exists.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import ssl
import sys
import time


def set_comm(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)   # PR_SET_NAME


def pair(cert: str, key: str):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    while not all(done):
        for i, obj in enumerate((client, server)):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return client, server, c_out, s_in


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comm", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=0.001)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--go")
    ap.add_argument("--stop", help="finish (and print the count) once this file exists")
    args = ap.parse_args()
    set_comm(args.comm)
    client, server, c_out, s_in = pair(args.cert, args.key)
    print(f"ready {os.getpid()}", flush=True)
    while args.go and not os.path.exists(args.go):
        time.sleep(0.01)
    i = 0
    while args.count == 0 or i < args.count:
        msg = f"w{args.comm}:{i:08d}\n".encode()
        client.write(msg)
        s_in.write(c_out.read())
        assert server.read(len(msg)) == msg
        i += 1
        if args.stop and i % 50 == 0 and os.path.exists(args.stop):
            break
        if args.interval:
            time.sleep(args.interval)
    print(f"done {i}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
