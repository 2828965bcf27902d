"""A submission server for the probe tests (aiosmtpd): STARTTLS or implicit TLS, with AUTH.

Usage: smtp_server.py PORT CERT KEY starttls|implicit USER PASSWORD
Prints READY once it accepts connections, then serves until killed.
"""

import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def main():
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
    controller.start()
    print("READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
