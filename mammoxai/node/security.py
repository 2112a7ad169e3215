"""DICOM TLS (PS3.15 Annex B, BCP 195 profile) contexts and source-address filtering."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable

from ..config import TlsSettings
from ..errors import MammoxaiError


class TlsConfigError(MammoxaiError):
    """A certificate, key or CA file cannot be loaded."""


def _load(context: ssl.SSLContext, tls: TlsSettings) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.ca_file is not None:
            context.load_verify_locations(cafile=str(tls.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"TLS files {tls.cert_file}, {tls.key_file}, {tls.ca_file}: {exc}") from None
    return context


def server_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The SCP's TLS context (``None`` when ``tls.enabled`` is false).

    The server presents ``cert_file``/``key_file``; with
    ``require_client_cert`` it demands a client certificate signed by
    ``ca_file`` (TLS mutual authentication).
    """
    if not tls.enabled:
        return None
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return context


def client_context(tls: TlsSettings, server_hostname_check: bool = False) -> ssl.SSLContext | None:
    """An SCU's TLS context (``None`` when ``tls.enabled`` is false).

    The peer certificate is verified against ``ca_file`` when given (host name
    checking off by default: DICOM peers are configured by address and AE
    title); ``cert_file``/``key_file`` are presented as the client certificate.
    """
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _load(context, tls)
    if tls.ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = server_hostname_check
    return context


class AddressFilter:
    """Allowed source addresses: IPs or CIDR networks; empty means any address."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(a, strict=False) for a in allowed]

    def allows(self, address: str) -> bool:
        """True when ``address`` is in one of the allowed networks (or no network is configured)."""
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)
