"""`asset serve`: the HTTP inference server (FastAPI under uvicorn). No torch unless --backend pytorch."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

log = logging.getLogger("asset.serve")


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each line, not as it was when the handler was made: the logger outlives a
    `main()` call, and a caller (an embedding program, a test's capture) may swap or close that stream meanwhile."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ and setStream assign it: ignored, always sys.stderr
        pass


def register(sub) -> None:
    from asset.serve.settings import Settings  # standard library only: `asset --help` needs no FastAPI

    p = sub.add_parser(
        "serve", help="serve a model over HTTP (POST /predict, a page at /)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a model directory over HTTP. Every option can also come from an environment variable "
        "(what a container sets); options win over the environment.",
        epilog="Routes: POST /predict, POST /predict/batch, GET /healthz, GET /readyz, GET /model, GET /metrics, "
        "GET / (a page to try images), GET /docs (OpenAPI).\n\nEnvironment: "
        + ", ".join(Settings.env_names().values()) + ".\n\n"
        "Cost of one image: the network never sees more than MAX_INPUT_FACTOR x the training input size (model.json "
        "input.train_size) of one image; larger images run as tiles of the training size, shrunk first if more than "
        "MAX_INPUT_FACTOR tiles would be needed. The mask is always returned at the upload's size.\n\n"
        "Without an API key on an address beyond loopback, any web page a browser on the network opens can POST "
        "images to the server (a multipart POST needs no CORS preflight): set --api-key there.\n\n"
        "Example:\n  asset serve --model models/demo --backend onnxruntime --host 127.0.0.1 --port 8000\n"
        "  curl -F image=@part.png http://127.0.0.1:8000/predict",
    )
    Settings.add_arguments(p)
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
    import uvicorn

    from asset.serve import Settings, create_app
    from asset.serve.settings import SettingsError

    try:
        settings = Settings.from_env(**{name: getattr(args, name) for name in Settings.env_names()})
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from asset import modeldir
    from asset.tiling import train_size

    card = modeldir.verify(settings.model)  # a missing or corrupt model directory fails here, before binding a port
    train_size(card)  # so does a card that does not say what one image may cost
    host, port = settings.host, settings.port
    if not log.handlers:  # the server's own lines (errors with their ids, this warning) beside uvicorn's
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    published = (settings.published_host or "").strip()
    exposed = published or host  # in a container, where its port is published is what other machines reach
    warning = exposure_warning(exposed, settings.api_key)
    if warning and not settings.allow_no_api_key:
        where = f"published on {exposed} (--published-host / ASSET_PUBLISHED_HOST)" if published else f"listening on {host}"
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
