"""`asset serve`: the HTTP inference server (FastAPI under uvicorn). No torch unless --backend pytorch."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over HTTP (POST /predict, a page at /)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a model directory over HTTP. Every option can also come from an environment variable "
        "(what a container sets); options win over the environment.",
        epilog="Routes: POST /predict, POST /predict/batch, GET /healthz, GET /readyz, GET /model, GET /metrics, "
        "GET / (a page to try images), GET /docs (OpenAPI).\n\nEnvironment: ASSET_MODEL, ASSET_BACKEND, "
        "ASSET_PRECISION, ASSET_DEVICE, ASSET_THREADS, ASSET_API_KEY, ASSET_MAX_BATCH, ASSET_MAX_WAIT_MS, "
        "ASSET_QUEUE_SIZE, ASSET_MAX_BODY_MB, ASSET_MAX_PIXELS, ASSET_MAX_BATCH_IMAGES, ASSET_HOST, ASSET_PORT.\n\n"
        "Example:\n  asset serve --model models/demo --backend onnxruntime --host 127.0.0.1 --port 8000\n"
        "  curl -F image=@part.png http://127.0.0.1:8000/predict",
    )
    p.add_argument("--model", metavar="MODEL_DIR", help="model directory (env ASSET_MODEL)")
    p.add_argument("--backend", help="onnxruntime (default), openvino, tensorrt or pytorch (env ASSET_BACKEND)")
    p.add_argument("--precision", help="fp32 (default), int8 (onnxruntime/openvino), fp16 (tensorrt/pytorch cuda)")
    p.add_argument("--device", help="cpu (default) or cuda[:N]")
    p.add_argument("--threads", type=int, help="backend intra-op threads (default: usable cores)")
    p.add_argument("--api-key", help="require this X-API-Key on every route but the health probes (env ASSET_API_KEY)")
    p.add_argument("--max-batch", type=int, help="largest dynamic batch (default 4 on CPU, 8 on a GPU)")
    p.add_argument("--max-wait-ms", type=float, help="longest wait for a batch to fill (default 5 ms)")
    p.add_argument("--queue-size", type=int, help="requests waiting at most before 503 + Retry-After (default 64)")
    p.add_argument("--max-body-mb", type=float, help="largest request body (default 20 MB)")
    p.add_argument("--max-pixels", type=int, help="largest image pixel count (default 40,000,000)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; env ASSET_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000; env ASSET_PORT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    import uvicorn

    from asset.serve import Settings, create_app
    from asset.serve.settings import SettingsError

    try:
        settings = Settings.from_env(
            model=args.model, backend=args.backend, precision=args.precision, device=args.device,
            threads=args.threads, api_key=args.api_key, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
            queue_size=args.queue_size, max_body_mb=args.max_body_mb, max_pixels=args.max_pixels)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from asset import modeldir

    modeldir.verify(settings.model)  # a missing or corrupt model directory fails here, before binding a port
    host = args.host or os.environ.get("ASSET_HOST", "127.0.0.1")
    port = args.port or int(os.environ.get("ASSET_PORT", "8000"))
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False,
                loop="auto", http="auto")  # uvloop + httptools when installed (they are pinned in the runtime)
    return 0
