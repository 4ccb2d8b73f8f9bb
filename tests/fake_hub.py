"""A fake Hugging Face Hub on 127.0.0.1 for download tests: the ``resolve`` URLs with the Hub's metadata headers
(``X-Linked-Etag`` = sha256 for LFS files, ``ETag`` = git blob id for small files, ``X-Linked-Size``), ``Range``
requests, and the failures a real connection has: a truncated body, garbage, bytes that differ, a stall, a slow
line. Every request is recorded (method, path, ``Range`` header)."""
from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

#: How a file is served (set ``HubFile.mode``; may be changed while the server runs).
MODES = ("good", "truncate-once", "garbage", "other-bytes", "stall", "slow", "missing")


@dataclass
class HubFile:
    content: bytes
    mode: str = "good"
    lfs: bool = True
    stall_after: int = 4096  # "stall": the offset in the file where every response goes silent
    slow_chunk: int = 16384  # "slow": bytes per tick
    slow_tick_s: float = 0.02
    served: int = field(default=0)  # GET responses started

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_sha1(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.content) + self.content).hexdigest()


class FakeHub:
    """``with FakeHub() as hub: hub.add("repo/name", "file.safetensors", b"...")``; ``hub.url`` is the endpoint."""

    def __init__(self) -> None:
        self.files: dict[str, HubFile] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.stop = threading.Event()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                hub.requests.append(("HEAD", self.path, self.headers.get("Range")))
                f = hub.files.get(self.path.split("?")[0])
                if f is None or f.mode == "missing":
                    return self._not_found()
                self.send_response(200)
                self._metadata(f)
                self.send_header("Content-Length", str(len(f.content)))
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                hub.requests.append(("GET", self.path, rng))
                f = hub.files.get(self.path.split("?")[0])
                if f is None or f.mode == "missing":
                    return self._not_found()
                f.served += 1
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = f.content
                if f.mode == "garbage":
                    body, start = os.urandom(4096), 0
                elif f.mode == "other-bytes":
                    body = bytes(b ^ 0xFF for b in f.content)
                if start >= len(body) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                part = body[start:]
                self.send_response(206 if start else 200)
                self._metadata(f)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                try:
                    self._body(f, part)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _body(self, f: HubFile, part: bytes) -> None:
                if f.mode == "truncate-once" and f.served == 1:
                    self.wfile.write(part[: len(part) // 2])
                    self.close_connection = True
                elif f.mode == "stall":  # silent from byte ``stall_after`` of the file on, in every response
                    self.wfile.write(part[: max(0, f.stall_after - (len(f.content) - len(part)))])
                    self.wfile.flush()
                    hub.stop.wait(60)
                    self.close_connection = True
                elif f.mode == "slow":
                    for i in range(0, len(part), f.slow_chunk):
                        if hub.stop.is_set():
                            break
                        self.wfile.write(part[i:i + f.slow_chunk])
                        self.wfile.flush()
                        time.sleep(f.slow_tick_s)
                else:
                    self.wfile.write(part)

            def _metadata(self, f: HubFile) -> None:
                self.send_header("X-Repo-Commit", "0" * 40)
                if f.lfs:
                    self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                    self.send_header("X-Linked-Size", str(len(f.content)))
                    self.send_header("ETag", '"0123456789abcdef0123456789abcdef01234567"')
                else:
                    self.send_header("ETag", f'"{f.git_sha1}"')
                self.send_header("Accept-Ranges", "bytes")

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo_id: str, filename: str, content: bytes, revision: str = "main", **options: object) -> HubFile:
        f = HubFile(content, **options)  # type: ignore[arg-type]
        self.files[f"/{repo_id}/resolve/{revision}/{filename}"] = f
        return f

    def gets(self, filename: str) -> list[str | None]:
        """The ``Range`` headers of the GET requests for ``filename`` (None: the whole file)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith("/" + filename)]

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def serve() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        yield hub
