"""Paging by a nullable column visits every node exactly once, in both directions."""

import pytest
from support.service import InProcess


@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_every_node_once(bf: InProcess, sort_dir: str, limit: int) -> None:
    for name in ("b", None, "a", None, "c"):
        body = {"driver": "fake-hardware", **({"name": name} if name else {})}
        assert (await bf.client.post("/v1/nodes", json=body)).status_code == 201
    seen: list[dict[str, str]] = []
    r = await bf.client.get("/v1/nodes", params={"sort_key": "name", "sort_dir": sort_dir, "limit": limit})
    while True:
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["nodes"]
        if "next" not in page:
            break
        r = await bf.client.get(page["next"])
    names = [n["name"] for n in seen]
    assert len({n["uuid"] for n in seen}) == len(seen) == 5
    expected = [None, None, "a", "b", "c"] if sort_dir == "asc" else ["c", "b", "a", None, None]
    assert names == expected


@pytest.mark.parametrize("path", ["/v1/nodes", "/v1/ports", "/v1/portgroups"])
async def test_detail_and_fields_together_are_refused(bf: InProcess, path: str) -> None:
    r = await bf.client.get(path, params={"detail": "true", "fields": "uuid"})
    assert r.status_code == 400
    assert "Can not specify ?detail=True and fields" in r.json()["error_message"]
