"""A Range-capable HTTP server on 127.0.0.1 for the teacher-fetching tests (nothing else is ever contacted).

``server.files`` maps a URL path to its bytes; ``server.cut`` maps a URL path to a byte count: the next plain
(non-Range) request for it announces the full length, sends only that many bytes and drops the connection, once.
``server.requests`` records ``(path, Range header)`` of every request.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (URL path -> bytes), honouring ``Range: bytes=START-[END]``."""

    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.requests.append((self.path, self.headers.get("Range")))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        wanted = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
        if match is None:
            cut = self.server.cut.pop(self.path, None)
            self._send(200, data, {}, cut)
            return
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        self._send(206, data[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"})

    def _send(self, code: int, body: bytes, headers: dict[str, str], cut: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the request log
        pass


class FileServer(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    cut: dict[str, int]
    requests: list[tuple[str, str | None]]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@contextmanager
def serving(files: dict[str, bytes]) -> Iterator[FileServer]:
    """Serve ``files`` on 127.0.0.1 (a free port) for the duration of the block."""
    httpd = FileServer(("127.0.0.1", 0), RangeHandler)
    httpd.files = files
    httpd.cut = {}
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
