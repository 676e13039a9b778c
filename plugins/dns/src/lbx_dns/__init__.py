"""lbx-dns: a service's backends from DNS.

```yaml
discovery: {source: dns, name: web.service.consul, port: 8080}           # A and AAAA
discovery: {source: dns, name: _http._tcp.web.default.svc.cluster.local, record: srv}
```

- ``record: a``, ``aaaa`` or ``any`` (both, the default): every address of ``name`` is a
  backend on ``port``, re-resolved when the records' TTL runs out (within ``min_ttl`` and
  ``max_ttl``).
- ``record: srv``: every SRV record of ``name`` with the lowest priority is a backend (its
  target's addresses, its port, its weight; weight 0 counts as 1), as nginx uses SRV records
  (the records of higher priorities are backups nginx uses only when the primary group is
  down; lbx does not use them: the lowest group is the set); the targets' addresses come from
  the answer's additional section or from A/AAAA queries.

Queries go to ``nameservers`` (``ip`` or ``ip:port``) or to the system's resolvers
(/etc/resolv.conf). An answer that fails keeps the last set (lbx logs why) and is tried again
after ``update_frequency`` seconds (5 by default). See docs/discovery.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from lbx import (
    MAX_WEIGHT,
    Backend,
    Config,
    Discovered,
    DiscoveryError,
    Field,
    ServiceConfig,
    hookimpl,
)

SOURCE = "dns"
RECORDS = ("any", "a", "aaaa", "srv")
DEFAULT_RETRY = 5.0


def _check_nameservers(value: Any) -> str | None:
    for item in value:
        try:
            _nameserver(item)
        except ValueError as exc:
            return str(exc)
    return None


KEYS = {
    "name": Field("str", None, "the name to resolve (an SRV name with record: srv)"),
    "record": Field(
        "str",
        "any",
        "a, aaaa, any (A and AAAA) or srv",
        check=lambda v: None if v in RECORDS else f"must be one of {', '.join(RECORDS)}",
    ),
    "port": Field("int", None, "the backends' port (A/AAAA; SRV records carry their own)"),
    "nameservers": Field(
        "str_list",
        None,
        "ip or ip:port of the DNS servers (default: the system's)",
        check=_check_nameservers,
    ),
    "min_ttl": Field("number", 1, "re-resolve no sooner than this, whatever the TTL", minimum=0),
    "max_ttl": Field("number", 300, "re-resolve at least this often, whatever the TTL", minimum=0),
    "timeout": Field("number", 2, "seconds one resolution may take", minimum=0.001),
}


def _nameserver(text: str) -> tuple[str, int]:
    import ipaddress

    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 53
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            raise ValueError(f"{text!r}: expected ip or ip:port")
        port = int(number)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: a name server is an IP address (ip or ip:port)") from None
    return host, port


class DnsError(DiscoveryError, LookupError):
    """A name without the records the source asks for, or a name server that failed."""


class DnsDiscovery:
    """The backends one DNS name stands for."""

    def __init__(
        self,
        name: str,
        record: str,
        port: int | None,
        nameservers: list[str] | None,
        min_ttl: float,
        max_ttl: float,
        timeout: float,
    ) -> None:
        self.name = name
        self.record = record
        self.port = port
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            servers = [_nameserver(item) for item in nameservers]
            self.resolver.nameservers = [host for host, _ in servers]
            self.resolver.nameserver_ports = {host: port for host, port in servers}
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.lifetime = timeout
        self.resolver.cache = None  # the TTL decides when to ask again, not a cache

    async def discover(self) -> Discovered:
        if self.record == "srv":
            backends, ttl = await self._srv()
        else:
            assert self.port is not None
            addresses, ttl = await self._addresses(self.name, self.record)
            backends = [Backend(address, self.port) for address in addresses]
        refresh = min(max(ttl, self.min_ttl), self.max_ttl)
        return Discovered(tuple(backends), refresh=refresh)

    async def _addresses(
        self, name: str, record: str, known: dict[str, list[str]] | None = None
    ) -> tuple[list[str], float]:
        """Every address of ``name`` and the smallest TTL; raises when there is none."""
        if known is not None and name in known:
            return known[name], self.max_ttl
        kinds = ["A", "AAAA"] if record == "any" else [record.upper()]
        found: list[str] = []
        ttls: list[float] = []
        failures: list[str] = []
        for kind in kinds:
            try:
                answer = await self.resolver.resolve(name, kind, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
                failures.append(f"{kind}: {exc}")
                continue
            except dns.exception.DNSException as exc:
                raise DnsError(f"{name} {kind}: {exc}") from None
            assert answer.rrset is not None
            ttls.append(answer.rrset.ttl)
            found += [str(item.address) for item in answer]
        if not found:
            raise DnsError(f"no address for {name}: {'; '.join(failures)}")
        return found, min(ttls)

    async def _srv(self) -> tuple[list[Backend], float]:
        try:
            answer = await self.resolver.resolve(self.name, "SRV", search=False)
        except dns.exception.DNSException as exc:
            raise DnsError(f"{self.name} SRV: {exc}") from None
        assert answer.rrset is not None
        records = list(answer)
        lowest = min(record.priority for record in records)
        additional = _additional_addresses(answer.response.additional)
        backends: list[Backend] = []
        ttls = [float(answer.rrset.ttl)]
        group = [record for record in records if record.priority == lowest]
        # SRV weights go up to 65535; lbx's up to MAX_WEIGHT: scaled, keeping their ratios.
        top = max(record.weight for record in group)
        scale = MAX_WEIGHT / top if top > MAX_WEIGHT else 1.0
        for record in group:
            target = record.target.to_text()
            addresses, ttl = await self._addresses(target, "any", additional)
            ttls.append(ttl)
            weight = max(1, round(record.weight * scale))
            backends += [Backend(a, record.port, weight) for a in addresses]
        return backends, min(ttls)


def _additional_addresses(rrsets: Iterable[Any]) -> dict[str, list[str]]:
    """The A/AAAA records an SRV answer carries for its targets, by target name."""
    found: dict[str, list[str]] = {}
    for rrset in rrsets:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            found.setdefault(rrset.name.to_text(), []).extend(str(r.address) for r in rrset)
    return found


def build(options: dict[str, Any], service: ServiceConfig, config: Config) -> DnsDiscovery:
    if not options["name"]:
        raise ValueError("the dns source needs a name")
    if options["record"] == "srv":
        if options["port"] is not None:
            raise ValueError("record: srv takes the port from the SRV records; remove port")
    elif options["port"] is None or not 0 < options["port"] < 65536:
        raise ValueError(f"record: {options['record']} needs the backends' port (1 to 65535)")
    if options["min_ttl"] > options["max_ttl"]:
        raise ValueError("min_ttl must not be greater than max_ttl")
    return DnsDiscovery(
        options["name"],
        options["record"],
        options["port"],
        options["nameservers"],
        float(options["min_ttl"]),
        float(options["max_ttl"]),
        float(options["timeout"]),
    )


@hookimpl
def register_discovery(register: Callable[..., None]) -> None:
    register(SOURCE, build, KEYS, DEFAULT_RETRY)
