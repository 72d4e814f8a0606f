"""A stand-in for the parts of the API that do not exist on the server yet (client tools,
API.md "Tools, steps and required actions"), answering as API.md says: a run that goes to
`requires_action` and resumes once its tool outputs are posted."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROJECT, AGENT, RUN = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
BASE = f"/api/v1/projects/{PROJECT}"


class ToolRunStub:
    def __init__(self, action_type: str = "submit_tool_outputs", tool: str = "lookup") -> None:
        self.calls = [{"id": "call_1", "name": tool, "arguments": {"q": "gamma"}}]
        self.action = {
            "type": action_type,
            "tool_calls": self.calls,
            "expires_at": "2030-01-01T00:00:00Z",
        }
        self.posted: list[dict[str, Any]] = []
        self.answered = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def run(self) -> dict[str, Any]:
        done = self.answered.is_set()
        output = "; ".join(o["output"] for o in self.posted[-1]["tool_outputs"]) if done else None
        return {
            "id": RUN,
            "project_id": PROJECT,
            "agent_id": AGENT,
            "status": "succeeded" if done else "requires_action",
            "input": "look it up",
            "output": f"echo: {output}" if done else None,
            "error": None,
            "required_action": None if done else self.action,
            "metadata": {},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Request-ID", "stub-request")
                self.end_headers()
                self.wfile.write(data)

            def _event(self, n: int, name: str, data: Any) -> None:
                self.wfile.write(f"id: 0-{n}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.startswith(f"{BASE}/agents/{AGENT}/runs"):
                    self._json(202, {**stub.run(), "status": "queued", "required_action": None})
                elif self.path == f"{BASE}/runs/{RUN}/approvals":
                    stub.posted.append(body)
                    self._json(200, {**stub.run(), "status": "queued"})
                elif self.path == f"{BASE}/runs/{RUN}/tool-outputs":
                    stub.posted.append(body)
                    stub.answered.set()
                    self._json(200, {**stub.run(), "status": "queued"})
                else:
                    self._json(404, {"error": {"code": "not_found", "message": self.path}})

            def do_GET(self) -> None:  # noqa: N802
                if self.path == f"{BASE}/runs/{RUN}":
                    self._json(200, stub.run())
                elif self.path == f"{BASE}/runs/{RUN}/events":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    self._event(1, "status", {"status": "queued"})
                    self._event(2, "requires_action", stub.action)
                    if not stub.answered.wait(20):
                        return
                    self._event(3, "status", {"status": "running"})
                    self._event(4, "end", stub.run())
                else:
                    self._json(404, {"error": {"code": "not_found", "message": self.path}})

        return Handler
