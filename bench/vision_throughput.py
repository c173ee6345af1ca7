"""The vision service's throughput: YOLO detection in images/s with p50/p99, and OCR images/s.

A YOLOv8n-sized detector (`YOLO("yolov8n.yaml")`, untrained weights: speed does not depend on
them) at 640x640 on the CPU, on the photos that ship with ultralytics (and the shared ones in
../shared/data/vision, or $NEXUS_SHARED_DATA/vision, when present), three ways:

- ultralytics: `YOLO.predict` in this process, one decoded image per call (the baseline);
- nexus in-process: the service's ONNX Runtime model (`nexus.vision.yolo.YoloModel`), one
  decoded image per call;
- nexus gRPC: the vision service in its own process (started by the launcher with its own NATS),
  the model uploaded as ONNX through the registry, `--concurrency` clients each sending one JPEG
  per Predict call for `--seconds`; the service batches concurrent images (dynamic batching,
  `--max-batch-size`, `--max-batch-wait-ms`). Its figures include JPEG decoding, which the two
  in-process ones do not pay;
- ocr: ReadText's domain path on the text photos (bench.vision_ocr), one thread, images/s.

Usage: python -m bench.vision_throughput [--images 24] [--seconds 20] [--concurrency 8]
       [--threads 1] [--batches 2] [--max-batch-size 4]
Writes bench/results/vision_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform as host
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np

import nexus.vision  # noqa: F401  (ultralytics offline before it is imported)
from bench.model_runtime import percentiles
from bench.vision_ocr import DATA as VISION_DATA
from bench.vision_ocr import ocr_images_per_second, text_images
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.api.vision.v1 import vision_service_pb2_grpc as pb_grpc
from nexus.common.auth import open_key_store
from nexus.common.launcher import Platform
from nexus.common.settings import NexusSettings
from nexus.vision.results import PredictOptions
from nexus.vision.yolo import YoloModel
from nexus.vision.yolo.postprocess import Filters

RESULTS = Path(__file__).resolve().parent / "results" / "vision_throughput.json"
SHARED = VISION_DATA
IMGSZ = 640
MODEL = "bench-yolov8n"


def photos(count: int) -> list[np.ndarray]:
    """`count` BGR photos: ultralytics' own, then the shared ones, cycled."""
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    paths = sorted(assets.glob("*.jpg"))
    if SHARED.is_dir():
        paths += sorted(
            p for p in SHARED.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
        )
    images = [i for p in paths if (i := cv2.imread(str(p))) is not None]
    return [images[n % len(images)] for n in range(count)]


def detector() -> tuple[Any, bytes]:
    """An untrained yolov8n (ultralytics model) and its ONNX export (dynamic batch)."""
    from ultralytics import YOLO  # type: ignore[attr-defined]

    model = YOLO("yolov8n.yaml")
    onnx = model.export(format="onnx", dynamic=True, simplify=False, imgsz=IMGSZ, device="cpu")
    return YOLO("yolov8n.yaml"), Path(onnx).read_bytes()


def sequential(
    predict: Callable[[np.ndarray], object], images: list[np.ndarray]
) -> dict[str, float]:
    """Images/s and latency of one image per call, in order (after one warm-up call)."""
    predict(images[0])
    latencies = []
    started = time.perf_counter()
    for image in images:
        t = time.perf_counter()
        predict(image)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    return {"images_per_s": len(images) / elapsed, **percentiles(latencies), "images": len(images)}


