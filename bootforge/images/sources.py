"""Where an image may come from: files in the configured import directories, URLs on allowed networks.

What an import reads, bootforge's HTTP boot server then serves to anyone on the provisioning network
(images/<uuid>.simg, no credentials), so an unconfined source is a way to publish the host's files (the
database with every BMC password) or what an internal service answers on loopback or the cloud's
metadata address. Hence (images.* settings):

- a host path is imported only from `import_dirs`: checked after symlinks and '..' are resolved, opened
  without following a final symlink, and the opened file's real path checked again, so a symlink swapped
  in between the check and the open does not lead out; only regular files. A path outside is refused
  with the same message whether it exists or not.
- a URL is fetched only from a public address or one in `allow_url_networks`. Each hop's host is
  resolved once, every address it resolves to is checked, and the connection goes to the checked
  address (TLS still verifies the host name), so a DNS answer that changes between the check and the
  connect cannot redirect the fetch. Redirects are followed by hand, each hop checked the same way, at
  most `max_redirects`. Proxies from the environment are not used: the address checked must be the one
  connected to (SSL_CERT_FILE / SSL_CERT_DIR still name the CAs https is verified with).
- a failed fetch says the HTTP status (with its standard phrase, not the server's) or the network
  error, never the answer's body or size.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

import httpx

from bootforge.config import ImageSettings
from bootforge.images.formats import ImageError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECTS = (301, 302, 303, 307, 308)
# Waiting for a connection, or for the next bytes of an answer; the whole download has its own deadline.
CONNECT_TIMEOUT, READ_TIMEOUT = 30.0, 300.0


class SourcePolicy:
    """The images.* settings in the form the checks use (real paths, parsed networks)."""

    def __init__(self, settings: ImageSettings | None = None) -> None:
        self.settings = settings or ImageSettings()
        # Resolved once: the configured directory may itself be a symlink (/srv/images -> /data/images).
        self.import_dirs = [os.path.realpath(d) for d in self.settings.import_dirs]
        self.networks: list[IpNetwork] = [
            ipaddress.ip_network(n, strict=False) for n in self.settings.allow_url_networks
        ]

    # --- host files ---------------------------------------------------------------------------------

    def open_local(self, source: str) -> int:
        """A read-only fd of `source`, a regular file inside an import directory; else ImageError."""
        real = os.path.realpath(source)
        if not self._inside(real):
            raise self._outside(source)
        try:
            # O_NOFOLLOW: a final component swapped for a symlink since realpath() fails with ELOOP.
            # O_NONBLOCK: a FIFO put there does not hang the import (refused below as not a file).
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._outside(source) from None
            raise ImageError(f"cannot read {source}: {e.strerror}") from None
        try:
            # A directory on the way swapped for a symlink is followed by open(): where the opened
            # file really is decides.
            if not self._inside(os.readlink(f"/proc/self/fd/{fd}")):
                raise self._outside(source)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"{source} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _inside(self, real: str) -> bool:
        return any(real.startswith(d.rstrip("/") + "/") for d in self.import_dirs)

    def _outside(self, source: str) -> ImageError:
        if not self.import_dirs:
            where = (
                "bootforge imports no files of its host (setting images.import_dirs is empty); "
                "upload the file with `bootforge image add NAME FILE`, or give an http(s) URL"
            )
        else:
            where = (
                "bootforge imports files of its host only from "
                f"{', '.join(self.import_dirs)} (setting images.import_dirs)"
            )
        return ImageError(f"source {source!r} is refused: {where}")

    # --- URLs ---------------------------------------------------------------------------------------

    def refusal(self, address: IpAddress) -> str | None:
        """Why a connection to `address` is refused, or None when it is allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in self.networks):
            return None
        if address.is_loopback:
            return "a loopback address"
        if address.is_link_local:
            return "a link-local address (where cloud metadata services answer)"
        if address.is_unspecified:
            return "the unspecified address"
        if address.is_multicast:
            return "a multicast address"
        if address.is_private:
            return "a private address"
        if not address.is_global:
            return "not a public address"
        return None

    def resolve(self, host: str, port: int, shown: str) -> IpAddress:
        """The address to connect to for `host`: every address it resolves to must be allowed."""
        try:
            literal: IpAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as e:
                raise ImageError(f"downloading {shown} failed: cannot resolve {host}: {e}") from None
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                named = host if literal is not None else f"{host} ({address})"
                raise ImageError(
                    f"downloading {shown} is refused: {named} is {why}; bootforge fetches images only "
                    "from public addresses and the networks in the setting images.allow_url_networks"
                )
        return addresses[0]

    @contextmanager
    def fetch(self, url: str, shown: str) -> Iterator[tuple[httpx.Response, float]]:
        """GET `url` with every hop checked; yields the 200 answer (streamed) and the deadline."""
        deadline = time.monotonic() + self.settings.download_timeout
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT)
        try:
            # trust_env=False: an HTTP(S)_PROXY would connect elsewhere than to the address checked.
            # The CAs still come from SSL_CERT_FILE / SSL_CERT_DIR when set (a mirror's private CA).
            verify = httpx.create_ssl_context(trust_env=True)
            with httpx.Client(
                follow_redirects=False, trust_env=False, timeout=timeout, verify=verify
            ) as client:
                current = httpx.URL(url)
                for _ in range(self.settings.max_redirects + 1):
                    if time.monotonic() > deadline:
                        raise _too_slow(shown, self.settings)
                    response = client.send(self._request(client, current, shown), stream=True)
                    if response.status_code in REDIRECTS and "location" in response.headers:
                        location = response.headers["location"]
                        response.close()
                        current = current.join(location)
                        if current.scheme not in ("http", "https"):
                            raise ImageError(f"downloading {shown} failed: redirected to a non-http(s) URL")
                        continue
                    try:
                        if response.status_code != 200:
                            raise ImageError(f"downloading {shown} failed: {_status(response.status_code)}")
                        yield response, deadline
                    finally:
                        response.close()
                    return
                raise ImageError(
                    f"downloading {shown} failed: more than {self.settings.max_redirects} redirects "
                    "(setting images.max_redirects)"
                )
        except httpx.HTTPError as e:
            # httpx's messages name the network failure (refused, timed out, TLS), never the body.
            raise ImageError(f"downloading {shown} failed: {e or type(e).__name__}") from None

    def _request(self, client: httpx.Client, url: httpx.URL, shown: str) -> httpx.Request:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        address = self.resolve(host.strip("[]"), port, shown)
        headers = {"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity"}
        # TLS is verified against the host name (sni_hostname), while the TCP connection goes to the
        # checked address.
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        return client.build_request(
            "GET", url.copy_with(host=str(address)), headers=headers, extensions=extensions
        )


def _status(code: int) -> str:
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def _too_slow(shown: str, settings: ImageSettings) -> ImageError:
    return ImageError(
        f"downloading {shown} took longer than {settings.download_timeout:g} s "
        "(setting images.download_timeout)"
    )


def check_progress(received: int, deadline: float, shown: str, settings: ImageSettings) -> None:
    """A download within its size and time limits, checked as its bytes arrive."""
    if received > settings.max_download_bytes:
        raise ImageError(
            f"downloading {shown} is refused: it is larger than {settings.max_download_bytes} bytes "
            "(setting images.max_download_bytes)"
        )
    if time.monotonic() > deadline:
        raise _too_slow(shown, settings)


__all__ = ["SourcePolicy", "check_progress"]
