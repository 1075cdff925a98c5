"""One model variant behind the local endpoint: ``python -m fmops.deployment.variant ...``.

Serves the SageMaker container contract on 127.0.0.1: ``GET /ping`` (200 once the model is
loaded and has answered one warm-up prediction, 503 before) and ``POST /invocations`` through the
``model_fn / input_fn / predict_fn / output_fn`` handlers of the ``inference.py`` that was
registered with the model (``--handlers``: a file path, loaded as a module). A model that fails
to load ends the process with the error in its log, so a deployment waiting for ``/ping`` learns
at once that it never will.

Two optional hooks let a handlers module serve another kind of model (the generation handlers,
``serve_generation.py``, have both): ``warm_up(model)`` runs the warm-up prediction instead of
``predict_fn([WARM_UP_TEXT], model)``, whose input suits the classifier only, and
``headers_fn(prediction) -> dict[str, str]`` adds response headers to a 200 answer (TGI's
``x-generated-tokens``, which the router's per-token latency reads).

Request hygiene: the body size is bounded (413; 411 without a ``Content-Length``), malformed or
wrong-schema JSON and batches or texts over the handlers' limits get 400 with the handlers'
message (``BadRequestError``), and no input can crash the server: an unexpected error is a 500
with its message, and the server keeps serving. Predictions run one at a time (the CPU threads
are shared); connections are kept alive.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fmops.deployment.router import MAX_BODY_BYTES, body_refusal

log = logging.getLogger("fmops.variant")
REQUEST_TIMEOUT_SECONDS = 30
WARM_UP_TEXT = "warm-up request"


def load_handlers(path: Path) -> Any:
    """The handlers module at ``path`` (an ``inference.py``; a test may give a wrapper of it)."""
    spec = importlib.util.spec_from_file_location("fmops_variant_inference", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module with the inference handlers")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: dataclasses (and pickling) look the module
    # up by name while its classes are being defined.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class VariantServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, handlers: Any, model_dir: str, name: str):
        super().__init__(("127.0.0.1", port), VariantHandler)
        self.handlers = handlers
        self.bad_request = getattr(handlers, "BadRequestError", ValueError)
        self.name = name
        self.model: Any = None
        self.runtime = ""
        self.lock = threading.Lock()  # one prediction at a time: the CPU threads are shared
        threading.Thread(target=self._load, args=(model_dir,), daemon=True).start()

    def _load(self, model_dir: str) -> None:
        started = time.monotonic()
        try:
            model = self.handlers.model_fn(model_dir)
        except Exception:  # noqa: BLE001 - any load failure ends the variant, with its traceback
            log.exception("variant %s cannot load %s; exiting", self.name, model_dir)
            logging.shutdown()
            os._exit(3)
        try:  # the first prediction is slow (lazy initialisation): not a user's request
            warm_up = getattr(self.handlers, "warm_up", None)
            if warm_up is not None:
                warm_up(model)
            else:
                self.handlers.predict_fn([WARM_UP_TEXT], model)
        except Exception:  # noqa: BLE001 - a model that fails to predict is the alarms' business
            log.exception("variant %s: the warm-up prediction failed", self.name)
        # What serves the requests, as the handlers' model says: "onnxruntime" (a classifier's
        # graph) or "pytorch-int8" (a causal LM's int8 weights) for a folder with serving.json,
        # else eager "pytorch"; /ping says it.
        self.runtime = model.get("runtime", "pytorch") if isinstance(model, dict) else "pytorch"
        self.model = model
        log.info(
            "variant %s loaded %s (%s) in %.1f s",
            self.name,
            model_dir,
            self.runtime,
            time.monotonic() - started,
        )


class VariantHandler(BaseHTTPRequestHandler):
    server: VariantServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall
    timeout = REQUEST_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug(format, *args)

    def _reply(
        self,
        status: int,
        body: dict[str, Any] | str,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body if isinstance(body, str) else json.dumps(body)
        payload = data.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:  # the body was not read: the connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/ping":
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}; use /ping"})
        elif self.server.model is None:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "loading"})
        else:
            server = self.server
            body = {"status": "healthy", "variant": server.name, "runtime": server.runtime}
            self._reply(HTTPStatus.OK, body)

    def _body(self) -> bytes | None:
        refused = body_refusal(self.headers, MAX_BODY_BYTES)
        if refused:
            self._reply(refused[0], {"error": refused[1]}, close=True)
            return None
        return self.rfile.read(int(self.headers["Content-Length"]))

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/invocations":
            self._reply(
                HTTPStatus.NOT_FOUND,
                {"error": f"no route POST {self.path}; use /invocations"},
                close=True,
            )
            return
        body = self._body()
        if body is None:
            return
        if self.server.model is None:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the model is still loading"})
            return
        handlers = self.server.handlers
        try:
            texts = handlers.input_fn(body, self.headers.get("Content-Type", "application/json"))
            with self.server.lock:
                prediction = handlers.predict_fn(texts, self.server.model)
            headers_fn = getattr(handlers, "headers_fn", None)
            self._reply(
                HTTPStatus.OK,
                handlers.output_fn(prediction, "application/json"),
                headers=headers_fn(prediction) if headers_fn is not None else None,
            )
        except self.server.bad_request as err:
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
