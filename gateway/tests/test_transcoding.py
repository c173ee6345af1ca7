"""HTTP <-> gRPC mapping over a real socket: path, body and query fields, JSON names, bytes."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx


async def test_body_and_path_fill_the_request(client: httpx.AsyncClient, anomaly: Any) -> None:
    body = {
        "name": "ignored: the path wins",
        "points": [{"values": [1, 2], "id": "a"}, {"values": [20]}],
        "routingKey": "user-7",  # lowerCamel JSON names are accepted too
    }
    reply = await client.post("/v1/anomaly/detectors/det-1:score", json=body)

    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    sent = anomaly.seen.requests[-1]
    assert (sent.name, sent.routing_key, len(sent.points)) == ("det-1", "user-7", 2)
    assert reply.json() == {
        "scores": [
            {"id": "a", "score": 3.0, "is_anomaly": False},  # snake_case, zeros and false shown
            {"id": "", "score": 20.0, "is_anomaly": True},
        ],
        "threshold": 10.0,
        "model": {"name": "det-1", "version": "3", "alias": ""},
    }


async def test_path_variables_are_percent_decoded(client: httpx.AsyncClient, anomaly: Any) -> None:
    reply = await client.post("/v1/anomaly/detectors/a%20b%2Fc:score", json={})

    assert reply.status_code == 200, reply.text
    assert anomaly.seen.requests[-1].name == "a b/c"


async def test_put_and_delete_with_path_variables(client: httpx.AsyncClient, anomaly: Any) -> None:
    put = await client.put("/v1/anomaly/sources/cpu", json={"detector": "det-1"})
    delete = await client.delete("/v1/anomaly/sources/cpu")

    # An unset message field (create_time) has presence, so it is left out.
    assert put.json()["binding"] == {"source": "cpu", "detector": "det-1", "alias": "production"}
    assert delete.status_code == 200
    assert delete.json() == {}
    assert anomaly.seen.requests[-1].source == "cpu"


async def test_a_source_binds_a_streaming_detector_without_a_trained_one(
    client: httpx.AsyncClient, anomaly: Any
) -> None:
    streaming = {
        "kind": "windowed_gaussian",
        "parameters": {"window": "500"},
        "threshold": 0.995,
        "suppress": 3,
    }
    put = await client.put("/v1/anomaly/sources/cpu", json={"streaming": streaming})
    unset = await client.put("/v1/anomaly/sources/cpu", json={"streaming": {"kind": "x"}})

    assert put.status_code == 200, put.text
    sent = anomaly.seen.requests[-2]
    assert (sent.source, sent.detector, sent.streaming.kind) == ("cpu", "", "windowed_gaussian")
    assert (sent.streaming.threshold, sent.streaming.suppress) == (0.995, 3)
    assert dict(sent.streaming.parameters) == {"window": "500"}
    assert put.json()["binding"]["streaming"] == streaming
    # Unset optional numbers stay unset: the service fills in its defaults.
    assert unset.json()["binding"]["streaming"] == {"kind": "x", "parameters": {}}
    assert not anomaly.seen.requests[-1].streaming.HasField("threshold")


async def test_a_streaming_value_of_the_wrong_type_is_a_400(client: httpx.AsyncClient) -> None:
    for streaming in ({"suppress": "many"}, {"parameters": {"window": 5}}, {"threshold": "x"}):
        reply = await client.put("/v1/anomaly/sources/cpu", json={"streaming": streaming})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["field_violations"][0]["field"].startswith("streaming")


async def test_query_parameters_fill_a_get(client: httpx.AsyncClient, anomaly: Any) -> None:
    reply = await client.get("/v1/anomaly/models", params={"page_size": "2", "pageToken": "t"})

    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "models": [
            {"name": "anomaly-0", "versions": [], "aliases": [], "latest_version": ""},
            {"name": "anomaly-1", "versions": [], "aliases": [], "latest_version": ""},
        ],
        "next_page_token": "tx",
    }


async def test_route_by_field_picks_the_backend(
    client: httpx.AsyncClient, anomaly: Any, vision: Any
) -> None:
    from_vision = await client.get("/v1/vision/models")
    from_anomaly = await client.get("/v1/anomaly/models/m1")
    unknown = await client.get("/v1/nope/models")

    assert from_vision.json()["models"][0]["name"] == "vision-0"
    assert vision.seen.requests[-1].service == "vision"
    assert from_anomaly.json()["model"]["name"] == "m1"
    assert anomaly.seen.requests[-1].service == "anomaly"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["reason"] == "BACKEND_NOT_FOUND"


async def test_proto3_json_on_output(client: httpx.AsyncClient) -> None:
    version = (await client.get("/v1/anomaly/models/m1")).json()["model"]["versions"][0]

    assert version["size_bytes"] == str(2**40)  # int64 is a string in proto3 JSON
    assert version["create_time"] == "2023-11-14T22:13:20Z"
    assert version["metrics"] == {"auc": 0.75}


async def test_bytes_are_base64_both_ways(client: httpx.AsyncClient, anomaly: Any) -> None:
    artifact = b"\x00\x01binary\xff"
    body = {
        "framework": "onnx",
        "artifact": base64.b64encode(artifact).decode(),
        "metrics": {"auc": 1},
    }
    reply = await client.post("/v1/anomaly/models/m1/versions", json=body)

    assert reply.status_code == 200, reply.text
    assert anomaly.seen.requests[-1].artifact == artifact
    version = reply.json()["version"]
    assert version["sha256"] == hashlib.sha256(artifact).hexdigest()
    assert (version["size_bytes"], version["name"]) == (str(len(artifact)), "m1")


async def test_csv_bytes_field(client: httpx.AsyncClient) -> None:
    csv = b"a,b\n1,2\n3,4\n"
    body = {"name": "d", "csv": base64.b64encode(csv).decode()}
    dataset = (await client.post("/v1/anomaly/datasets", json=body)).json()["dataset"]

    assert (dataset["rows"], dataset["features"], dataset["feature_names"]) == ("2", 2, ["a", "b"])
    assert dataset["has_labels"] is False


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    reply = await client.post("/v1/anomaly/detectors/d:score", content=b"{not json")

    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert "not valid JSON" in error["message"]


async def test_wrong_type_names_the_field(client: httpx.AsyncClient) -> None:
    reply = await client.post(
        "/v1/anomaly/detectors/d:score", json={"points": [{"values": [1, "x"]}]}
    )

    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["field_violations"][0]["field"] == "points[0].values[1]"
    assert "points" in error["message"]


async def test_unknown_fields_are_refused(client: httpx.AsyncClient) -> None:
    in_body = await client.post("/v1/anomaly/detectors/d:score", json={"nope": 1})
    nested = await client.post(
        "/v1/anomaly/detectors/d:score", json={"points": [{"values": [1]}, {"nope": 1}]}
    )
    in_query = await client.get("/v1/anomaly/models", params={"nope": "1"})
    bad_value = await client.get("/v1/anomaly/models", params={"page_size": "many"})

    assert {r.status_code for r in (in_body, nested, in_query, bad_value)} == {400}
    assert in_body.json()["error"]["field_violations"][0]["field"] == "nope"
    assert nested.json()["error"]["field_violations"][0]["field"] == "points[1].nope"
    assert in_query.json()["error"]["field_violations"][0]["field"] == "nope"
    assert bad_value.json()["error"]["field_violations"][0]["field"] == "page_size"


async def test_body_must_be_an_object(client: httpx.AsyncClient) -> None:
    reply = await client.post("/v1/anomaly/detectors/d:score", json=[1, 2])

    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "the body must be a JSON object"


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing/here")
    wrong = await client.get("/v1/anomaly/detectors/d:score")
    probe = await client.post("/healthz")

    assert missing.status_code == 404
    assert missing.json()["error"]["status"] == "NOT_FOUND"
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["code"] == 405
    assert probe.status_code == 405
    assert probe.json()["error"]["code"] == 405
