"""A local HTTP server on 127.0.0.1 for download tests: Range requests, and the ways real servers fail."""

import contextlib
import dataclasses
import http.server
import re
import threading

@dataclasses.dataclass
class ServerState:
    """What the test server serves and how it misbehaves; `requests` records (path, Range header)."""

    files: dict
    ignore_range: bool = False
    refuse_range: bool = False  # answer every Range request with 416
    cut_first: int = 0  # this many first requests send only `cut_after` bytes of their body, then hang up
    cut_after: int = 3_000
    requests: list = dataclasses.field(default_factory=list)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `state.files` with `Range: bytes=N-` support (206 + Content-Range), or the misbehaviour asked for."""

    def do_GET(self):
        state = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        body = state.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not state.ignore_range:
            start = int(match[1])
            if start >= len(body) or state.refuse_range:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if len(state.requests) <= state.cut_first:
            payload = payload[:state.cut_after]  # the promised Content-Length is not met: an interrupted transfer
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(files):
    """A server in a background thread; yields its ServerState, with `.url(name)` added."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.daemon_threads = True
    httpd.state = ServerState(files=files)
    httpd.state.url = lambda name: f"http://127.0.0.1:{httpd.server_port}/{name}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
