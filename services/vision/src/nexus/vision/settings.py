"""Settings of the vision service (env prefix `NEXUS_VISION_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nexus.common.settings import ServiceSettings

MIB = 1024 * 1024


class VisionSettings(ServiceSettings):
    """The vision service's limits (ports, workers and the rest come from ServiceSettings).

    Images arrive inside gRPC messages: `max_message_bytes` (64 MiB here) bounds a whole call,
    `max_images` and `max_image_bytes` each image of it, `max_pixels` what one image decodes to.
    """

    model_config = SettingsConfigDict(env_prefix="NEXUS_VISION_", extra="ignore")

    max_message_bytes: int = Field(default=64 * MIB, gt=0)
    """Largest gRPC message accepted or sent (a batch of images, a dataset zip)."""

    max_images: int = Field(default=32, gt=0)
    """Most images one call may carry."""

    max_image_bytes: int = Field(default=16 * MIB, gt=0)
    """Largest encoded image."""

    max_pixels: int = Field(default=40_000_000, gt=0)
    """Most pixels (width x height) an image may decode to, checked from its header before any
    pixel is decoded (decompression bombs)."""

    max_dataset_bytes: int = Field(default=60 * MIB, gt=0)
    """Largest dataset zip (it travels in one gRPC message: keep under max_message_bytes)."""

    max_dataset_entries: int = Field(default=50_000, gt=0)
    """Most files and folders a dataset zip may hold."""

    max_dataset_uncompressed_bytes: int = Field(default=2 * 1024 * MIB, gt=0)
    """Most bytes a dataset zip may expand to (zip bombs)."""

    max_dataset_ratio: float = Field(default=200.0, gt=1)
    """Largest compression ratio of one entry of a dataset zip (entries over 64 KiB; images
    barely compress, so a higher ratio is a zip bomb)."""

    max_epochs: int = Field(default=300, gt=0)
    """Most epochs a training may ask for."""

    training_dir: str = ""
    """Where trainings extract their dataset and write their runs (a temporary folder each,
    removed when it ends); empty is the system's temporary folder."""

    device: str = "auto"
    """Where YOLO models run and train: "cpu", "cuda", "cuda:1", or "auto" (the first GPU when
    ONNX Runtime's CUDA provider and a GPU are there, else the CPU)."""

    max_batch_size: int = Field(default=8, gt=0)
    """Most images one ONNX Runtime call runs: concurrent requests of a model version are
    batched up to this (dynamic batching)."""

    max_batch_wait_ms: float = Field(default=5.0, ge=0)
    """Longest the first image of a batch waits for company."""

    inference_threads: int = Field(default=0, ge=0)
    """Threads of one ONNX Runtime session (0: ONNX Runtime's default, one per core)."""

    rect_letterbox: bool = True
    """Models exported with free height and width get each image on the smallest canvas of
    stride multiples (ultralytics' rect=True) rather than a square one: less work for
    non-square images; images of one shape share a batch."""

    concurrent_batches: int = Field(default=1, gt=0)
    """Batches of one model version running at once, each on an executor thread with
    inference_threads threads of its own (on a CPU, keep threads x batches near the cores;
    while they run, the next batch fills up)."""

    max_stream_in_flight: int = Field(default=4, gt=0)
    """Frames of one PredictStream in work at once; the next frame is read only when one
    finishes (back-pressure through gRPC flow control)."""

    model_cache_size: int = Field(default=8, gt=0)
    """Most model versions loaded at once (least recently used go first)."""

    model_cache_bytes: int = Field(default=2 * 1024 * MIB, gt=0)
    """Most bytes of loaded model versions."""

    max_denoise_pixels: int = Field(default=16_000_000, gt=0)
    """Most pixels an image may have where Enhance denoises it (non-local means costs about
    1.5 s of one core per megapixel: 16 Mpx is about 25 s); resize down first for more."""
