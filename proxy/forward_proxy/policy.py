"""What the forward proxy may do: which hosts it intercepts, tunnels blind or refuses, and
where it may listen, and which requests would loop back to rrproxy itself. Plain functions
over the settings and a request's addresses; the callers do the I/O.

Loops are stopped twice. A target that spells rrproxy's own address (any loopback or
unspecified address, the configured host or the arrival address, on the listening port) is
refused before anything is sent. What that cannot see (a chain of proxies, another
interface of the machine, a name that resolves back here) is caught by the `Rrproxy-Hops`
header: each rrproxy that forwards a request appends its id, and a request that arrives
with this rrproxy's id in it has come back (508 Loop Detected).
"""

from __future__ import annotations

from enum import StrEnum

from aiohttp import web

from proxy.config import Mode, Settings
from proxy.core.hosts import Target, host_matches, is_loopback, is_own_address, url_target
from proxy.errors import ConfigError, LoopDetected, Refused

HOPS = "Rrproxy-Hops"
FORWARD_HOPS = web.RequestKey("rrproxy_hops", str)
"""The `Rrproxy-Hops` value a request is forwarded with (sent, never recorded)."""
MAX_HOPS = 8
"""A request that went through this many rrproxies is refused, whoever they are."""

TARGET = web.RequestKey("rrproxy_target", Target)
"""The origin a forward-proxied request goes to (set for CONNECT tunnels and absolute form)."""


class Action(StrEnum):
    INTERCEPT = "intercept"  # through the pipeline: recorded and replayed (TLS decrypted)
    PASSTHROUGH = "passthrough"  # not recorded: a CONNECT is tunnelled blind, not decrypted


def forward_action(target: Target, settings: Settings) -> Action:
    """The action for a forward-proxied request to `target`, or `Refused` saying why."""
    if not is_loopback(settings.host) and not settings.allow_hosts:
        raise Refused(
            f"rrproxy listens on {settings.host}, beyond loopback: it forwards only to the "
            "hosts in allow_hosts, and none are set"
        )
    passthrough = host_matches(target.host, settings.passthrough_hosts, target.port)
    if settings.allow_hosts and not (
        passthrough or host_matches(target.host, settings.allow_hosts, target.port)
    ):
        raise Refused(
            f"{target.host} is not in allow_hosts ({', '.join(settings.allow_hosts)}) "
            f"for port {target.port}"
        )
    if not passthrough:
        return Action.INTERCEPT
    if settings.mode is Mode.REPLAY:
        raise Refused(
            f"{target.host} is a pass-through host, and replay mode never contacts the network"
        )
    return Action.PASSTHROUGH


def check_listen(settings: Settings) -> str | None:
    """Refuse (`ConfigError`) to listen beyond loopback unless `allow_remote` is set; when it
    is, the warning to log."""
    if is_loopback(settings.host):
        return None
    if not settings.allow_remote:
        raise ConfigError(
            f"host = {settings.host!r} listens beyond loopback: anyone who can reach it can "
            "use your upstream credentials and read your recordings; pass --allow-remote "
            "(allow_remote = true) if you mean it, and set allow_hosts"
        )
    if not settings.allow_hosts:
        return (
            f"listening on {settings.host} (allow_remote); forward-proxy requests are "
            "refused until allow_hosts lists the hosts they may reach"
        )
    return f"listening on {settings.host} (allow_remote): reachable from the network"


def refuse_loop(request: web.BaseRequest, settings: Settings, target: Target, what: str) -> None:
    """Raise `Refused` when `target` is the address `request` arrived on (rrproxy itself)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    local = (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else None
    if is_own_address(target.host, target.port, local, settings.host):
        raise Refused(
            f"{what} is rrproxy's own address ({target.authority}): refused, it would loop; "
            "point the client or the upstream/routes settings at the real service"
        )


def check_loops(settings: Settings) -> None:
    """Refuse (`ConfigError`) an `upstream` or route that is rrproxy's own listening address:
    every request would come back to it, until the file descriptors run out."""
    if settings.port == 0:  # a port chosen at start: the first request finds out
        return
    listening = (settings.host, settings.port)
    named = [("upstream", settings.upstream)]
    named += [(f"route {prefix!r}", url) for prefix, url in settings.routes]
    for name, url in named:
        target = url_target(url)
        if is_own_address(target.host, target.port, listening, settings.host):
            raise ConfigError(
                f"{name} = {url!r} is "
                f"rrproxy's own address (it listens on {settings.host}:{settings.port}): every "
                "request would come back to it; point it at the real service"
            )


def next_hops(incoming: str | None, settings: Settings) -> str:
    """The `Rrproxy-Hops` value to forward: the ids of the rrproxies the request went
    through, then this one's; `LoopDetected` when this one is among them (it came back)."""
    ids = [i.strip() for i in (incoming or "").split(",") if i.strip()]
    if settings.hop_id in ids:
        raise LoopDetected(
            f"this request has come back to the rrproxy that forwarded it ({HOPS}: "
            f"{', '.join(ids)}): its upstream leads back to itself; point upstream (or routes, "
            "or the upstream proxy's settings) at the real service"
        )
    if len(ids) >= MAX_HOPS:
        raise LoopDetected(
            f"this request has been through {len(ids)} rrproxies ({HOPS}); refused, "
            "it is probably going round a loop of proxies"
        )
    return ", ".join([*ids, settings.hop_id])
