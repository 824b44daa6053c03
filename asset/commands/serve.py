"""`asset serve`: the HTTP inference server (FastAPI under uvicorn). No torch unless --backend pytorch."""

from __future__ import annotations

import argparse
import ipaddress
import logging

log = logging.getLogger("asset.serve")


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over HTTP (POST /predict, a page at /)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a model directory over HTTP. Every option can also come from an environment variable "
        "(what a container sets); options win over the environment.",
        epilog="Routes: POST /predict, POST /predict/batch, GET /healthz, GET /readyz, GET /model, GET /metrics, "
        "GET / (a page to try images), GET /docs (OpenAPI).\n\nEnvironment: ASSET_MODEL, ASSET_BACKEND, "
        "ASSET_PRECISION, ASSET_DEVICE, ASSET_THREADS, ASSET_API_KEY, ASSET_MAX_BATCH, ASSET_MAX_WAIT_MS, "
        "ASSET_QUEUE_SIZE, ASSET_MAX_BODY_MB, ASSET_MAX_PIXELS, ASSET_MAX_BATCH_IMAGES, ASSET_MAX_BATCH_PIXELS, "
        "ASSET_MAX_INFLIGHT_PIXELS, ASSET_MAX_INPUT_FACTOR, ASSET_HOST, ASSET_PORT, ASSET_API_KEY_FILE, "
        "ASSET_ALLOW_NO_API_KEY, ASSET_PUBLISHED_HOST, ASSET_LIMIT_CONCURRENCY.\n\n"
        "Cost of one image: the network never sees more than MAX_INPUT_FACTOR x the training input size (model.json "
        "input.train_size) of one image; larger images run as tiles of the training size, shrunk first if more than "
        "MAX_INPUT_FACTOR tiles would be needed. The mask is always returned at the upload's size.\n\n"
        "Without an API key on an address beyond loopback, any web page a browser on the network opens can POST "
        "images to the server (a multipart POST needs no CORS preflight): set --api-key there.\n\n"
        "Example:\n  asset serve --model models/demo --backend onnxruntime --host 127.0.0.1 --port 8000\n"
        "  curl -F image=@part.png http://127.0.0.1:8000/predict",
    )
    p.add_argument("--model", metavar="MODEL_DIR", help="model directory (env ASSET_MODEL)")
    p.add_argument("--backend", help="onnxruntime (default), openvino, tensorrt or pytorch (env ASSET_BACKEND)")
    p.add_argument("--precision", help="fp32 (default), int8 (onnxruntime/openvino), fp16 (tensorrt/pytorch cuda)")
    p.add_argument("--device", help="cpu (default) or cuda[:N]")
    p.add_argument("--threads", type=int, help="backend intra-op threads (default: usable cores)")
    p.add_argument("--api-key", help="require this X-API-Key on every route but the health probes (env ASSET_API_KEY; "
                   "a command line is visible to every user of the machine: prefer --api-key-file)")
    p.add_argument("--api-key-file", help="read the API key from this file (env ASSET_API_KEY_FILE; e.g. a Docker "
                   "secret)")
    p.add_argument("--allow-no-api-key", action="store_true", default=None,
                   help="serve beyond loopback without an API key: anyone who reaches the port can use the model "
                        "(env ASSET_ALLOW_NO_API_KEY=1)")
    p.add_argument("--limit-concurrency", type=int,
                   help="connections at most; beyond them new requests get 503 at once (default 64; env "
                        "ASSET_LIMIT_CONCURRENCY)")
    p.add_argument("--max-batch", type=int, help="largest dynamic batch (default 4 on CPU, 8 on a GPU)")
    p.add_argument("--max-wait-ms", type=float, help="longest wait for a batch to fill (default 5 ms)")
    p.add_argument("--queue-size", type=int, help="requests waiting at most before 503 + Retry-After (default 64)")
    p.add_argument("--max-body-mb", type=float, help="largest request body (default 20 MB)")
    p.add_argument("--max-pixels", type=int, help="largest image pixel count (default 40,000,000)")
    p.add_argument("--max-batch-images", type=int, help="most images in one POST /predict/batch (default 32)")
    p.add_argument("--max-batch-pixels", type=int,
                   help="most pixels of all images of one request together, else 413 (default 40,000,000)")
    p.add_argument("--max-inflight-pixels", type=int,
                   help="most decoded pixels held by all requests at once, else 503 + Retry-After (default 80,000,000)")
    p.add_argument("--max-input-factor", type=float,
                   help="network pixels per image at most this x the training input size; larger images are tiled "
                        "(default 16)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; env ASSET_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000; env ASSET_PORT)")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The start-up warning for a server without an API key that other machines can reach, else None."""
    if api_key or is_loopback(host):
        return None
    return (f"NO API KEY and listening on {host}, beyond loopback: anyone who can reach this address can use the "
            "model, and any web page opened in a browser on the network can POST images to it (a multipart POST "
            "needs no CORS preflight). Set --api-key / ASSET_API_KEY, or listen on 127.0.0.1 behind a proxy")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    import uvicorn

    from asset.serve import Settings, create_app
    from asset.serve.settings import SettingsError

    try:
        settings = Settings.from_env(
            model=args.model, backend=args.backend, precision=args.precision, device=args.device,
            threads=args.threads, api_key=args.api_key, api_key_file=args.api_key_file,
            allow_no_api_key=args.allow_no_api_key, limit_concurrency=args.limit_concurrency,
            max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
            queue_size=args.queue_size, max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
            max_batch_images=args.max_batch_images, max_batch_pixels=args.max_batch_pixels,
            max_inflight_pixels=args.max_inflight_pixels, max_input_factor=args.max_input_factor)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from asset import modeldir
    from asset.tiling import train_size

    card = modeldir.verify(settings.model)  # a missing or corrupt model directory fails here, before binding a port
    train_size(card)  # so does a card that does not say what one image may cost
    host = args.host or os.environ.get("ASSET_HOST", "127.0.0.1")
    port = args.port or int(os.environ.get("ASSET_PORT", "8000"))
    if not log.handlers:  # the server's own lines (errors with their ids, this warning) beside uvicorn's
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    published = os.environ.get("ASSET_PUBLISHED_HOST", "").strip()
    exposed = published or host  # in a container, where its port is published is what other machines reach
    warning = exposure_warning(exposed, settings.api_key)
    if warning and not settings.allow_no_api_key:
        where = f"published on {exposed} (ASSET_PUBLISHED_HOST)" if published else f"listening on {host}"
        print(f"error: no API key and {where}, beyond loopback: refused. Set --api-key-file / ASSET_API_KEY_FILE "
              "or ASSET_API_KEY; or listen (publish) on 127.0.0.1 only; or pass --allow-no-api-key "
              "(ASSET_ALLOW_NO_API_KEY=1) to serve anyone who can reach the port", file=sys.stderr)
        return 2
    if warning:
        log.warning("*" * 20 + " " + warning + " " + "*" * 20)
    # limit_concurrency: connections beyond it get 503 before any work (a slow or many-connection client cannot
    # take the event loop's memory and sockets); the health probes keep answering under the limit
    failed: list[bool] = []
    server: uvicorn.Server | None = None

    def fatal() -> None:  # the model did not load after every attempt: stop, exit non-zero (a supervisor acts)
        failed.append(True)
        if server is not None:
            server.should_exit = True

    config = uvicorn.Config(create_app(settings, on_fatal=fatal), host=host, port=port, log_level="info",
                            access_log=False, loop="auto", http="auto",  # uvloop + httptools when installed
                            limit_concurrency=settings.limit_concurrency, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    server.run()
    if failed:
        print("error: the model did not load (the reasons are in the log above); exiting", file=sys.stderr)
        return 1
    return 0
