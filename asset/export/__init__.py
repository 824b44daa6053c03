"""`asset export`: ONNX, ONNX INT8, OpenVINO and TensorRT exports written into the model directory.

    from asset.export import export_model
    entry = export_model(MODEL_DIR, "onnx")          # -> the record written into model.json["exports"]["onnx"]

Every export is staged in a temporary file inside MODEL_DIR, verified against PyTorch on validation images of the
dataset the model was trained on, then moved into place (os.replace) and recorded (model.json + SHA256SUMS).
Importing this package imports neither torch nor any engine.
"""

from asset.export.formats import EXPORT_COMMAND, FORMATS, ExportError, check_arguments, export_key, format_status

__all__ = ["EXPORT_COMMAND", "FORMATS", "ExportError", "check_arguments", "export_key", "export_model",
           "format_status"]


def __getattr__(name):
    if name == "export_model":
        from asset.export.core import export_model

        return export_model
    raise AttributeError(name)