async def via_grpc(
    onnx: bytes, images: list[np.ndarray], args: argparse.Namespace
) -> dict[str, float]:
    """The service in its own process, `args.concurrency` clients for `args.seconds`."""
    os.environ.update(
        NEXUS_VISION_DEVICE="cpu",
        NEXUS_VISION_MAX_BATCH_SIZE=str(args.max_batch_size),
        NEXUS_VISION_MAX_BATCH_WAIT_MS=str(args.max_batch_wait_ms),
        NEXUS_VISION_INFERENCE_THREADS=str(args.threads),
        NEXUS_VISION_CONCURRENT_BATCHES=str(args.batches),
        NEXUS_VISION_RECT_LETTERBOX=str(not args.square).lower(),
    )
    jpegs = [cv2.imencode(".jpg", i, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for i in images]
    with tempfile.TemporaryDirectory() as tmp:
        platform = Platform(Path(tmp), nats_port=0, gateway_port=0, services=["vision"])
        try:
            nats_url = await platform.start_nats()
            await platform.start_services()
            async with open_key_store(NexusSettings(nats_url=nats_url), "bench-keys") as keys:
                _, key = await keys.create("bench", ["*"], rate_limit_per_minute=10_000_000)
            port = next(c.port for c in platform.children if c.name == "vision")
            return await _load(port, key, onnx, jpegs, args)
        finally:
            platform.stop()


async def _load(
    port: int, key: str, onnx: bytes, jpegs: list[bytes], args: argparse.Namespace
) -> dict[str, float]:
    metadata = (("authorization", f"Bearer {key}"),)
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        models = models_grpc.ModelRegistryServiceStub(channel)
        await models.UploadModel(
            models_pb.UploadModelRequest(name=MODEL, artifact=onnx, framework="onnx"),
            metadata=metadata,
        )
        await models.PromoteModel(
            models_pb.PromoteModelRequest(name=MODEL, version="1"), metadata=metadata
        )
        stub = pb_grpc.VisionServiceStub(channel)

        async def call(n: int) -> float:
            t = time.perf_counter()
            await stub.Predict(
                pb.PredictRequest(model=MODEL, images=[jpegs[n % len(jpegs)]]), metadata=metadata
            )
            return time.perf_counter() - t

        await call(0)  # loads the model
        latencies: list[float] = []
        deadline = time.perf_counter() + args.seconds

        async def client(offset: int) -> None:
            n = offset
            while time.perf_counter() < deadline:
                latencies.append(await call(n))
                n += args.concurrency

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "images_per_s": len(latencies) / elapsed,
        **percentiles(latencies),
        "images": len(latencies),
        "concurrency": args.concurrency,
    }


def ocr_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """OCR (ReadText's domain path: decode, detect, recognise, reading order) images/s on the
    text photos of the vision data, else rendered text (bench.vision_ocr)."""
    photos = text_images()
    measured = ocr_images_per_second(list(photos.values()), args.ocr_seconds)
    return {"photos": sorted(photos), **measured}


def report(results: dict[str, Any]) -> None:
    base = results["ultralytics"]["images_per_s"]
    print(f"yolov8n (untrained) at {IMGSZ}x{IMGSZ}, CPU, {results['cores']} cores")
    print(f"{'path':<22}{'images/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}")
    for path in ("ultralytics", "nexus_in_process", "nexus_grpc"):
        row = results[path]
        print(
            f"{path:<22}{row['images_per_s']:>10.2f}{row['p50_ms']:>10.1f}"
            f"{row['p99_ms']:>10.1f}{row['images_per_s'] / base:>8.2f}"
        )
    ocr = results["ocr"]
    print(
        f"{'ocr (ReadText)':<22}{ocr['images_per_second']:>10.2f}   ({len(ocr['photos'])} images)"
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images per in-process run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the gRPC load")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent gRPC clients")
    parser.add_argument("--ocr-seconds", type=float, default=10.0, help="length of the OCR run")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per run")
    parser.add_argument("--square", action="store_true", help="square letterbox (no rect)")
    parser.add_argument("--batches", type=int, default=2, help="batches run at once (gRPC)")
    return parser.parse_args()


def main() -> None:
    args = parse()
    images = photos(args.images)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        baseline, onnx = detector()  # ultralytics writes its export in the working directory
    results: dict[str, Any] = {
        "cores": os.cpu_count(),
        "machine": host.machine(),
        "args": vars(args),
    }
    results["ultralytics"] = sequential(
        lambda i: baseline.predict(i, imgsz=IMGSZ, device="cpu", verbose=False), images
    )
    ours = YoloModel(onnx, device="cpu", threads=args.threads, rect=not args.square)
    results["nexus_in_process"] = sequential(
        lambda i: ours.predict([i], [Filters(PredictOptions())]), images
    )
    results["nexus_grpc"] = asyncio.run(via_grpc(onnx, images, args))
    results["ocr"] = ocr_throughput(args)
    results["grpc_over_ultralytics"] = (
        results["nexus_grpc"]["images_per_s"] / results["ultralytics"]["images_per_s"]
    )
    report(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
