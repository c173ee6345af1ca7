"""YOLO models served with ONNX Runtime: the model's description from the ONNX metadata that
ultralytics writes at export, letterbox preprocessing, one session run per batch, and
postprocessing that matches ultralytics' own (NMS per class, masks from prototypes, keypoints,
top-k classes). Registration turns an upload (ONNX, or an ultralytics `.pt` loaded under an
allow-list and exported) into a checked ONNX artifact. Plain Python: no gRPC here.
"""

from nexus.vision.yolo.description import Description, describe
from nexus.vision.yolo.model import YoloModel, providers_for

__all__ = ["Description", "YoloModel", "describe", "providers_for"]
