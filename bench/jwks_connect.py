"""Connect cost with identity-provider tokens (a JWKS key set) next to HS256.

1. **verify**: microseconds per ``TokenVerifier.verify_connection`` in this process, no
   network: HS256 with the secret; RS256, PS256, ES256 and EdDSA through a key set
   (header parse, ``kid`` lookup, PyJWT); RS256 with a PEM key for comparison.
2. **churn**: a real server process (``REALTIME_JWT_SECRET`` and
   ``REALTIME_JWT_JWKS_URL`` pointing at a loopback key-set server run by this script,
   holding one RSA and one P-256 key), driven by ``realtime-server loadtest --scenario
   churn --jwt-algorithm ALG`` for HS256, RS256 and ES256 in turn (a fresh server each
   time, ``--repeat`` rounds): the server's CPU per connect, which includes the
   connection token and, for churned clients, the subscription token.

    .venv/bin/python bench/jwks_connect.py [--duration S] [--users N] [--repeat R]
        [--skip-churn] [--json]

Only 127.0.0.1; the server and the key-set server are stopped at the end, on failure
and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
from common import API_KEY, HOST, JWT_SECRET, WS_PATH, free_port, wait_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from realtime_server.auth.jwks import parse_jwks
from realtime_server.auth.keys import load_keys
from realtime_server.auth.tokens import TokenVerifier

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _jwk(private: PrivateKey, kid: str) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        out = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        out = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        out = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**out, "kid": kid, "use": "sig"}


def _pem(private: PrivateKey) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class _KeySource:
    def __init__(self, body: bytes) -> None:
        self.current = parse_jwks(body)

    async def refetch_unknown(self) -> bool:
        return False


def bench_verify(n: int) -> dict[str, float]:
    """Microseconds per verify_connection, median of five runs of ``n``."""
    keys = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }
    body = orjson.dumps({"keys": [_jwk(k, kid) for kid, k in keys.items()]})
    url = "https://idp.example.com/jwks.json"
    jwks_verifier = TokenVerifier(
        load_keys(JWT_SECRET, None, "HS256,RS256,PS256,ES256,EdDSA", url),
        source=_KeySource(body),
    )
    rsa_pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    pem_verifier = TokenVerifier(load_keys(None, rsa_pem.decode(), "RS256"))
    now = int(time.time())
    claims = {"sub": "42", "iat": now, "exp": now + 3600, "jti": "j"}
    hs = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    cases = {
        "HS256 (secret only)": (TokenVerifier(load_keys(JWT_SECRET, None, "HS256")), hs),
        "HS256 (secret + key set)": (jwks_verifier, hs),
        "RS256 (key set)": (
            jwks_verifier,
            jwt.encode(claims, keys["rsa"], algorithm="RS256", headers={"kid": "rsa"}),
        ),
        "PS256 (key set)": (
            jwks_verifier,
            jwt.encode(claims, keys["rsa"], algorithm="PS256", headers={"kid": "rsa"}),
        ),
        "ES256 (key set)": (
            jwks_verifier,
            jwt.encode(claims, keys["ec"], algorithm="ES256", headers={"kid": "ec"}),
        ),
        "EdDSA (key set)": (
            jwks_verifier,
            jwt.encode(claims, keys["ed"], algorithm="EdDSA", headers={"kid": "ed"}),
        ),
        "RS256 (PEM key)": (pem_verifier, jwt.encode(claims, keys["rsa"], algorithm="RS256")),
    }
    out: dict[str, float] = {}
    for name, (verifier, token) in cases.items():
        verifier.verify_connection(token, now)  # warm
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n):
                verifier.verify_connection(token, now)
            runs.append((time.perf_counter() - start) / n * 1e6)
        out[name] = round(statistics.median(runs), 1)
    return out


@contextlib.contextmanager
def key_set_server(body: bytes) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def server_process(jwks_url: str, workdir: Path) -> Iterator[tuple[int, int, int]]:
    port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update(
        {
            "REALTIME_HOST": HOST,
            "REALTIME_PORT": str(port),
            "REALTIME_API_HOST": HOST,
            "REALTIME_API_PORT": str(api_port),
            "REALTIME_API_KEY": API_KEY,
            "REALTIME_JWT_SECRET": JWT_SECRET,
            "REALTIME_JWT_JWKS_URL": jwks_url,
            "REALTIME_JWT_ALGORITHMS": "HS256,RS256,ES256",
            "REALTIME_MAX_CONNECTIONS_PER_USER": "0",
            "REALTIME_SQLITE_PATH": str(workdir / "events.db"),
            "REALTIME_EVENTS_SPILL_PATH": str(workdir / "events.spill.jsonl"),
            "REALTIME_REVOCATIONS_PATH": str(workdir / "revocations.jsonl"),
            "REALTIME_LOG_LEVEL": "WARNING",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_server", "serve"], env=env, stdin=subprocess.DEVNULL
    )
    try:
        if not (wait_port(port, 20.0) and wait_port(api_port, 20.0)):
            raise RuntimeError("the server did not start")
        yield proc.pid, port, api_port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def churn_once(
    alg: str, signing: str, jwks_url: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    with server_process(jwks_url, workdir) as (pid, port, api_port):
        env = dict(os.environ, BENCH_JWT_KEY=signing, BENCH_API_KEY=API_KEY)
        cmd = [
            sys.executable,
            "-m",
            "realtime_server",
            "loadtest",
            "--scenario",
            "churn",
            "--url",
            f"ws://{HOST}:{port}{WS_PATH}",
            "--api-url",
            f"http://{HOST}:{api_port}",
            "--server-pid",
            str(pid),
            "--secret-env",
            "BENCH_JWT_KEY",
            "--api-key-env",
            "BENCH_API_KEY",
            "--jwt-algorithm",
            alg,
            "--users",
            str(args.users),
            "--duration",
            str(args.duration),
            "--json",
            "--quiet",
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"loadtest {alg} failed: {done.stderr.decode()[-2000:]}")
        result: dict[str, Any] = orjson.loads(done.stdout)
    c, s = result["connections"], result["server"]
    return {
        "opened": c["opened"],
        "failed": sum((c["failed"] or {}).values()),
        "connect_rate_per_s": c["connect_rate_per_s"],
        "connect_p50_ms": c["connect_p50_ms"],
        "connect_p99_ms": c["connect_p99_ms"],
        "cpu_us_per_connect": s.get("cpu_us_per_connect"),
        "churn": result.get("churn"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-n", type=int, default=2000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-churn", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    report: dict[str, Any] = {"verify_us": bench_verify(args.verify_n)}
    if not args.json:
        print("verify_connection, us per call (median of 5 x", args.verify_n, "):")
        for name, us in report["verify_us"].items():
            print(f"  {name:26} {us:7.1f}")
    if not args.skip_churn:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        body = orjson.dumps({"keys": [_jwk(rsa_key, "rsa"), _jwk(ec_key, "ec")]})
        signing = {"HS256": JWT_SECRET, "RS256": _pem(rsa_key), "ES256": _pem(ec_key)}
        runs: dict[str, list[dict[str, Any]]] = {alg: [] for alg in signing}
        with (
            key_set_server(body) as jwks_url,
            tempfile.TemporaryDirectory(prefix="rt-bench-jwks-") as tmp,
        ):
            for _ in range(args.repeat):
                for alg, key in signing.items():
                    runs[alg].append(churn_once(alg, key, jwks_url, args, Path(tmp)))
                    if not args.json:
                        r = runs[alg][-1]
                        print(
                            f"churn {alg}: {r['opened']} opened, {r['failed']} failed, "
                            f"{r['connect_rate_per_s']}/s, connect p50 {r['connect_p50_ms']} ms "
                            f"p99 {r['connect_p99_ms']} ms, server CPU "
                            f"{r['cpu_us_per_connect']} us per connect"
                        )
        report["churn"] = runs
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
