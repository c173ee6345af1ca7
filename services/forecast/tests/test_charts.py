"""RenderChart over real gRPC with a real NATS: a PNG that decodes at the size asked for, an SVG
that parses, backtest windows drawn, and clear statuses for what a chart cannot draw."""

from __future__ import annotations

import io
from xml.etree import ElementTree

import grpc
import numpy as np
import pytest
from forecast_testing import Client, proto_series, seasonal_random_walk
from PIL import Image

from nexus.api.forecast.v1 import forecast_service_pb2 as pb

pytestmark = pytest.mark.timeout(120)
SN, ETS = pb.MODEL_SEASONAL_NAIVE, pb.MODEL_AUTO_ETS
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _data(*series: pb.Series) -> pb.SeriesData:
    return pb.SeriesData(series=series, options=pb.SeriesOptions(season_length=12))


def _series(series_id: str = "s", n: int = 96) -> pb.Series:
    return proto_series(seasonal_random_walk(n, 12, np.random.default_rng(3)), series_id)


async def test_a_png_chart_with_intervals_and_backtest_windows(client: Client) -> None:
    request = pb.RenderChartRequest(
        data=_data(_series()),
        horizon=12,
        levels=[80, 95],
        models=[SN, ETS],
        backtest=pb.BacktestConfig(windows=2),
        show_backtest=True,
        width=640,
        height=320,
    )
    reply = (await client.forecast.RenderChart(request, metadata=client.metadata)).chart

    assert reply.content_type == "image/png"
    assert reply.data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(reply.data)) as image:
        image.load()  # decodes every pixel: a truncated or corrupt PNG fails here
        assert image.size == (640, 320)


async def test_an_svg_chart_parses_and_shows_each_backtest_window(client: Client) -> None:
    def request(show: bool) -> pb.RenderChartRequest:
        return pb.RenderChartRequest(
            data=_data(_series()),
            horizon=12,
            levels=[80],
            models=[SN],
            backtest=pb.BacktestConfig(windows=3),
            show_backtest=show,
            format=pb.CHART_FORMAT_SVG,
            title="demand",
        )

    plain = (await client.forecast.RenderChart(request(False), metadata=client.metadata)).chart
    windows = (await client.forecast.RenderChart(request(True), metadata=client.metadata)).chart

    assert plain.content_type == windows.content_type == "image/svg+xml"
    root = ElementTree.fromstring(plain.data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "demand" in _texts(root)
    # Each window adds a dashed forecast line and a line at its origin.
    assert _paths(windows.data) >= _paths(plain.data) + 6


def _paths(svg: bytes) -> int:
    return sum(1 for e in ElementTree.fromstring(svg).iter() if e.tag.endswith("}path"))


def _texts(root: ElementTree.Element) -> list[str]:
    return [e.text or "" for e in root.iter() if e.tag.endswith("}text")]


BAD = [
    (  # two series
        pb.RenderChartRequest(data=_data(_series("a"), _series("b")), horizon=6, models=[SN]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "exactly one series",
    ),
    (  # a dataset without the one series to draw
        pb.RenderChartRequest(data=pb.SeriesData(dataset_id="0" * 32), horizon=6, models=[SN]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "exactly one series",
    ),
    (  # an unknown dataset
        pb.RenderChartRequest(
            data=pb.SeriesData(dataset_id="0" * 32, series_ids=["a"]), horizon=6, models=[SN]
        ),
        grpc.StatusCode.NOT_FOUND,
        "does not exist",
    ),
    (  # wider than the limit (the field's rule)
        pb.RenderChartRequest(data=_data(_series()), horizon=6, models=[SN], width=4001),
        grpc.StatusCode.INVALID_ARGUMENT,
        "width",
    ),
    (  # an unknown format
        pb.RenderChartRequest(data=_data(_series()), horizon=6, models=[SN], format=7),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "format",
    ),
    (  # more history than a chart draws (the fixture's max_chart_points is 500)
        pb.RenderChartRequest(data=_data(_series(n=600)), horizon=6, models=[SN]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "history",
    ),
    (  # too short for the backtest windows asked to be drawn
        pb.RenderChartRequest(
            data=_data(_series(n=40)),
            horizon=12,
            models=[SN],
            backtest=pb.BacktestConfig(windows=3),
            show_backtest=True,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has 40 values",
    ),
]


@pytest.mark.parametrize(("request_", "code", "words"), BAD)
async def test_what_a_chart_cannot_draw_gets_a_clear_status(
    client: Client, request_: pb.RenderChartRequest, code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.forecast.RenderChart(request_, metadata=client.metadata)

    assert refused.value.code() == code
    assert words in (refused.value.details() or "")
