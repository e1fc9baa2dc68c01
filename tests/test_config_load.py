"""The config file loader: exact one-line errors naming where, no secret in any of them, and the runtime
objects a valid file turns into."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from exporter.cli.common import web_config_problems
from exporter.config import (
    DEFAULT_STATUS_VOCABULARY,
    ApiConfig,
    Config,
    CredentialsConfig,
    DiscoveryConfig,
    LimitsConfig,
    RefreshConfig,
    RetryConfig,
    ShardingConfig,
    StatusConfig,
    WatchedImage,
    WebConfig,
)
from exporter.config.errors import MAX_COLLECTED
from exporter.config.load import (
    ConfigError,
    config_json_schema,
    config_warnings,
    interpolate,
    load_config,
    parse_listen_address,
)
from exporter.config.schema import ImageId, Items

SECRET = "TopSecretAccessKeySecret0123456789"
TOKEN = "CAIS-TopSecretStsToken-abcdefghijklmnop"
REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def errors_of(path: str | None, overrides: dict[str, object] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    for line in info.value.errors:
        assert "\n" not in line
        assert SECRET not in line
        assert TOKEN not in line
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# Each case: the YAML (with a secret in it wherever it makes sense) and the exact lines, "{p}" for the path.
CASES: list[tuple[str, str, list[str]]] = [
    (
        "unknown top-level key, with a suggestion",
        "imagez: []\n",
        ["{p}: imagez: unknown key (did you mean 'images'?)"],
    ),
    (
        "unknown key in every section",
        f"""
        api: {{regon_id: cn-hangzhou, retry: {{attempts: 3}}}}
        credentials: {{type: access_key, access_key_id: LTAI, access_key_secret: {SECRET}, secret: {SECRET}}}
        images: [{{id: m-1, regions: [cn-beijing]}}]
        discovery: {{enable: true}}
        refresh: {{interval: 5}}
        status: {{healthy_statuses: [Available]}}
        sharding: {{shard_count: 2}}
        web: {{listen: ":1"}}
        """,
        [
            "{p}: api.regon_id: unknown key (did you mean 'region_id'?)",
            "{p}: api.retry.attempts: unknown key (did you mean 'max_attempts'?)",
            "{p}: credentials.secret: unknown key",
            "{p}: images[0].regions: unknown key",
            "{p}: discovery.enable: unknown key (did you mean 'enabled'?)",
            "{p}: refresh.interval: unknown key (did you mean 'interval_seconds'?)",
            "{p}: status.healthy_statuses: unknown key (did you mean 'healthy'?)",
            "{p}: sharding.shard_count: unknown key (did you mean 'shard'?)",
            "{p}: web.listen: unknown key (did you mean 'listen_address'?)",
        ],
    ),
    (
        "wrong types",
        """
        api: {max_concurrency: many, qps: fast, retry: []}
        images: {id: m-1}
        discovery: {enabled: maybe, ids: m-1}
        web: {telemetry_path: 5}
        """,
        [
            "{p}: api.max_concurrency: must be an integer",
            "{p}: api.qps: must be a number",
            "{p}: api.retry: must be a mapping",
            "{p}: images: must be a list",
            "{p}: discovery.enabled: must be true or false",
            "{p}: discovery.ids: must be a list",
            "{p}: web.telemetry_path: must be a string",
        ],
    ),
    (
        "numeric bounds",
        """
        api: {timeout_seconds: 0, max_concurrency: 0, qps: -1, retry: {max_attempts: 0}}
        refresh: {interval_seconds: -5, jitter_ratio: 1, image_timeout_seconds: 0}
        discovery: {page_size: 101}
        sharding: {shards: 0, shard: -1}
        """,
        [
            "{p}: api.timeout_seconds: must be at least 0.1",
            "{p}: api.max_concurrency: must be at least 1",
            "{p}: api.qps: must be at least 0",
            "{p}: api.retry.max_attempts: must be at least 1",
            "{p}: refresh.interval_seconds: must be at least 1",
            "{p}: refresh.jitter_ratio: must be less than 1",
            "{p}: refresh.image_timeout_seconds: must be at least 0.1",
            "{p}: discovery.page_size: must be at most 100",
            "{p}: sharding.shards: must be at least 1",
            "{p}: sharding.shard: must be at least 0",
        ],
    ),
    (
        "numeric upper bounds, tiny and non-finite values",
        """
        api:
          timeout_seconds: .inf
          connect_timeout_seconds: .nan
          max_concurrency: 1001
          qps: 1.0e-300
          max_response_bytes: 1073741825
          retry:
            {max_attempts: 21, base_delay_seconds: 61, max_delay_seconds: 601, max_elapsed_seconds: -.inf}
        refresh: {interval_seconds: 5.0e-324, jitter_ratio: .nan, image_timeout_seconds: 3601}
        discovery: {max_pages: 0}
        sharding: {shards: 1001, shard: 1000}
        limits: {max_error_codes: 101, max_regions_per_image: 0}
        """,
        [
            "{p}: api.timeout_seconds: must be a finite number",
            "{p}: api.connect_timeout_seconds: must be a finite number",
            "{p}: api.max_concurrency: must be at most 1000",
            "{p}: api.qps: must be 0 (no budget) or at least 0.01",
            "{p}: api.max_response_bytes: must be at most 1073741824",
            "{p}: api.retry.max_attempts: must be at most 20",
            "{p}: api.retry.base_delay_seconds: must be at most 60",
            "{p}: api.retry.max_delay_seconds: must be at most 600",
            "{p}: api.retry.max_elapsed_seconds: must be a finite number",
            "{p}: refresh.interval_seconds: must be at least 1",
            "{p}: refresh.jitter_ratio: must be a finite number",
            "{p}: refresh.image_timeout_seconds: must be at most 3600",
            "{p}: discovery.max_pages: must be at least 1",
            "{p}: sharding.shards: must be at most 1000",
            "{p}: sharding.shard: must be at most 999",
            "{p}: limits.max_error_codes: must be at most 100",
            "{p}: limits.max_regions_per_image: must be at least 1",
        ],
    ),
    (
        "integers of thousands of digits, as YAML integers and as strings",
        f"""
        api: {{max_concurrency: {"9" * 5000}, timeout_seconds: "{"9" * 5000}", qps: -{"1" * 4400}}}
        web: {{listen_address: "127.0.0.1:{"9" * 5000}"}}
        limits: {{max_error_codes: "{"9" * 5000}"}}
        """,
        [
            "{p}: api.max_concurrency: number too large (5000 characters)",
            "{p}: api.timeout_seconds: must be a finite number",
            "{p}: api.qps: number too large (4401 characters)",
            "{p}: web.listen_address: must be at most 300 characters",
            "{p}: limits.max_error_codes: must be an integer (too many digits)",
        ],
    ),
    (
        "more regions than limits.max_regions_per_image",
        """
        limits: {max_regions_per_image: 2}
        images:
          - {id: m-1, additional_regions: [cn-beijing, cn-shanghai]}
          - {id: m-2, additional_regions: [cn-beijing, cn-shanghai, cn-hangzhou]}
        discovery: {additional_regions: [cn-beijing, cn-shanghai, cn-hangzhou]}
        """,
        [
            "{p}: images[1].additional_regions: must have at most 2 item(s) (limits.max_regions_per_image)",
            "{p}: discovery.additional_regions: must have at most 2 item(s) (limits.max_regions_per_image)",
        ],
    ),
    (
        "control characters, long strings and odd keys are named, never printed",
        f"""
        api: {{region_id: "cn-\\x1b[31mhangzhou", endpoint: "{"h" * 3000}"}}
        images: [{{id: "m-{"x" * 200}"}}, {{id: "m\\u0085"}}]
        status: {{vocabulary: ["a\\nb"]}}
        "bad\\nkey": 1
        {"k" * 100}: 2
        """,
        [
            "{p}: api.region_id: must not contain control or bidi characters",
            "{p}: api.endpoint: must be at most 2048 characters",
            "{p}: images[0].id: must be at most 128 characters",
            "{p}: images[1].id: must not contain control or bidi characters",
            "{p}: status.vocabulary[0]: must not contain control or bidi characters",
            "{p}: <unprintable or long key>: unknown key",
            "{p}: <unprintable or long key>: unknown key",
        ],
    ),
    (
        "shard out of range, retry delays inverted",
        """
        sharding: {shards: 3, shard: 3}
        api: {retry: {base_delay_seconds: 2, max_delay_seconds: 1}}
        """,
        [
            "{p}: sharding.shard: must be less than sharding.shards (3)",
            "{p}: api.retry.max_delay_seconds: must be at least retry.base_delay_seconds",
        ],
    ),
    (
        "invalid region ids",
        """
        api: {region_id: CN-Hangzhou}
        images: [{id: m-1, additional_regions: [cn-beijing, hangzhou, cn_shanghai]}]
        discovery: {additional_regions: [c-x]}
        """,
        [
            "{p}: api.region_id: invalid region id 'CN-Hangzhou' (expected lower-case like 'cn-hangzhou')",
            "{p}: images[0].additional_regions[1]: invalid region id 'hangzhou' (expected lower-case like"
            " 'cn-hangzhou')",
            "{p}: images[0].additional_regions[2]: invalid region id 'cn_shanghai' (expected lower-case like"
            " 'cn-hangzhou')",
            "{p}: discovery.additional_regions[0]: invalid region id 'c-x' (expected lower-case like"
            " 'cn-hangzhou')",
        ],
    ),
    (
        "duplicate image ids and regions, reported even when the item has other errors",
        """
        images:
          - id: m-abc
          - id: m-abc
            type: Docker
          - id: m-def
            additional_regions: [cn-beijing, ap-southeast-1, cn-beijing]
          - id: m-abc
        discovery: {ids: [m-x, m-x]}
        """,
        [
            "{p}: images[1].id: duplicate image id 'm-abc' (also images[0])",
            "{p}: images[1].type: must be 'VM' or 'Container'",
            "{p}: images[2].additional_regions[2]: duplicate region 'cn-beijing' (also"
            " images[2].additional_regions[0])",
            "{p}: images[3].id: duplicate image id 'm-abc' (also images[0])",
            "{p}: discovery.ids[1]: duplicate image id 'm-x' (also discovery.ids[0])",
        ],
    ),
    (
        "image ids: missing, empty, with whitespace",
        """
        images: [{type: VM}, {id: ""}, {id: "m 1"}, m-plain]
        """,
        [
            "{p}: images[0].id: required",
            "{p}: images[1].id: must not be empty",
            "{p}: images[2].id: must not contain whitespace",
            "{p}: images[3]: must be a mapping",
        ],
    ),
    (
        "bad regex",
        'discovery: {enabled: true, name_regex: "hpc-(["}\n',
        ["{p}: discovery.name_regex: invalid regular expression (RE2 syntax): missing ]: ["],
    ),
    (
        "regex features RE2 does not have (the runtime matches with RE2, in linear time)",
        """
        discovery: {enabled: true, name_regex: '(a)\\1'}
        """,
        ["{p}: discovery.name_regex: invalid regular expression (RE2 syntax): invalid escape sequence: \\1"],
    ),
    (
        "lookahead",
        "discovery: {name_regex: 'hpc-(?=x)'}\n",
        ["{p}: discovery.name_regex: invalid regular expression (RE2 syntax): invalid perl operator: (?="],
    ),
    (
        "web: listen address and telemetry path",
        """
        web: {listen_address: "localhost", telemetry_path: /readyz}
        """,
        [
            "{p}: web.listen_address: must be host:port, like ':9765' or '127.0.0.1:9765'",
            "{p}: web.telemetry_path: must not be '/readyz', which the exporter serves itself",
        ],
    ),
    (
        "telemetry path must be absolute",
        "web: {telemetry_path: metrics}\n",
        ["{p}: web.telemetry_path: must start with '/'"],
    ),
    (
        "status lists",
        "status: {healthy: [], replication_healthy: [''], vocabulary: 3}\n",
        [
            "{p}: status.healthy: must have at least 1 item(s)",
            "{p}: status.replication_healthy[0]: must not be empty",
            "{p}: status.vocabulary: must be a list",
        ],
    ),
    (
        "access_key without its secret, and a field it does not use",
        "credentials: {type: access_key, access_key_id: LTAI, role_arn: acs:ram::1:role/x}\n",
        [  # file order; a missing field comes after the ones present
            "{p}: credentials.role_arn: not used by type 'access_key'",
            "{p}: credentials.access_key_secret: required for type 'access_key'",
        ],
    ),
    (
        "sts without its token",
        f"credentials: {{type: sts, access_key_id: STS.x, access_key_secret: {SECRET}}}\n",
        ["{p}: credentials.security_token: required for type 'sts'"],
    ),
    (
        "credentials_uri without the uri; a token where it is not used",
        f"credentials: {{type: credentials_uri, security_token: {TOKEN}}}\n",
        [
            "{p}: credentials.security_token: not used by type 'credentials_uri'",
            "{p}: credentials.credentials_uri: required for type 'credentials_uri'",
        ],
    ),
    (
        "credentials_uri that is not a URL",
        "credentials: {type: credentials_uri, credentials_uri: 'file:///etc/creds'}\n",
        ["{p}: credentials.credentials_uri: must be an http:// or https:// URL"],
    ),
    (
        "oidc_role_arn needs three fields; an unknown type",
        """
        credentials: {type: oidc_role_arn, role_arn: "acs:ram::1:role/x"}
        """,
        [
            "{p}: credentials.oidc_provider_arn: required for type 'oidc_role_arn'"
            " (or set ALIBABA_CLOUD_OIDC_PROVIDER_ARN)",
            "{p}: credentials.oidc_token_file: required for type 'oidc_role_arn'"
            " (or set ALIBABA_CLOUD_OIDC_TOKEN_FILE)",
        ],
    ),
    (
        "credentials without a type; a secret of the wrong type is not echoed",
        "credentials: {access_key_secret: 12345678901234567890}\n",
        ["{p}: credentials.access_key_secret: must be a string", "{p}: credentials.type: required"],
    ),
    (
        "default type takes no fields",
        f"credentials: {{type: default, access_key_secret: {SECRET}}}\n",
        ["{p}: credentials.access_key_secret: not used by type 'default'"],
    ),
    (
        "a secret pasted into a field that quotes its value is masked",
        f"credentials: {{type: access_key, access_key_id: LTAI, access_key_secret: {SECRET}}}\n"
        f"api: {{region_id: {SECRET}}}\n",
        ["{p}: api.region_id: invalid region id '[REDACTED]' (expected lower-case like 'cn-hangzhou')"],
    ),
    (
        "endpoint with userinfo or path",
        """
        api: {endpoint: "https://user:pw@ehpc.example.com"}
        """,
        ["{p}: api.endpoint: must not carry credentials (user:password@)"],
    ),
    (
        "top level is not a mapping",
        "- api\n",
        ["{p}: the top level must be a mapping of sections (api, images, ...)"],
    ),
    (
        "malformed YAML names file:line:column",
        "api:\n  region_id: cn-hangzhou\n   qps: 3\n",
        # The wording is libyaml's (the loader uses it when PyYAML has it, as PyPI's wheels do).
        ["{p}:3:7: invalid YAML: mapping values are not allowed in this context"],
    ),
    (
        "unterminated flow sequence",
        "images: [\n",
        ["{p}:2:1: invalid YAML: did not find expected node content (while parsing a flow node)"],
    ),
    (
        "duplicate keys are an error, not a silent override",
        "refresh: {interval_seconds: 5}\nweb: {}\nrefresh: {interval_seconds: 9}\n",
        ["{p}:3:1: invalid YAML: duplicate key 'refresh' (first defined on line 1)"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_configs_give_exact_lines(tmp_path: Path, text: str, expected: list[str]) -> None:
    """Each mistake is one line naming the file and the field; none quotes a secret."""
    path = write(tmp_path, text)
    assert errors_of(path) == [line.format(p=path) for line in expected]


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert errors_of(missing) == [f"{missing}: cannot read config file: No such file or directory"]
    assert errors_of(str(tmp_path)) == [f"{tmp_path}: cannot read config file: Is a directory"]


def test_unreadable_permissions(tmp_path: Path) -> None:
    path = write(tmp_path, "images: []\n")
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):  # running as root: permissions do not stop us, use a non-UTF-8 file
            Path(path).write_bytes(b"\xff\xfe images")
            assert errors_of(path) == [f"{path}: cannot read config file: not UTF-8 text"]
        else:
            assert errors_of(path) == [f"{path}: cannot read config file: Permission denied"]
    finally:
        os.chmod(path, 0o600)


def test_missing_env_var_names_variable_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset ${VAR} is one line naming the variable and the field; the field's checks stay quiet."""
    monkeypatch.delenv("EHPC_TEST_SECRET", raising=False)
    monkeypatch.delenv("EHPC_TEST_REGION", raising=False)
    path = write(
        tmp_path,
        """
        credentials:
          type: access_key
          access_key_id: LTAI
          access_key_secret: ${EHPC_TEST_SECRET}
        images:
          - id: m-1
            additional_regions: ["${EHPC_TEST_REGION}"]
        web: {telemetry_path: "/${"}
        """,
    )
    assert errors_of(path) == [
        f"{path}: credentials.access_key_secret: environment variable 'EHPC_TEST_SECRET' is not set and has"
        " no default",
        f"{path}: images[0].additional_regions[0]: environment variable 'EHPC_TEST_REGION' is not set and"
        " has no default",
        f"{path}: web.telemetry_path: malformed '${{' reference (use ${{NAME}} or ${{NAME:-default}}; $$ for"
        " '$')",
    ]


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR}, ${VAR:-default} (also for empty), $$, inside strings and lists; numbers come from strings."""
    monkeypatch.setenv("EHPC_TEST_SECRET", SECRET)
    monkeypatch.setenv("EHPC_TEST_REGION", "cn-beijing")
    monkeypatch.setenv("EHPC_TEST_EMPTY", "")
    monkeypatch.setenv("EHPC_TEST_INTERVAL", "7.5")
    monkeypatch.delenv("EHPC_TEST_UNSET", raising=False)
    path = write(
        tmp_path,
        """
        credentials:
          type: access_key
          access_key_id: ${EHPC_TEST_UNSET:-LTAIdefault}
          access_key_secret: ${EHPC_TEST_SECRET}
        images:
          - id: m-${EHPC_TEST_EMPTY:-fallback}
            additional_regions: ["${EHPC_TEST_REGION}", "ap-${EHPC_TEST_UNSET:-southeast}-1"]
        refresh: {interval_seconds: "${EHPC_TEST_INTERVAL}"}
        discovery: {name_regex: "^cost$$"}
        """,
    )
    config = load_config(path)
    assert config.credentials == CredentialsConfig(
        type="access_key", access_key_id="LTAIdefault", access_key_secret=SECRET
    )
    assert config.images == (
        WatchedImage("m-fallback", additional_region_ids=("cn-beijing", "ap-southeast-1")),
    )
    assert config.refresh.interval_seconds == 7.5
    assert config.discovery.name_regex == "^cost$"
    assert SECRET not in repr(config)


def test_interpolate_function() -> None:
    env = {"A": "x", "E": ""}
    assert interpolate("${A}-${E}-${E:-d}-${B:-}-$$-$A", env) == ("x--d--$-$A", [])
    assert interpolate("${B}${A}", env) == ("x", ["B"])


def test_overrides_replace_file_values_and_none_is_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path, "web: {listen_address: ':9000', telemetry_path: /m}\nrefresh: {interval_seconds: 5}\n"
    )
    config = load_config(
        path,
        {"web.listen_address": "127.0.0.1:0", "web.telemetry_path": None, "web.config_file": "web.yml"},
    )
    assert config.web == WebConfig(listen_address="127.0.0.1:0", telemetry_path="/m", config_file="web.yml")
    assert config.refresh.interval_seconds == 5


def test_overrides_without_a_file_and_bad_override_says_command_line(tmp_path: Path) -> None:
    assert load_config(None, {"web.listen_address": ":1234"}).web.listen_address == ":1234"
    assert errors_of(None, {"web.telemetry_path": "/healthz"}) == [
        "command line: web.telemetry_path: must not be '/healthz', which the exporter serves itself"
    ]
    path = write(tmp_path, "web: {listen_address: nope}\n")
    # The file's bad value is replaced by the flag, so only the flag's problem remains, attributed to it.
    assert errors_of(path, {"web.listen_address": "[::1]9"}) == [
        "command line: web.listen_address: must be host:port, with an IPv6 host in brackets like [::1]:9765"
    ]


def test_empty_file_and_empty_sections_mean_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "api:\nimages:\nweb:\n", "b.yaml")) == Config()
    assert load_config(None) == Config()


def test_new_limits_default_to_the_runtime_defaults(tmp_path: Path) -> None:
    """``limits`` and ``discovery.max_pages`` left out (or empty) are LimitsConfig's and DiscoveryConfig's."""
    config = load_config(write(tmp_path, "limits:\ndiscovery: {enabled: true}\n"))
    assert config.limits == LimitsConfig()
    assert config.discovery.max_pages == DiscoveryConfig().max_pages


def test_interpolation_has_a_budget_for_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: ``${VAR}`` repeated 5,000 times over a 16 kB variable is 80 MB from a 70 kB file; it stops at
    the budget with one line instead of building it (and each string has its own cap below that)."""
    monkeypatch.setenv("EHPC_BIG", "x" * 16_000)
    refs = "\n".join("  - ${EHPC_BIG}" for _ in range(5000))
    path = write(tmp_path, f"status:\n  vocabulary:\n{refs}\n")
    assert errors_of(path) == [
        f"{path}: status.vocabulary[4194]: ${{VAR}} expansion takes the file past 67108864 characters"
    ]


