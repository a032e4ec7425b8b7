"""Shared fixtures: tiny random models (hidden 32, 2 layers, 16 px frames) that run in milliseconds."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import mmlc
from mmlc.config import apply_overrides
from mmlc.data.tokenizer import train_tokenizer
from mmlc.models.loading import build
from mmlc.models.presets import preset

CORPUS = ["the red circle moves left.", "a teal room with a blue star.", "what colour is the circle?", "red.",
          "how many objects are there?", "two.", "the scene changes to a navy room."] * 4


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS, 300, preset("tiny-test").template)


@pytest.fixture()
def tiny_with(tokenizer):
    """Build a fresh tiny random model (no memory bridge) with config overrides, e.g. image tags."""
    return lambda **overrides: build(apply_overrides(preset("tiny-test"), {"memory.tokens": 0, **overrides}),
                                     tokenizer, seed=0)


@pytest.fixture()
def tiny_model(tokenizer):
    """A fresh tiny random model (seeded) with a small trained tokenizer and no memory bridge: its
    sessions keep every frame (the streaming core); tests/test_memory_stream.py covers the bridge."""
    return build(apply_overrides(preset("tiny-test"), {"memory.tokens": 0}), tokenizer, seed=0)


@pytest.fixture()
def frames():
    """Eight random 20x24 RGB frames (not the model's size: exercises resizing)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(8)]


class ChatServer:
    """A real OpenAI-compatible ``POST /v1/chat/completions`` server on 127.0.0.1 (a thread).

    ``respond(server, headers, body)`` decides each answer: a string is sent as the assistant message
    of a 200 reply, a ``(status, payload)`` pair as is. Other paths get 404. ``requests`` keeps
    ``{"path", "auth", "body"}`` of every request; ``lock`` guards shared state in ``respond``.
    """

    def __init__(self, respond):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, payload):
                raw = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "no such route"}})
                out = respond(server, self.headers, body)
                if isinstance(out, tuple):
                    return self._send(*out)
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": out}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def chat_server(monkeypatch):
    """Start :class:`ChatServer` instances (``chat_server(respond)``), closed after the test."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)   # 127.0.0.1 is reached directly
    servers: list[ChatServer] = []

    def start(respond) -> ChatServer:
        servers.append(ChatServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


__all__ = ["mmlc", "ChatServer"]
