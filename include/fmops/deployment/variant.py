"""One model variant behind the local endpoint: ``python -m fmops.deployment.variant ...``.

Serves the SageMaker container contract on 127.0.0.1: ``GET /ping`` (200 once the model is
loaded) and ``POST /invocations`` through the ``model_fn / input_fn / predict_fn / output_fn``
handlers of the ``inference.py`` that was registered with the model. Request hygiene: the body
size is bounded (413), malformed or wrong-schema JSON gets 400 with the reason, and no input can
crash the server (an unexpected error is a 500 with its message, and the server keeps serving).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("fmops.variant")
MAX_BODY_BYTES = 256 * 1024
REQUEST_TIMEOUT_SECONDS = 30


def load_handlers(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("fmops_variant_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class VariantServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, handlers: Any, model_dir: str, name: str):
        super().__init__(("127.0.0.1", port), VariantHandler)
        self.handlers = handlers
        self.name = name
        self.model: Any = None
        self.lock = threading.Lock()  # one prediction at a time: the CPU threads are shared
        threading.Thread(target=self._load, args=(model_dir,), daemon=True).start()

    def _load(self, model_dir: str) -> None:
        started = time.monotonic()
        self.model = self.handlers.model_fn(model_dir)
        log.info("variant %s loaded %s in %.1f s", self.name, model_dir, time.monotonic() - started)


class VariantHandler(BaseHTTPRequestHandler):
    server: VariantServer
    timeout = REQUEST_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug(format, *args)

    def _reply(self, status: int, body: dict[str, Any] | str) -> None:
        data = body if isinstance(body, str) else json.dumps(body)
        payload = data.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/ping":
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}; use /ping"})
        elif self.server.model is None:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "loading"})
        else:
            self._reply(HTTPStatus.OK, {"status": "healthy", "variant": self.server.name})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/invocations":
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"body of {length} bytes; at most {MAX_BODY_BYTES}"},
            )
            return
        if self.server.model is None:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "model is still loading"})
            return
        body = self.rfile.read(length)
        handlers = self.server.handlers
        try:
            texts = handlers.input_fn(body, self.headers.get("Content-Type", "application/json"))
            with self.server.lock:
                prediction = handlers.predict_fn(texts, self.server.model)
            self._reply(HTTPStatus.OK, handlers.output_fn(prediction, "application/json"))
        except handlers.BadRequestError as err:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except Exception as err:  # noqa: BLE001 - a model error must not take the server down
            log.exception("prediction failed")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"prediction failed: {err}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve one model variant on 127.0.0.1")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--handlers", required=True, help="the inference.py to serve with")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = VariantServer(args.port, load_handlers(Path(args.handlers)), args.model_dir, args.name)
    log.info("variant %s listening on 127.0.0.1:%s", args.name, args.port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
