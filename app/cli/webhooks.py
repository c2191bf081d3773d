"""`kiln webhooks`: a local receiver that verifies and prints deliveries, for development."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click
import orjson

from app.domain.signing import InvalidSignature, verify


@click.group()
def webhooks() -> None:
    """Webhooks."""


def receiver_handler(secret: str | None, answer_status: int) -> type[BaseHTTPRequestHandler]:
    """A request handler that verifies each POST (when given the secret) and prints it."""

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            verdict, status = "unverified (no --secret)", answer_status
            if secret:
                try:
                    verify(secret, dict(self.headers.items()), body, now=time.time())
                    verdict = "signature ok"
                except InvalidSignature as exc:
                    verdict, status = f"SIGNATURE INVALID: {exc}", 401
            try:
                shown = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
                kind = orjson.loads(body).get("type", "?")
            except (orjson.JSONDecodeError, AttributeError):
                shown, kind = body.decode(errors="replace"), "?"
            self.send_response(status)  # answer first: the sender's clock is running
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.wfile.flush()
            click.echo(f"{kind} webhook-id={self.headers.get('webhook-id')} {verdict} "
                       f"-> {status}\n{shown}", color=False)

        def log_message(self, *_args) -> None:
            return

    return Receiver


@webhooks.command("listen")
@click.option("--port", type=int, default=8787, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--secret", default=None, envvar="KILN_WEBHOOK_SECRET",
              help="whsec_… to verify signatures with (answers 401 when one does not verify).")
@click.option("--status", "answer_status", type=int, default=204, show_default=True,
              help="Status to answer verified deliveries with (e.g. 500 to watch retries).")
def listen(port: int, host: str, secret: str | None, answer_status: int) -> None:
    """Receive deliveries on http://HOST:PORT/ and print them (Ctrl-C stops).

    Kiln only calls http and loopback URLs when KILN_WEBHOOK_ALLOW_PRIVATE=true (`kiln up` sets it).
    """
    server = ThreadingHTTPServer((host, port), receiver_handler(secret, answer_status))
    click.echo(f"listening on http://{host}:{server.server_port}/", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
