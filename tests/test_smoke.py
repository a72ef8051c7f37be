from __future__ import annotations

from realtime_server.app import Running

from .conftest import ws_url
from .helpers import RawClient, token


async def test_connect_and_user_channel(server: Running) -> None:
    client = await RawClient.open(ws_url(server))
    reply = await client.connect(token("42"))
    assert "user:42" in reply["connect"]["subs"]
    await server.node.ops.publish("user:42", b'{"n":1}')
    push = await client.push("pub")
    assert push == {"channel": "user:42", "pub": {"data": {"n": 1}, "offset": 1}}
    await client.close()
