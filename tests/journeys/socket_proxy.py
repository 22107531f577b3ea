"""A byte-for-byte Unix-socket proxy in front of the Docker engine, for losing Docker mid-run.

``python socket_proxy.py LISTEN_PATH UPSTREAM_PATH`` accepts connections on LISTEN_PATH and
relays each to UPSTREAM_PATH (the engine's socket) in both directions, streams included.
The journey test runs it in a testcontainers container (the script, the listen directory and
the engine's socket bind-mounted), points ``DOCKER_HOST`` of ``llem`` at LISTEN_PATH, then
removes the container: every connection ``llem`` holds (the container's wait and log streams)
breaks at once and the socket stops answering, exactly as when the daemon restarts or its
socket goes away. The shared engine itself is never touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, upstream_path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(upstream_path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main(listen_path: str, upstream_path: str) -> None:
    """Relay LISTEN_PATH to UPSTREAM_PATH until killed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen_path)
    server.listen(64)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, upstream_path), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
