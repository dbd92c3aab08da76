"""The serve configuration's operating keys: [retention], [health], connect_timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockerconnect import HealthPolicy, RetentionPolicy
from dockerconnect._cli import build_resolver, parse_serve
from dockerconnect._cli._config import ConfigError


def test_retention_health_and_connect_timeout_reach_the_resolver(tmp_path: Path) -> None:
    (tmp_path / "serve.toml").write_text(
        f"""
[store]
path = "{tmp_path / "store"}"

[retention]
max_bytes = 1000000
max_idle = 3600
interval = 60

[health]
failures = 5

[[connectors]]
url = "http://127.0.0.1:1"
connect_timeout = 1.5
"""
    )
    config = parse_serve(["--config", str(tmp_path / "serve.toml")])
    resolver = build_resolver(config)
    assert resolver.retention == RetentionPolicy(max_bytes=1000000, max_idle=3600, interval=60)
    assert config.health == HealthPolicy(failures=5)
    assert config.connectors[0].connect_timeout == 1.5


@pytest.mark.parametrize("value", ["0", "-1", '"soon"'])
def test_a_bad_connect_timeout_is_one_line_naming_the_key(tmp_path: Path, value: str) -> None:
    (tmp_path / "serve.toml").write_text(
        f'[[connectors]]\nurl = "http://127.0.0.1:1"\nconnect_timeout = {value}\n'
    )
    with pytest.raises(ConfigError, match=r"^connectors\[0\]\.connect_timeout: "):
        parse_serve(["--config", str(tmp_path / "serve.toml")])
