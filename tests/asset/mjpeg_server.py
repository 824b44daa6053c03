"""A live MJPEG-over-HTTP stream (multipart/x-mixed-replace, as IP cameras serve), for the `asset predict` stream test.

    python -m tests.asset.mjpeg_server PORT_FILE [FRAMES]

Binds 127.0.0.1 on a free port, writes the port to PORT_FILE once listening, then serves each client an endless
stream of JPEG frames (64x64; every other frame carries a bright square, the tiny test models' defect) until the
client disconnects or the process is ended. Standard library, Pillow and numpy only."""

from __future__ import annotations

import io
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

BOUNDARY = "frame"


def frame(i: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(i)
    img = rng.integers(60, 120, size=(size, size), dtype=np.uint8)
    if i % 2 == 0:
        img[8:24, 8:24] = 230
    buf = io.BytesIO()
    Image.fromarray(np.stack([img] * 3, axis=2)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        i = 0
        try:
            while True:
                data = frame(i)
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                                 .encode() + data + b"\r\n")
                self.wfile.flush()
                i += 1
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(str(server.server_address[1]))
    os.replace(tmp, sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