def test_many_problems_are_cut_to_a_summary(tmp_path: Path) -> None:
    """A mistake multiplied by aliases is reported 100 times and summarised, not a million times."""
    path = write(tmp_path, "x: &x {id: 1bad id}\nimages: [" + ", ".join(["*x"] * 3000) + "]\n")
    lines = errors_of(path)
    assert len(lines) == 101
    assert lines[-1] == f"{path}: more problems not shown (the first 100 are)"


def test_full_config_maps_onto_runtime_objects(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        api:
          region_id: ap-southeast-1
          endpoint: "http://127.0.0.1:9766"
          network: vpc
          protocol: http
          ca_file: /etc/ca.pem
          timeout_seconds: 3
          connect_timeout_seconds: 1
          max_concurrency: 8
          qps: 0
          max_response_bytes: 65536
          retry: {{max_attempts: 2, base_delay_seconds: 0.1, max_delay_seconds: 1, max_elapsed_seconds: 4}}
        credentials:
          type: sts
          access_key_id: STS.abc
          access_key_secret: {SECRET}
          security_token: {TOKEN}
        images:
          - id: m-1
          - id: c-2
            type: Container
            category: Custom
            additional_regions: [cn-beijing, cn-shanghai]
        discovery:
          enabled: true
          type: VM
          category: Public
          name_regex: "^hpc-"
          ids: [m-9]
          additional_regions: [cn-beijing]
          page_size: 20
          max_pages: 7
        limits: {{max_error_codes: 0, max_regions_per_image: 3}}
        refresh: {{interval_seconds: 30, jitter_ratio: 0, image_timeout_seconds: 10}}
        status:
          healthy: [Available, Deprecated]
          replication_healthy: [Available, Ready]
          vocabulary: [Available, Creating, Available]
        sharding: {{shards: 4, shard: 3}}
        web: {{listen_address: "[::]:9765", telemetry_path: /metrics, config_file: web.yml}}
        """,
    )
    assert load_config(path) == Config(
        api=ApiConfig(
            region_id="ap-southeast-1",
            endpoint="http://127.0.0.1:9766",
            network="vpc",
            protocol="http",
            ca_file="/etc/ca.pem",
            timeout_seconds=3,
            connect_timeout_seconds=1,
            max_concurrency=8,
            qps=0,
            max_response_bytes=65536,
            retry=RetryConfig(
                max_attempts=2, base_delay_seconds=0.1, max_delay_seconds=1, max_elapsed_seconds=4
            ),
        ),
        credentials=CredentialsConfig(
            type="sts", access_key_id="STS.abc", access_key_secret=SECRET, security_token=TOKEN
        ),
        images=(
            WatchedImage("m-1"),
            WatchedImage("c-2", "Container", "Custom", ("cn-beijing", "cn-shanghai")),
        ),
        discovery=DiscoveryConfig(
            enabled=True,
            image_type="VM",
            image_category="Public",
            name_regex="^hpc-",
            image_ids=("m-9",),
            additional_region_ids=("cn-beijing",),
            page_size=20,
            max_pages=7,
        ),
        refresh=RefreshConfig(interval_seconds=30, jitter_ratio=0, image_timeout_seconds=10),
        # Healthy statuses join the vocabulary (after the listed ones, duplicates dropped).
        status=StatusConfig(
            healthy=("Available", "Deprecated"),
            replication_healthy=("Available", "Ready"),
            vocabulary=("Available", "Creating", "Deprecated", "Ready"),
        ),
        sharding=ShardingConfig(shards=4, shard=3),
        limits=LimitsConfig(max_error_codes=0, max_regions_per_image=3),
        web=WebConfig(listen_address="[::]:9765", telemetry_path="/metrics", config_file="web.yml"),
    )


def test_default_vocabulary_is_the_runtime_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "status: {healthy: [Available]}\n")).status.vocabulary == (
        DEFAULT_STATUS_VOCABULARY
    )


def test_loaded_secrets_are_registered_for_log_masking(tmp_path: Path) -> None:
    from exporter.logging import mask_secrets

    secret = "AnotherSecretOnlyInThisTest42"
    load_config(
        write(tmp_path, f"credentials: {{type: access_key, access_key_id: X, access_key_secret: {secret}}}")
    )
    assert mask_secrets(f"x {secret} y") == "x [REDACTED] y"


def test_warnings(tmp_path: Path) -> None:
    assert config_warnings(Config()) == [
        "images: no images to watch and discovery is disabled; only the exporter's own metrics are served"
    ]
    config = load_config(
        write(
            tmp_path,
            """
            api: {protocol: http, endpoint: "ehpc.example.com:80"}
            images: [{id: m-1}]
            refresh: {interval_seconds: 5, image_timeout_seconds: 6}
            """,
        )
    )
    assert config_warnings(config) == [
        "api.protocol: 'http' sends requests (and any STS token) unencrypted; use it only for testing",
        "refresh.image_timeout_seconds: longer than refresh.interval_seconds, so a slow image can make a"
        " cycle overrun the next one",
    ]
    local = load_config(
        write(tmp_path, "api: {protocol: http, endpoint: 'http://127.0.0.1:1'}\nimages: [{id: m}]")
    )
    assert config_warnings(local) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":9765", ("", 9765)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),  # noqa: S104 - parsing, not binding
        ("localhost:80", ("localhost", 80)),
        ("[::1]:9765", ("::1", 9765)),
    ],
)
def test_parse_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9765", "host:", "host:99999", "::1:80", "[::1]", "a b:1", ":-1"])
def test_parse_listen_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"host|port"):
        parse_listen_address(text)


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped, commented example loads (with the variables it documents set)."""
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIexample")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
    config = load_config(REPO / "examples" / "config.yaml")
    assert config.images
    assert config_warnings(config) == []


def test_json_schema_forbids_unknown_keys() -> None:
    schema = config_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "api", "credentials", "images", "discovery", "labels", "refresh", "status", "sharding", "limits",
        "web", "targets", "state", "metrics",
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Every problem at once: mistakes in different places never hide one another.

# Each mistake: the keys it sets (path -> value) and the lines it gives on its own, "{p}" for the config
# file. "{w}" is the web config file, and "<web config>" stands for the lines that file gives on its own.
Mistakes = dict[str, tuple[dict[tuple[str | int, ...], Any], list[str]]]
ONE_TARGET_MISTAKES: Mistakes = {
    "metrics entry": (
        {("metrics", "include"): ["ehpc_imgae_status"]},
        [
            "{p}: metrics.include[0]: entry 'ehpc_imgae_status' matches no metric family"
            " (did you mean 'ehpc_image_status'?)"
        ],
    ),
    "metrics cap": ({("metrics", "max_series"): -1}, ["{p}: metrics.max_series: must be at least 0"]),
    "web config": ({("web", "config_file"): "{w}"}, ["<web config>"]),
    "telemetry path": (
        {("web", "telemetry_path"): "/readyz"},
        ["{p}: web.telemetry_path: must not be '/readyz', which the exporter serves itself"],
    ),
    "shard": (
        {("sharding", "shards"): 2, ("sharding", "shard"): 2},
        ["{p}: sharding.shard: must be less than sharding.shards (2)"],
    ),
    "retry": (
        {("api", "retry", "base_delay_seconds"): 2, ("api", "retry", "max_delay_seconds"): 1},
        ["{p}: api.retry.max_delay_seconds: must be at least retry.base_delay_seconds"],
    ),
    "qps": ({("api", "qps"): 0.001}, ["{p}: api.qps: must be 0 (no budget) or at least 0.01"]),
    "interval": ({("refresh", "interval_seconds"): 0}, ["{p}: refresh.interval_seconds: must be at least 1"]),
    "images": (
        {("images",): [{"id": "m-1"}, {"id": "m-1", "type": "Docker"}]},
        [
            "{p}: images[1].id: duplicate image id 'm-1' (also images[0])",
            "{p}: images[1].type: must be 'VM' or 'Container'",
        ],
    ),
    "credentials": (
        {("credentials",): {"type": "access_key", "access_key_id": "LTAI", "access_key_secret": "${NOPE}"}},
        [
            "{p}: credentials.access_key_secret: environment variable 'NOPE' is not set and has no default",
        ],
    ),
    "region count": (
        {("limits", "max_regions_per_image"): 1, ("discovery", "additional_regions"): ["cn-beijing", "ap-x"]},
        ["{p}: discovery.additional_regions: must have at most 1 item(s) (limits.max_regions_per_image)"],
    ),
    "regex": (
        {("discovery", "name_regex"): "(["},
        ["{p}: discovery.name_regex: invalid regular expression (RE2 syntax): missing ]: ["],
    ),
    "unknown key": ({("imagez",): []}, ["{p}: imagez: unknown key (did you mean 'images'?)"]),
    "runtime-only key": ({("account",): "prod"}, ["{p}: account: unknown key"]),
}
# With targets: four good targets (accounts t0 to t3, one region each) the mistakes spoil.
TARGETS_MISTAKES: Mistakes = {
    "override combination": (
        {("api", "retry", "base_delay_seconds"): 2, ("targets", 0, "api", "retry", "max_delay_seconds"): 1},
        ["{p}: targets[0].api.retry.max_delay_seconds: must be at least retry.base_delay_seconds"],
    ),
    "region key override": (
        {("targets", 1, "api", "region_id"): "cn-beijing"},
        ["{p}: targets[1].api.region_id: unknown key"],
    ),
    "override bound": (
        {("targets", 1, "refresh", "interval_seconds"): 0.5},
        ["{p}: targets[1].refresh.interval_seconds: must be at least 1"],
    ),
    "duplicate region": (
        {("targets", 2, "regions"): [{"region_id": "cn-hangzhou"}, {"region_id": "cn-hangzhou", "qps": 1}]},
        [
            "{p}: targets[2].regions[1].region_id: duplicate region 'cn-hangzhou'"
            " (also targets[2].regions[0])",
            "{p}: targets[2].regions[1].qps: unknown key",
        ],
    ),
    "duplicate account": (
        {("targets", 3, "account"): "t0"},
        ["{p}: targets[3].account: duplicate account 't0' (also targets[0])"],
    ),
    "one-target section": (
        {("images",): [{"id": "m-1"}]},
        ["{p}: images: belongs inside a target when 'targets' is set (each target has its own)"],
    ),
    "top-level region key": (
        {("api", "network"): "vpc"},
        ["{p}: api.network: is set per region when 'targets' is set (targets[].regions[])"],
    ),
    "metrics entry": ONE_TARGET_MISTAKES["metrics entry"],
    "web config": ONE_TARGET_MISTAKES["web config"],
}
TARGETS_BASE = {
    "targets": [{"account": f"t{i}", "regions": [{"region_id": "cn-hangzhou"}]} for i in range(4)]
}


def _put(doc: Any, path: tuple[str | int, ...], value: Any) -> None:
    *parents, leaf = path
    for part in parents:
        doc = doc[part] if isinstance(part, int) else doc.setdefault(part, {})
    doc[leaf] = value


@pytest.mark.parametrize(
    ("mistakes", "base"),
    [(ONE_TARGET_MISTAKES, {}), (TARGETS_MISTAKES, TARGETS_BASE)],
    ids=["one", "targets"],
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_problem_is_reported_at_once(
    tmp_path: Path, mistakes: Mistakes, base: dict[str, Any], data: st.DataObject
) -> None:
    """Why: metrics.include and web.config_file problems, and a target's override combinations, used to
    appear only once everything else was fixed. Any set of mistakes gives exactly the lines each gives
    alone: none hides another, and none is reported twice."""
    chosen = data.draw(st.sets(st.sampled_from(sorted(mistakes)), min_size=1), label="mistakes")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {prometheus: not-a-bcrypt-hash}\n")
    web_lines = web_config_problems(str(web))
    assert web_lines
    assert all(line.startswith(f"{web}:") for line in web_lines)  # file, or file:line:column
    doc = yaml.safe_load(yaml.safe_dump(base))
    expected: list[str] = []
    for name in chosen:
        keys, lines = mistakes[name]
        for where, value in keys.items():
            _put(doc, where, str(web) if value == "{w}" else value)
        expected += [x for line in lines for x in (web_lines if line == "<web config>" else [line])]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(path, web_config_check=web_config_problems)
    assert sorted(info.value.errors) == sorted(line.format(p=path) for line in expected)


@settings(max_examples=30, deadline=None)
@given(limit=st.integers(1, 2500), over=st.integers(1, 3000), bad_every=st.integers(1, 4))
@example(limit=2500, over=1, bad_every=1)
def test_a_long_list_is_judged_by_its_length_first_and_its_problems_are_bounded(
    limit: int, over: int, bad_every: int
) -> None:
    """Why: pydantic validates every item of a list before its length and builds an error for each, so a
    mistake repeated 100,000 times through aliases cost 4.8 s and 800 MB. A list past its bound is one
    problem; a long one with bad items reports them in order, up to about MAX_COLLECTED."""
    adapter: TypeAdapter[tuple[str, ...]] = TypeAdapter(Annotated[tuple[ImageId, ...], Items(limit)])
    with pytest.raises(ValidationError) as info:
        adapter.validate_python([f"m-{i}" for i in range(limit + over)])
    assert [(e["type"], e["loc"]) for e in info.value.errors()] == [("too_long", ())]
    good = [f"m-{i}" for i in range(limit)]
    assert adapter.validate_python(good) == tuple(good)
    items = ["bad id" if i % bad_every == 0 else name for i, name in enumerate(good)]
    bad = [i for i in range(limit) if i % bad_every == 0]
    with pytest.raises(ValidationError) as info:
        adapter.validate_python(items)
    reported = [e["loc"][0] for e in info.value.errors()]
    assert reported == bad[: len(reported)]  # the first ones, in order
    assert min(len(bad), MAX_COLLECTED) <= len(reported) < 2 * MAX_COLLECTED


def test_loading_a_config_imports_nothing_of_the_renderer() -> None:
    """The config reads metric names from exporter.names (no project imports), not the family table."""
    code = (
        "import sys, exporter.names; names = sorted(m for m in sys.modules if m.startswith('exporter'));"
        " from exporter.config.load import load_config; load_config(None);"
        " print(names, sorted(m for m in sys.modules if m.startswith('exporter.exposition')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "['exporter', 'exporter.names'] []"


def test_code_builds_configs_unchecked_and_replace_checks_nothing(tmp_path: Path) -> None:
    """Only files and flags pass the gate: code (tests, the demo) may build values a file may not, and
    ``dataclasses.replace`` does not validate either (it is construction)."""
    api = replace(ApiConfig(max_response_bytes=64), timeout_seconds=0.01)
    assert (api.max_response_bytes, api.timeout_seconds) == (64, 0.01)
    path = write(tmp_path, "api: {max_response_bytes: 64, timeout_seconds: 0.01}\n")
    assert errors_of(path) == [
        f"{path}: api.max_response_bytes: must be at least 1024",
        f"{path}: api.timeout_seconds: must be at least 0.1",
    ]
