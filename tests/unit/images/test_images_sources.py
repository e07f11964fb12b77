"""Which image sources may be read (#11 finding 5): addresses, host names resolved once, redirects,
download limits, and host paths confined to images.import_dirs even when a symlink is swapped in."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bootforge.config import ImageSettings
from bootforge.images import sources
from bootforge.images.formats import ImageError
from bootforge.images.sources import SourcePolicy
from bootforge.images.store import download

MiB = 1 << 20


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "not a public address"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_refusals(address: str, why: str | None) -> None:
    found = SourcePolicy().refusal(ipaddress.ip_address(address))
    assert (found is None) if why is None else (found is not None and why in found), found


def test_allowed_networks_open_exactly_themselves() -> None:
    policy = SourcePolicy(ImageSettings(allow_url_networks=["10.20.0.0/24", "127.0.0.2/32"]))
    assert policy.refusal(ipaddress.ip_address("10.20.0.7")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.20.0.7")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) is None
    assert policy.refusal(ipaddress.ip_address("10.20.1.7")) == "a private address"
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) == "a loopback address"


def test_settings_refuse_what_is_no_network_or_relative_dir() -> None:
    with pytest.raises(ValueError, match="not a network"):
        ImageSettings(allow_url_networks=["mirror.example"])
    with pytest.raises(ValueError, match="absolute"):
        ImageSettings(import_dirs=[Path("images")])


@dataclass
class Mirror:
    port: int
    seen: list[tuple[str, str]] = field(default_factory=list)  # (Host header, path)
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    chunked: dict[str, list[bytes]] = field(default_factory=dict)


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    """An HTTP server on 127.0.0.2, standing for an internal image mirror."""
    state = Mirror(0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.seen.append((str(self.headers.get("Host")), self.path))
            if self.path in state.chunked:
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for piece in state.chunked[self.path]:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
                return
            status, headers, body = state.routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def policy(**settings: Any) -> SourcePolicy:
    return SourcePolicy(ImageSettings(**{"allow_url_networks": ["127.0.0.2/32"], **settings}))


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """socket.getaddrinfo as the images code sees it, answering for test names; returns the look-ups."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:  # the connect to an address literal goes through it too
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(sources.socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_is_resolved_once_and_the_checked_address_is_used(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = fake_dns(monkeypatch, {"mirror.test": ["127.0.0.2"]})
    data = os.urandom(MiB)
    mirror.routes["/disk.img"] = (200, {}, data)
    digests = download(
        f"http://mirror.test:{mirror.port}/disk.img", tmp_path / "out", threading.Event(), policy()
    )
    assert digests.size == len(data) and (tmp_path / "out").read_bytes() == data
    assert asked == ["mirror.test"]
    # Connected to 127.0.0.2 (the only address the server listens on), naming the host as the URL does.
    assert mirror.seen == [(f"mirror.test:{mirror.port}", "/disk.img")]


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for the DNS name `name`, its own CA (the client trusts the file itself)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_connects_to_the_checked_address_and_verifies_the_name(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path, "mirror.test")
    data = os.urandom(MiB)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            mirror.seen.append((str(self.headers.get("Host")), self.path))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    fake_dns(monkeypatch, {"mirror.test": ["127.0.0.2"], "other.test": ["127.0.0.2"]})
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    try:
        got = download(f"https://mirror.test:{port}/disk.img", tmp_path / "out", threading.Event(), policy())
        assert got.size == len(data) and mirror.seen == [(f"mirror.test:{port}", "/disk.img")]
        # The same address under a name the certificate does not carry: TLS refuses it.
        with pytest.raises(ImageError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            download(f"https://other.test:{port}/disk.img", tmp_path / "out", threading.Event(), policy())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_name_with_any_refused_address_is_refused(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"mixed.test": ["127.0.0.2", "169.254.169.254"]})
    with pytest.raises(ImageError, match=r"mixed\.test \(169\.254\.169\.254\) is a link-local address"):
        download(f"http://mixed.test:{mirror.port}/x", tmp_path / "out", threading.Event(), policy())
    assert mirror.seen == []


def test_redirects_are_checked_and_capped(mirror: Mirror, tmp_path: Path) -> None:
    base = f"http://127.0.0.2:{mirror.port}"
    for i in range(4):
        mirror.routes[f"/r{i}"] = (302, {"Location": f"/r{i + 1}"}, b"")
    mirror.routes["/r4"] = (200, {}, bytes(MiB))
    mirror.routes["/to-file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    mirror.routes["/to-metadata"] = (307, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    stop = threading.Event()
    assert download(f"{base}/r0", tmp_path / "a", stop, policy(max_redirects=4)).size == MiB
    with pytest.raises(ImageError, match=r"more than 3 redirects \(setting images.max_redirects\)"):
        download(f"{base}/r0", tmp_path / "b", stop, policy(max_redirects=3))
    with pytest.raises(ImageError, match="non-http"):
        download(f"{base}/to-file", tmp_path / "c", stop, policy())
    with pytest.raises(ImageError, match=r"169\.254\.169\.254 is a link-local address"):
        download(f"{base}/to-metadata", tmp_path / "d", stop, policy())


def test_download_size_limit_from_the_header_and_as_bytes_arrive(mirror: Mirror, tmp_path: Path) -> None:
    base = f"http://127.0.0.2:{mirror.port}"
    mirror.routes["/big"] = (200, {}, bytes(2 * MiB))
    mirror.chunked["/chunked"] = [os.urandom(256 << 10) for _ in range(8)]
    small = policy(max_download_bytes=MiB)
    for path in ("/big", "/chunked"):
        with pytest.raises(
            ImageError, match=r"larger than 1048576 bytes \(setting images.max_download_bytes\)"
        ):
            download(f"{base}{path}", tmp_path / "out", threading.Event(), small)


def test_download_deadline(mirror: Mirror, tmp_path: Path) -> None:
    release = threading.Event()
    mirror.chunked["/slow"] = [bytes(4096)]
    original = mirror.chunked["/slow"]

    class Slow(list[bytes]):
        def __iter__(self) -> Iterator[bytes]:
            yield original[0]
            release.wait(10)  # the download's deadline passes meanwhile
            yield original[0]

    mirror.chunked["/slow"] = Slow(original)
    try:
        with pytest.raises(ImageError, match=r"took longer than 0.5 s \(setting images.download_timeout\)"):
            download(
                f"http://127.0.0.2:{mirror.port}/slow",
                tmp_path / "out",
                threading.Event(),
                policy(download_timeout=0.5),
            )
    finally:
        release.set()


def test_symlinks_and_dotdot_lead_nowhere_outside(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "secret.img").write_bytes(bytes(4096))
    (inbox / "link.img").symlink_to(outside / "secret.img")
    (inbox / "dir").symlink_to(outside)
    (inbox / "ok.img").write_bytes(bytes(4096))
    p = SourcePolicy(ImageSettings(import_dirs=[inbox]))
    for source in (inbox / "link.img", inbox / "dir" / "secret.img", inbox / ".." / "outside" / "secret.img"):
        with pytest.raises(ImageError, match=r"refused: bootforge imports files of its host only from"):
            p.open_local(str(source))
    os.close(p.open_local(str(inbox / "ok.img")))
    # The import directory itself may be reached through a symlink.
    (tmp_path / "alias").symlink_to(inbox)
    os.close(SourcePolicy(ImageSettings(import_dirs=[tmp_path / "alias"])).open_local(str(inbox / "ok.img")))


def test_a_symlink_swapped_in_after_the_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the path is checked, then a file (or a directory on the way) is replaced by a symlink
    out before the open. Simulated by making the check see the path as it was."""
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.img").write_bytes(bytes(4096))
    p = SourcePolicy(ImageSettings(import_dirs=[inbox]))
    real_realpath = os.path.realpath

    def as_before_the_swap(path: Any, *args: Any, **kwargs: Any) -> str:
        return str(path) if str(path).startswith(str(inbox)) else real_realpath(path, *args, **kwargs)

    monkeypatch.setattr(sources.os.path, "realpath", as_before_the_swap)
    (inbox / "swapped.img").symlink_to(outside / "secret.img")  # the final component: O_NOFOLLOW
    with pytest.raises(ImageError, match="refused"):
        p.open_local(str(inbox / "swapped.img"))
    (inbox / "sub").rmdir()
    (inbox / "sub").symlink_to(outside)  # a directory on the way: the opened fd's real path
    with pytest.raises(ImageError, match="refused"):
        p.open_local(str(inbox / "sub" / "secret.img"))
