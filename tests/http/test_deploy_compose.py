"""The deployment example in docs/deploy (compose file, nginx config, Dockerfile) is consistent
with cuelog: each node's command line is one `cuelog serve` accepts, with its environment it makes
a valid cluster node that may bind every interface, node names and advertised addresses are
distinct and reachable by service name, and nginx balances over exactly those nodes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import yaml  # type: ignore[import-untyped]

from cuelog.cli import main
from cuelog.http._config import cluster_config, load_settings
from cuelog.http._server import check_settings

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"
_VARIABLE = re.compile(r"\$\{(\w+)(?::\?[^}]*)?\}")


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def node_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = spec["services"]
    return {
        name: s for name, s in services.items() if s.get("command", [])[:2] == ["cuelog", "serve"]
    }


def test_each_node_is_a_cluster_node_cuelog_serve_accepts() -> None:
    spec = compose()
    nodes = node_services(spec)
    assert len(nodes) == 3
    serve = main.get_command(click.Context(main), "serve")
    assert serve is not None
    seen: dict[str, str] = {}
    for name, service in nodes.items():
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["stop_signal"] == "SIGTERM"
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        params = serve.make_context("serve", list(service["command"][2:])).params
        environ = {
            key: _VARIABLE.sub("a-deployment-admin-key-0123456789", str(value))
            for key, value in service["environment"].items()
        }
        settings = load_settings(
            None,
            environ=environ,
            flags={
                "server": {
                    "host": params["host"],
                    "port": params["port"],
                    "api_key": params["api_key"],
                },
                "log": {"data_dir": params["data_dir"], "url": params["log_url"]},
                "cluster": {"node": params["node"]},
            },
        )
        check_settings(settings)  # binds 0.0.0.0, so it must have an API key
        assert settings.server.api_key == "a-deployment-admin-key-0123456789"
        assert settings.log.url is not None and settings.log.url.startswith("postgresql://")
        assert "@postgres:5432/" in settings.log.url
        cluster = cluster_config(settings)
        assert cluster is not None
        assert cluster.advertise == f"http://{name}:{settings.server.port}"
        assert cluster.renew_interval < cluster.lease_ttl
        seen[cluster.node] = cluster.advertise
    assert len(seen) == 3  # distinct node names


def test_nginx_balances_over_exactly_the_nodes() -> None:
    spec = compose()
    nodes = node_services(spec)
    conf = (DEPLOY / "nginx.conf").read_text()
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.MULTILINE)
    ports = {
        name: service["command"][service["command"].index("--port") + 1]
        for name, service in nodes.items()
    }
    assert sorted(upstream) == sorted(ports.items())
    assert "proxy_buffering off;" in conf  # SSE passes through as it comes
    lb = spec["services"]["lb"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert sorted(lb["depends_on"]) == sorted(nodes)
    listen = re.search(r"listen\s+(\d+);", conf)
    assert listen is not None and lb["ports"] == [f"127.0.0.1:8088:{listen.group(1)}"]
