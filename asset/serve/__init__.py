"""The inference server: FastAPI app factory, dynamic batcher, Prometheus metrics, a page to look at results.

    from asset.serve import Settings, create_app
    app = create_app(Settings(model="models/demo", backend="onnxruntime"))
"""

from asset.serve.app import create_app
from asset.serve.settings import Settings

__all__ = ["Settings", "create_app"]
