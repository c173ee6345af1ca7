"""OCR throughput: images per second through ReadText's domain path (decode the bytes, detect,
classify and recognise with RapidOCR, rows in reading order), no gRPC.

Images: the Latin-script text photos of the vision data (english.png, french.jpg, example3.png,
skimage_page.png) when they are there, else three rendered images of text. One thread, one
engine (as one executor worker of the service runs it); `--threads` sets ONNX Runtime's threads
per session (0: its default, one per core). One untimed pass loads the models and warms them.

Measured (one run, 2 cores shared with other helpers' work, `--seconds 10`): see ADR 0040.

Also a row of `python -m bench.vision_throughput`.

Usage: python -m bench.vision_ocr [--seconds 10] [--threads 0]
Writes bench/results/vision_ocr.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from nexus.vision.images import decode
from nexus.vision.ocr import read_text

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NEXUS_SHARED_DATA") or ROOT.parent / "shared" / "data") / "vision"
"""The vision data beside the checkout (or under $NEXUS_SHARED_DATA)."""
PHOTOS = (
    "ocr/easyocr/english.png",
    "ocr/easyocr/french.jpg",
    "ocr/easyocr/example3.png",
    "photos/skimage_page.png",
)
MAX_PIXELS = 40_000_000


def text_images() -> dict[str, bytes]:
    """The text photos by name, or rendered text when they are not here."""
    found = {name: (DATA / name).read_bytes() for name in PHOTOS if (DATA / name).is_file()}
    return found or {f"rendered{i}": _rendered(i) for i in range(3)}


def _rendered(seed: int) -> bytes:
    image = np.full((300, 900, 3), 255, np.uint8)
    for row in range(3):
        text = f"Line {row + 1} of image {seed}: NEXUS 2026"
        origin = (20, 80 + 90 * row)
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(image, text, origin, font, 1.2, (0, 0, 0), 2, cv2.LINE_AA)
    return cv2.imencode(".png", image)[1].tobytes()


def ocr_images_per_second(
    images: list[bytes], seconds: float = 10.0, threads: int = 0
) -> dict[str, float]:
    """Images per second of decode + read_text over `images` in turn, for at least `seconds`
    after one untimed pass; and the lines read per image."""
    for data in images:  # loads this thread's engine and warms it
        read_text(decode(data, max_pixels=MAX_PIXELS), threads=threads)
    done = lines = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        data = images[done % len(images)]
        lines += len(read_text(decode(data, max_pixels=MAX_PIXELS), threads=threads).lines)
        done += 1
    return {
        "images": done,
        "seconds": round(elapsed, 2),
        "images_per_second": round(done / elapsed, 3),
        "lines_per_image": round(lines / done, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    images = text_images()
    result = ocr_images_per_second(list(images.values()), args.seconds, args.threads)
    report = {"photos": sorted(images), "threads": args.threads, **result}
    print(json.dumps(report, indent=2))
    out = ROOT / "bench" / "results" / "vision_ocr.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
