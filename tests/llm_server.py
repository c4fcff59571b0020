"""A small OpenAI-compatible chat server on loopback that streams its answers as real SSE.

``POST /v1/chat/completions`` with ``"stream": true`` answers with ``text/event-stream`` in
HTTP chunked encoding, as OpenAI does: ``data: {chat.completion.chunk}`` frames (a first one
with the role and empty content, one per token, one whose delta content is ``null``, one
with ``finish_reason`` and an empty delta, a last one with no choices and usage), then
``data: [DONE]``.

The model name chooses the behaviour:

- ``break-after-N``: after N tokens the connection is cut in the middle of a chunk (the
  client sees an incomplete chunked body, as when a network drops);
- anything else: the whole reply.

Every request body is kept in :attr:`LLMServer.requests`, with its ``Authorization`` header;
:attr:`LLMServer.messages` holds the chat messages of each request, oldest first.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fish_notebook.sources import llm_tokens

DEFAULT_REPLY = (
    "Hello from the test model. These words arrive one token at a time. "
    "The end comes after the third sentence."
)


class LLMServer:
    """Serve on ``127.0.0.1:0`` in a daemon thread; use as a context manager.

    Args:
        reply: what the model says (split into LLM-like tokens).
        token_delay: seconds between tokens, like a model writing.
    """

    def __init__(self, reply: str = DEFAULT_REPLY, *, token_delay: float = 0.01) -> None:
        self.reply = reply
        self.token_delay = token_delay
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
                pass

            def do_POST(self) -> None:
                owner._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="llm-test-server", daemon=True
        )

    @property
    def url(self) -> str:
        """The OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def messages(self) -> list[list[dict[str, Any]]]:
        """The ``messages`` each chat request sent (what the model was shown), oldest first."""
        with self._lock:
            return [
                list(request["body"].get("messages", []))
                for request in self.requests
                if request["path"].rstrip("/") == "/v1/chat/completions"
            ]

    def tokens(self) -> list[str]:
        return llm_tokens(self.reply)

    def __enter__(self) -> LLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)

    # --- one request ----------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        with self._lock:
            self.requests.append(
                {"path": handler.path, "body": body, "auth": handler.headers.get("Authorization")}
            )
        if handler.path.rstrip("/") != "/v1/chat/completions":
            handler.send_error(404, "only /v1/chat/completions here")
            return
        model = str(body.get("model", ""))
        match = re.fullmatch(r"break-after-(\d+)", model)
        break_after = int(match.group(1)) if match else None

        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        write = _ChunkWriter(handler)
        created = int(time.time())

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> None:
            choices = (
                []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            )
            frame = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            write.sse(json.dumps(frame))

        chunk({"role": "assistant", "content": ""})
        for index, token in enumerate(self.tokens()):
            if break_after is not None and index == break_after:
                write.cut()
                return
            if index == 2:
                chunk({"content": None})  # some servers send null content mid-stream
            chunk({"content": token})
            time.sleep(self.token_delay)
        chunk({}, "stop")
        chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14})
        write.sse("[DONE]")
        write.end()


class _ChunkWriter:
    """HTTP/1.1 chunked encoding by hand, so a test can cut a body in the middle."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.handler = handler

    def _chunk(self, data: bytes) -> None:
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.handler.wfile.flush()

    def sse(self, data: str) -> None:
        self._chunk(f"data: {data}\n\n".encode())

    def end(self) -> None:
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()

    def cut(self) -> None:
        """Announce a chunk, send half of it, and drop the connection."""
        self.handler.wfile.write(b'40\r\ndata: {"id": "chatcmpl-te')
        self.handler.wfile.flush()
        self.handler.close_connection = True
        try:
            self.handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
