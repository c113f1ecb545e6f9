"""`cuelog serve` settings: file < env < flags, and invalid values named by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cuelog.http._config import ConfigError, cluster_config, load_settings


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cuelog.toml"
    path.write_text(text)
    return path


def test_flags_beat_env_and_env_beats_the_file(tmp_path: Path) -> None:
    """Each key takes its value from the highest layer that sets it: flags, then env, then file."""
    config = _toml(
        tmp_path,
        '[server]\nport = 1111\nhost = "127.0.0.2"\nrequest_timeout = 5.0\n'
        '[log]\nsync = false\ndata_dir = "/srv/from-file"\n'
        '[model]\nname = "file-model"\n',
    )
    settings = load_settings(
        config,
        environ={
            "CUELOG_SERVER_PORT": "2222",
            "CUELOG_SERVER_HOST": "127.0.0.3",
            "CUELOG_LOG_SYNC": "true",
            "CUELOG_SERVER_ENABLED_TOOLS": "clock, files",
        },
        flags={"server": {"port": 3333, "host": None}, "log": {"data_dir": None}},
    )
    assert settings.server.port == 3333  # flag
    assert settings.server.host == "127.0.0.3"  # env (the flag was not given)
    assert settings.log.sync is True  # env
    assert settings.server.enabled_tools == ["clock", "files"]  # env list
    assert settings.server.request_timeout == 5.0  # file
    assert settings.log.data_dir == Path("/srv/from-file")  # file path
    assert settings.model.name == "file-model"  # file
    assert settings.server.max_body_bytes == 1 << 20  # default


def test_defaults_without_file_env_or_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing set, the documented defaults apply (and ./cuelog.toml is not required)."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8088)
    assert settings.server.api_key is None
    assert settings.log.data_dir == Path("data") and settings.log.sync is True
    assert (settings.model.provider, settings.model.name) == ("echo", "echo-1")
    assert settings.agents == {}


def test_cuelog_toml_in_the_working_dir_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config, ./cuelog.toml is used when it exists."""
    _toml(tmp_path, "[server]\nport = 4444\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, environ={}).server.port == 4444


def test_agent_tables_are_seeded_specs(tmp_path: Path) -> None:
    """[agents.<id>] tables become AgentSpecs keyed by id."""
    config = _toml(
        tmp_path,
        '[agents.support]\nsystem_prompt = "Be brief."\ntools = ["clock"]\nmax_steps = 3\n',
    )
    agents = load_settings(config, environ={}).agents
    assert list(agents) == ["support"]
    assert agents["support"].system_prompt == "Be brief."
    assert agents["support"].tools == ["clock"] and agents["support"].max_steps == 3


@pytest.mark.parametrize(
    ("text", "environ", "key"),
    [
        pytest.param('[server]\nport = "x"\n', {}, "server.port", id="toml-type"),
        pytest.param("", {"CUELOG_SERVER_PORT": "eighty"}, "server.port", id="env-int"),
        pytest.param("", {"CUELOG_SERVER_PORT": "70000"}, "server.port", id="port-range"),
        pytest.param("", {"CUELOG_LOG_SYNC": "maybe"}, "log.sync", id="env-bool"),
        pytest.param("", {"CUELOG_SERVER_API_KEY": "short"}, "server.api_key", id="short-key"),
        pytest.param(
            "", {"CUELOG_SERVER_REQUEST_TIMEOUT": "soon"}, "server.request_timeout", id="env-float"
        ),
        pytest.param(
            "[server]\nrequest_timeout = -1\n", {}, "server.request_timeout", id="negative-timeout"
        ),
        pytest.param("[server]\nmax_body_bytes = 10\n", {}, "server.max_body_bytes", id="tiny"),
        pytest.param("[server]\nbogus = 1\n", {}, "server.bogus", id="unknown-key"),
        pytest.param("[logs]\n", {}, "logs", id="unknown-section"),
        pytest.param('[model]\nprovider = "magic"\n', {}, "model.provider", id="provider"),
        pytest.param('[model]\nprovider = "openai"\n', {}, "model.base_url", id="no-base-url"),
        pytest.param('[agents.bot]\nmax_steps = "a"\n', {}, "agents.bot.max_steps", id="agent"),
        pytest.param(
            '[agents.bot]\napproval = "maybe"\n', {}, "agents.bot.approval", id="agent-enum"
        ),
        pytest.param("[agents.bot]\ncolour = 1\n", {}, "agents.bot.colour", id="agent-unknown"),
        pytest.param("", {"CUELOG_LOG_DATA_DIR": ""}, "log.data_dir", id="empty-dir"),
        pytest.param(
            "", {"CUELOG_LOG_CONTENT_THRESHOLD": "100"}, "log.content_threshold", id="threshold-low"
        ),
        pytest.param(
            "[log]\ncontent_threshold = 600000\n",
            {},
            "log.content_threshold",
            id="threshold-over-half-the-event-limit",
        ),
        pytest.param('[prices."gpt-4o"]\ninput = -1\n', {}, "prices.gpt-4o.input", id="price-neg"),
        pytest.param('[prices."gpt-4o"]\nouput = 1\n', {}, "prices.gpt-4o.ouput", id="price-typo"),
        pytest.param(
            '[prices."gpt-4o"]\noutput = "a"\n', {}, "prices.gpt-4o.output", id="price-str"
        ),
        pytest.param("prices = 3\n", {}, "prices", id="prices-not-a-table"),
    ],
)
def test_invalid_value_raises_config_error_naming_the_key(
    tmp_path: Path, text: str, environ: dict[str, str], key: str
) -> None:
    """An invalid setting raises one ConfigError whose message starts with the key."""
    with pytest.raises(ConfigError) as caught:
        load_settings(_toml(tmp_path, text), environ=environ)
    message = str(caught.value)
    assert message.startswith(f"{key}: "), message
    assert "\n" not in message


def test_bad_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    """Unparsable TOML and a missing --config file are ConfigErrors naming the file."""
    broken = _toml(tmp_path, "[server\nport = ")
    with pytest.raises(ConfigError, match=r"cuelog\.toml: not valid TOML"):
        load_settings(broken, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_the_tools_section_is_read_and_checked(tmp_path: Path) -> None:
    """`[tools]` keys are read from the file and env; bad values are named by key."""
    config = _toml(
        tmp_path,
        '[tools]\nfiles_root = "/srv/sandbox"\nfiles_max_bytes = 2048\ninvoke_approval = "auto"\n',
    )
    settings = load_settings(config, environ={"CUELOG_TOOLS_FILES_QUOTA_BYTES": "4096"})
    assert settings.tools.files_root == Path("/srv/sandbox")
    assert settings.tools.files_max_bytes == 2048
    assert settings.tools.files_quota_bytes == 4096
    assert settings.tools.invoke_approval == "auto"
    with pytest.raises(ConfigError, match=r"tools\.invoke_approval"):
        load_settings(None, environ={"CUELOG_TOOLS_INVOKE_APPROVAL": "sometimes"})
    with pytest.raises(ConfigError, match=r"tools\.files_quota_bytes"):
        load_settings(None, environ={"CUELOG_TOOLS_FILES_QUOTA_BYTES": "1"})


def test_prices_are_read_per_model(tmp_path: Path) -> None:
    """`[prices.<model>]` gives input and output prices per million tokens; an int is a price."""
    settings = load_settings(
        _toml(tmp_path, '[prices."gpt-4o"]\ninput = 2.5\noutput = 10\n[prices.echo-1]\n'),
        environ={},
    )
    assert {m: (p.input, p.output) for m, p in settings.prices.items()} == {
        "gpt-4o": (2.5, 10.0),
        "echo-1": (0.0, 0.0),
    }


def test_the_cluster_section_needs_postgresql_and_a_sane_lease(tmp_path: Path) -> None:
    """`cluster.node` turns cluster mode on for a PostgreSQL log only, with a valid node name and
    a renew interval below the TTL; the advertised address defaults to the bound one."""
    pg = {"CUELOG_LOG_URL": "postgresql://db/cuelog"}
    settings = load_settings(None, environ={**pg, "CUELOG_SERVER_PORT": "9000"})
    assert cluster_config(settings) is None
    settings = load_settings(
        None,
        environ={**pg, "CUELOG_CLUSTER_LEASE_TTL": "4", "CUELOG_CLUSTER_RENEW_INTERVAL": "1"},
        flags={"cluster": {"node": "n1"}},
    )
    cluster = cluster_config(settings)
    assert cluster is not None
    assert (cluster.node, cluster.lease_ttl, cluster.renew_interval) == ("n1", 4.0, 1.0)
    assert cluster.advertise == "http://127.0.0.1:8088"
    with pytest.raises(ConfigError, match=r"^cluster.node: cluster mode needs the PostgreSQL"):
        load_settings(None, environ={}, flags={"cluster": {"node": "n1"}})
    with pytest.raises(ConfigError, match=r"^cluster: node name 'a b'"):
        load_settings(None, environ={**pg, "CUELOG_CLUSTER_NODE": "a b"})
    with pytest.raises(ConfigError, match=r"^cluster: renew_interval must be"):
        load_settings(
            _toml(tmp_path, '[cluster]\nnode = "n1"\nlease_ttl = 2.0\nrenew_interval = 2.0\n'),
            environ=pg,
        )
