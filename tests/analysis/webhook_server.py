"""A webhook endpoint for the notify tests, run in a test container on the host's network.

``python webhook_server.py MODE PORT`` listens on 127.0.0.1:PORT and prints ``ready``, then one
JSON line per POST as it arrives (``headers``, base64 ``body``, ``t``: the monotonic clock, which
the container shares with the host's kernel). MODE ``ok`` answers 200, ``fail`` 500, ``hang``
accepts the request and never answers (until the container is removed).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def main(mode: str, port: int) -> None:
    """Serve MODE on 127.0.0.1:PORT until the container is removed."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            t = time.monotonic()
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            line = {"headers": dict(self.headers), "body": base64.b64encode(body).decode(), "t": t}
            print(json.dumps(line), flush=True)
            if mode == "hang":
                time.sleep(3600)
                return
            self.send_response(200 if mode == "ok" else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
