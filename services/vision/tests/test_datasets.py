"""UploadDataset and GetDataset over real gRPC with a real NATS: a generated shapes dataset is
described right; bad zips are refused with the right code and a message naming the file and
line."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import grpc
import pytest
from training_testing import dataset_files, upload, zip_of
from vision_testing import SHAPES, Client, client_of, small_settings

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.common.testing.services import StartService
from nexus.vision.server import create

INVALID, TOO_LARGE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_shapes_dataset_is_stored_and_described(client: Client, tmp_path: Path) -> None:
    files = dataset_files(tmp_path, train=6, val=3, seed=1)
    objects = sum(
        len(data.decode().splitlines()) for name, data in files.items() if name.endswith(".txt")
    )
    archive = zip_of(files)

    stored = await upload(client, archive)
    got = await client.vision.GetDataset(
        pb.GetDatasetRequest(id=stored.id), metadata=client.metadata
    )

    assert (stored.train_images, stored.val_images, stored.objects) == (6, 3, objects)
    assert list(stored.class_names) == list(SHAPES)
    assert stored.task == pb.TASK_DETECT
    assert stored.size_bytes == len(archive)
    assert len(stored.sha256) == 64
    assert got.dataset == stored


async def test_polygons_make_a_segment_dataset(client: Client, tmp_path: Path) -> None:
    stored = await upload(client, zip_of(dataset_files(tmp_path, train=3, val=2, segment=True)))

    assert stored.task == pb.TASK_SEGMENT


async def test_keypoints_with_a_kpt_shape_make_a_pose_dataset(
    client: Client, tmp_path: Path
) -> None:
    files = dataset_files(tmp_path, train=2, val=1)
    files["data.yaml"] += b"kpt_shape: [2, 3]\n"
    for name in [n for n in files if n.endswith(".txt")]:
        lines = files[name].decode().splitlines()
        files[name] = "".join(f"{line} 0.5 0.5 2 0.1 0.2 0\n" for line in lines).encode()

    stored = await upload(client, zip_of(files))

    assert stored.task == pb.TASK_POSE


async def test_an_unknown_dataset_is_not_found(client: Client) -> None:
    request = pb.GetDatasetRequest(id="d" * 32)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.vision.GetDataset(request, metadata=client.metadata)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _bad(case: str, files: dict[str, bytes]) -> tuple[bytes, tuple[str, ...]]:
    """A zip broken one way, and the texts its error must name."""
    label = "labels/train/0000.txt"
    first = files[label].decode().splitlines()[0].split()
    if case == "not a zip":
        return b"PK\x03\x04 this is not a zip", ("not a zip",)
    if case == "zip slip":
        return zip_of({**files, "../evil.txt": b"x"}), ("../evil.txt", "outside")
    if case == "absolute path":
        return zip_of({**files, "/etc/evil": b"x"}), ("/etc/evil", "outside")
    if case == "symlink":
        return zip_of({**files, "images/link": b"/etc/passwd"}, symlinks=("images/link",)), (
            "images/link",
            "symbolic link",
        )
    if case == "no data.yaml":
        return zip_of({k: v for k, v in files.items() if k != "data.yaml"}), ("data.yaml",)
    if case == "class out of range":
        files[label] = " ".join(["7", *first[1:]]).encode()
        return zip_of(files), (f"{label} line 1", "class 7")
    if case == "coordinate over 1":
        files[label] += " ".join([first[0], "0.5", "1.7", "0.1", "0.1"]).encode()
        return zip_of(files), (f"{label} line", "1.7")
    if case == "mixed tasks":
        polygon = "0 0.1 0.1 0.2 0.1 0.2 0.2\n"
        files["labels/val/0000.txt"] = polygon.encode()
        return zip_of(files), ("labels/val/0000.txt line 1", "segment", "detect")
    if case == "undecodable image":
        files["images/val/0001.jpg"] = b"\xff\xd8\xff not really a jpeg"
        return zip_of(files), ("images/val/0001.jpg",)
    if case == "names missing":
        files["data.yaml"] = b"train: images/train\nval: images/val\n"
        return zip_of(files), ("data.yaml", "names")
    if case == "yaml with python tags":
        files["data.yaml"] = b"names: !!python/object/apply:os.system ['true']\n"
        return zip_of(files), ("data.yaml", "YAML")
    if case == "no val folder":
        files["data.yaml"] = files["data.yaml"].replace(b"images/val", b"images/test")
        return zip_of(files), ("images/test",)
    if case == "tiff image":
        files["images/train/extra.tif"] = b"II*\x00"
        return zip_of(files), ("images/train/extra.tif", "JPEG, PNG or WebP")
    if case == "damaged entry":
        return _damaged(files, label), (label, "cannot be read")
    raise AssertionError(case)


def _damaged(files: dict[str, bytes], label: str) -> bytes:
    """The zip with one label entry stored uncompressed and changed after its CRC was taken."""
    buffer = io.BytesIO(zip_of({k: v for k, v in files.items() if k != label}))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr(label, b"0 0.5 0.5 0.125 0.125\n", compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue().replace(b"0 0.5 0.5 0.125 0.125", b"0 0.5 0.5 0.125 0.126")


INVALID_CASES = [
    "not a zip",
    "zip slip",
    "absolute path",
    "symlink",
    "no data.yaml",
    "class out of range",
    "coordinate over 1",
    "mixed tasks",
    "undecodable image",
    "names missing",
    "yaml with python tags",
    "no val folder",
    "tiff image",
    "damaged entry",
]


@pytest.mark.parametrize("case", INVALID_CASES)
async def test_a_bad_zip_is_invalid_with_its_file_and_line(
    client: Client, tmp_path: Path, case: str
) -> None:
    archive, named = _bad(case, dataset_files(tmp_path, train=2, val=2))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(client, archive)

    assert caught.value.code() == INVALID, caught.value.details()
    for text in named:
        assert text in (caught.value.details() or ""), caught.value.details()


async def test_a_zip_bomb_by_ratio_is_refused(client: Client, tmp_path: Path) -> None:
    files = dataset_files(tmp_path, train=2, val=2)
    files["images/train/padding.bin"] = bytes(8 * 1024 * 1024)  # deflates about 1000 times

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(client, zip_of(files))

    assert caught.value.code() == TOO_LARGE
    assert "images/train/padding.bin" in (caught.value.details() or "")
    assert len(zip_of(files)) < 64 * 1024  # what came over the wire was small


@pytest.mark.parametrize(
    ("limit", "value", "named"),
    [
        ("max_dataset_bytes", 2000, "bytes"),
        ("max_dataset_entries", 5, "entries"),
        ("max_dataset_uncompressed_bytes", 4000, "uncompressed bytes"),
    ],
)
async def test_a_dataset_over_a_limit_is_resource_exhausted(
    start_service: StartService, key: str, tmp_path: Path, limit: str, value: int, named: str
) -> None:
    host = await start_service(create, small_settings(**{limit: value}))
    archive = zip_of(dataset_files(tmp_path, train=2, val=2))

    async with client_of(host, key) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await upload(client, archive)

    assert caught.value.code() == TOO_LARGE
    assert named in (caught.value.details() or "")
