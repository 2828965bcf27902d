"""SMTP servers for the tests (aiosmtpd).

Usage: smtp_server.py PORT CERT KEY starttls|implicit USER PASSWORD
         a submission server with STARTTLS or implicit TLS and AUTH, for the probe tests;
       smtp_server.py PORT sink DIR
         a relay without TLS or AUTH that keeps every message as DIR/NNNNNN.eml, its envelope
         recipients first as `X-Envelope-To:` lines, for the notification tests.
Prints READY once it accepts connections, then serves until killed.
"""

import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


class Keeper:
    """Writes each message to a file of its own (temporary name, then renamed: readers never
    see half a message)."""

    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        name = os.path.join(self.directory, f"{self.count:06d}.eml")
        with open(name + ".tmp", "wb") as out:
            for recipient in envelope.rcpt_tos:
                out.write(f"X-Envelope-To: {recipient}\r\n".encode())
            out.write(envelope.original_content)
        os.rename(name + ".tmp", name)
        return "250 OK"


def serve(controller):
    controller.start()
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def main():
    if sys.argv[2] == "sink":
        port, _, directory = sys.argv[1:4]
        serve(Controller(Keeper(directory), hostname="127.0.0.1", port=int(port)))
        return
    port, cert, key, mode, user, password = sys.argv[1:7]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        # handled=False: aiosmtpd answers 535 itself on failure.
        return AuthResult(success=ok, handled=False)

    common = dict(hostname="127.0.0.1", port=int(port), authenticator=authenticate)
    if mode == "starttls":
        controller = Controller(
            Sink(), tls_context=context, require_starttls=True, auth_require_tls=True, **common
        )
    elif mode == "implicit":
        # aiosmtpd does not notice implicit TLS, so AUTH must not wait for STARTTLS.
        controller = Controller(Sink(), ssl_context=context, auth_require_tls=False, **common)
    else:
        sys.exit(f"unknown mode {mode}")
    serve(controller)


if __name__ == "__main__":
    main()
