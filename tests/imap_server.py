"""A throw-away Dovecot IMAP server on 127.0.0.1 for the bounce mailbox tests.

Its own config file, passwd file and maildirs in a temporary folder; `dovecot -F` in the
foreground as a child process; plain IMAP (with STARTTLS) and IMAPS on free ports when
`openssl` can make a self-signed certificate for 127.0.0.1, plain IMAP only otherwise. One user,
in a passwd file; each test starts with an empty mailbox (`empty_account`). Failed logins from
127.0.0.1 are not slowed down (`login_trusted_networks`), so the wrong-password tests cost nothing.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import free_port

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
login_trusted_networks = 127.0.0.0/8
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
mail_location = maildir:{root}/mail/%u
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {ssl_port}
    ssl = yes
  }}
}}
"""


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)), None)


@dataclass
class Account:
    user: str
    password: str
    port: int
    ssl_port: int | None
    cert: Path | None

    def client(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        imap.login(self.user, self.password)
        return imap

    def append(self, folder: str, raw: bytes) -> None:
        imap = self.client()
        try:
            typ, data = imap.append(folder, None, None, raw)
            assert typ == "OK", data
        finally:
            imap.logout()

    def messages(self, folder: str) -> list[bytes] | None:
        """The raw messages in `folder` (a missing folder: None)."""
        imap = self.client()
        try:
            typ, data = imap.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return None
            if not int(data[0]):
                return []
            typ, data = imap.fetch("1:*", "(BODY.PEEK[])")
            return [item[1] for item in data if isinstance(item, tuple)]
        finally:
            imap.logout()


class Dovecot:
    def __init__(self, binary: str):
        # Not under pytest's tmp folder: the mail user (nobody, when the tests run as root) must
        # reach its maildir, and pytest's folders are private to their owner.
        self.root = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
        self.root.chmod(0o755)
        self.port, self.ssl_port = free_port(), free_port()
        self.cert = self._certificate()
        if os.geteuid() == 0:  # dovecot runs its logins and mail as some user other than root
            account = pwd.getpwnam("nobody")
        else:  # all of it as ourselves
            account = pwd.getpwuid(os.getuid())
        for folder in ("run", "state", "mail"):
            (self.root / folder).mkdir()
        os.chown(self.root / "mail", account.pw_uid, account.pw_gid)
        self.user, self.password = "bounces", secrets.token_urlsafe(12)
        self.maildir = self.root / "mail" / self.user
        (self.root / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}:{account.pw_uid}:"
                                          f"{account.pw_gid}::{self.maildir}::\n")
        ssl = (f"ssl = yes\nssl_cert = <{self.cert}\nssl_key = <{self.root / 'key.pem'}" if self.cert
               else "ssl = no")
        self.config = self.root / "dovecot.conf"
        self.config.write_text(CONFIG.format(
            root=self.root, ssl=ssl, user=account.pw_name, group=grp.getgrgid(account.pw_gid).gr_name,
            port=self.port, ssl_port=self.ssl_port if self.cert else 0))
        with (self.root / "stderr.log").open("wb") as stderr:  # what it says before its log is open
            self.process = subprocess.Popen([binary, "-F", "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                            stderr=stderr)
        self._wait_for_greeting(deadline=30.0)

    def _certificate(self) -> Path | None:
        """A self-signed certificate for 127.0.0.1 (None without openssl: no IMAPS, no STARTTLS)."""
        if not shutil.which("openssl"):
            return None
        cert = self.root / "cert.pem"
        done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                               "-keyout", str(self.root / "key.pem"), "-out", str(cert),
                               "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                              capture_output=True, timeout=60)
        return cert if done.returncode == 0 else None

    def _wait_for_greeting(self, deadline: float) -> None:
        import time

        end = time.monotonic() + deadline
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                pass
            try:  # wait for the process a moment: it ends if the config is bad
                self.process.wait(timeout=0.05)
                pytest.fail(f"dovecot did not start: {self.log()}")
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > end:
                self.stop()
                pytest.fail(f"dovecot did not answer on 127.0.0.1:{self.port} within {deadline:.0f} s: "
                            f"{self.log()}")

    def log(self) -> str:
        paths = [self.root / "stderr.log", self.root / "dovecot.log"]
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def empty_account(self) -> Account:
        """The user, with an empty mailbox: no messages, no folder but INBOX. (No session is open
        between tests, so the maildir can go; Dovecot makes a new one at the next login.)"""
        shutil.rmtree(self.maildir, ignore_errors=True)
        return Account(self.user, self.password, self.port, self.ssl_port if self.cert else None, self.cert)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
