"""Connect as the holder of a token and print everything the server sends.

    .venv/bin/realtime-server token --user 42 --channel document:7 --json > token.json
    .venv/bin/python docs/examples/listen.py token.json

The token file is what ``realtime-server token --json`` prints. The server's address comes
from the same ``REALTIME_HOST`` / ``REALTIME_PORT`` as the server's. It answers the
server's pings and exits when the connection closes, printing the close code and reason
(4501 after ``realtime-server revoke --jti``). The raw protocol, for seeing it work: real
clients use an SDK (docs/CLIENTS.md).
"""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime_server.config import Settings


async def listen(token: str, url: str) -> None:
    async with connect(url) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": token, "name": "listen.py"}}))
        try:
            async for frame in ws:
                for line in str(frame).splitlines():
                    if line == "{}":  # a ping: answer it, or the server closes with 3012
                        await ws.send("{}")
                        continue
                    message = json.loads(line)
                    if message.get("id") == 1 and "connect" in message:
                        subs = ", ".join(message["connect"].get("subs", {}))
                        print(f"connected as client {message['connect']['client']} ({subs})")
                    else:
                        print(line)
                    sys.stdout.flush()
        except ConnectionClosed:
            pass
    print(f"closed: {ws.close_code} {ws.close_reason}")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: listen.py TOKEN_FILE (what realtime-server token --json printed)")
    with open(sys.argv[1]) as file:
        token = json.load(file)["token"]
    settings = Settings.from_env()
    url = f"ws://{settings.host}:{settings.port}/connection/websocket"
    asyncio.run(listen(token, url))


if __name__ == "__main__":
    main()
