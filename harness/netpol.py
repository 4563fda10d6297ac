"""NetworkPolicy ingress semantics (networking.k8s.io/v1), to ask of rendered policies whether a peer may
reach a pod's port: a pod no policy selects is open; a selected pod accepts what at least one ingress
rule of a selecting policy allows (ports by name or number, peers by ipBlock, namespaceSelector and/or
podSelector)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass
class Peer:
    """Where a connection comes from: a pod (namespace + labels) or, with `ip`, an address outside."""

    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ip: str = ""


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A LabelSelector; an empty one selects everything."""
    selector = selector or {}
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(entry: dict, peer: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in entry:
        if not peer.ip:
            return False
        address = ipaddress.ip_address(peer.ip)
        block = entry["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if peer.ip and not peer.namespace:
        return False
    if "namespaceSelector" in entry:
        namespace_ok = selects(entry["namespaceSelector"], {"kubernetes.io/metadata.name": peer.namespace})
    else:
        namespace_ok = peer.namespace == policy_namespace
    return namespace_ok and ("podSelector" not in entry or selects(entry["podSelector"], peer.labels))


def _port_matches(rule_port: dict, port_name: str, ports: dict[str, int]) -> bool:
    if rule_port.get("protocol", "TCP") != "TCP":
        return False
    wanted = rule_port.get("port")
    return wanted is None or wanted == port_name or wanted == ports.get(port_name)


def admits(
    policies: list[dict],
    pod_labels: dict[str, str],
    ports: dict[str, int],
    port_name: str,
    peer: Peer,
    namespace: str = "app",
) -> bool:
    """Whether `peer` may open a TCP connection to the pod's container port `port_name` (declared in
    `ports`, name -> number) under `policies`, all in `namespace` with the pod."""
    if port_name not in ports:
        return False  # nothing listens under that name
    selecting = [
        p
        for p in policies
        if selects(p["spec"].get("podSelector"), pod_labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            if rule.get("ports") and not any(_port_matches(p, port_name, ports) for p in rule["ports"]):
                continue
            if not rule.get("from") or any(_peer_matches(e, peer, namespace) for e in rule["from"]):
                return True
    return False
