"""The inference server: FastAPI app factory, dynamic batcher, Prometheus metrics, a page to look at results.

    from asset.serve import Settings, create_app
    app = create_app(Settings(model="models/demo", backend="onnxruntime"))
"""

from asset.serve.settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # imported on use, so that `asset serve --help` (settings only) needs no FastAPI
        from asset.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'asset.serve' has no attribute {name!r}")
