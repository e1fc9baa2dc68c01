"""The config file loader: exact one-line errors naming where, no secret in any of them, and the runtime
objects a valid file turns into."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import string
import subprocess
import sys
import textwrap
from collections.abc import Iterator
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
from exporter.config.checks import IMAGE_ID_RE, MAX_SHOWN_PER_KIND
from exporter.config.errors import MAX_COLLECTED
from exporter.config.load import (
    ConfigError,
    config_json_schema,
    config_warnings,
    file_key_names,
    interpolate,
    load_config,
    parse_listen_address,
    state_path_problems,
)
from exporter.config.schema import ImageId, Items
from exporter.logging import mask_secrets
from exporter.redaction import MIN_SECRET_CHARS
from exporter.regions import KNOWN_REGIONS

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
        "tail\\n": 3
        """,
        [
            "{p}: api.region_id: must not contain control or bidi characters",
            "{p}: api.endpoint: must be at most 2048 characters",
            "{p}: images[0].id: must be at most 128 characters",
            "{p}: images[1].id: must not contain control or bidi characters",
            "{p}: status.vocabulary[0]: must not contain control or bidi characters",
            "{p}: <unprintable or long key>: unknown key",
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
            images: [{id: m-2ze74g5mvy4pjg12345}]
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
        write(tmp_path, "api: {protocol: http, endpoint: 'http://127.0.0.1:1'}\nimages: [{id: m-simvm0001}]")
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


# --------------------------------------------------------------------------------------------------------
# Typos caught early: regions outside the documented ones, image ids of another shape (warnings), a state
# directory this machine cannot use, each warning once.

REGION_SHAPE = re.compile(r"^[a-z]{2,}-[a-z0-9-]+$")  # what the config's region kind accepts at all
SEED_IMAGE_IDS = ("m-2ze74g5mvy4pjg*****", "m-uf60twafjtaart******")  # the API reference's examples
GOOD_ID = "m-2ze74g5mvy4pjg12345"


def _other(region: str) -> str:
    """A documented region that is not ``region`` (a list holds each region once)."""
    return "cn-shanghai" if region == "cn-beijing" else "cn-beijing"


TARGET_A: dict[str, Any] = {
    "account": "a",
    "regions": [{"region_id": "cn-hangzhou"}],
    "images": [{"id": GOOD_ID}],
}
TARGET_B: dict[str, Any] = {
    "account": "b",
    "regions": [{"region_id": "cn-shanghai"}],
    "images": [{"id": GOOD_ID}],
}


# Where a file writes a region, as (the place's location, how to put a region there).
REGION_PLACES: dict[str, Any] = {
    "api.region_id": lambda r: {"api": {"region_id": r}, "images": [{"id": GOOD_ID}]},
    "images[0].additional_regions[1]": lambda r: {
        "images": [{"id": GOOD_ID, "additional_regions": [_other(r), r]}]
    },
    "discovery.additional_regions[0]": lambda r: {"discovery": {"enabled": True, "additional_regions": [r]}},
    "targets[1].regions[1].region_id": lambda r: {
        "targets": [TARGET_A, {**TARGET_B, "regions": [{"region_id": _other(r)}, {"region_id": r}]}]
    },
    "targets[0].images[0].additional_regions[0]": lambda r: {
        "targets": [{**TARGET_A, "images": [{"id": GOOD_ID, "additional_regions": [r]}]}, TARGET_B]
    },
    "targets[1].discovery.additional_regions[0]": lambda r: {
        "targets": [TARGET_A, {**TARGET_B, "discovery": {"enabled": True, "additional_regions": [r]}}]
    },
}


def _region_typos(region: str) -> list[str]:
    """One-edit misspellings of ``region`` (a letter dropped, swapped or changed) that the config's region
    kind still accepts and that are not documented regions themselves."""
    found = set()
    for i in range(len(region)):
        found.add(region[:i] + region[i + 1 :])
        found.add(region[:i] + region[i + 1 : i + 2] + region[i : i + 1] + region[i + 2 :])
        found |= {region[:i] + c + region[i + 1 :] for c in "aeiou1"}
    return sorted(t for t in found if REGION_SHAPE.match(t) and t not in KNOWN_REGIONS)


def _load_doc(tmp_path: Path, doc: dict[str, Any]) -> Config:
    return load_config(write(tmp_path, yaml.safe_dump(doc, sort_keys=False)))


def _region_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "documented E-HPC Instant region" in line]


def test_the_documented_regions_are_the_union_of_both_lists() -> None:
    """The shared notes' 5.1: ten with both endpoints, three public only, the Malaysia row, and the API
    metadata's two more (15 plus ap-southeast-3), each once."""
    assert len(KNOWN_REGIONS) == len(set(KNOWN_REGIONS)) == 16
    assert {"cn-hangzhou", "ap-northeast-2", "ap-southeast-3", "us-west-1", "eu-central-1"} <= set(
        KNOWN_REGIONS
    )
    assert all(REGION_SHAPE.match(region) for region in KNOWN_REGIONS)


@pytest.mark.parametrize("place", sorted(REGION_PLACES))
def test_every_documented_region_passes_without_a_warning(tmp_path: Path, place: str) -> None:
    for region in KNOWN_REGIONS:
        assert config_warnings(_load_doc(tmp_path, REGION_PLACES[place](region))) == [], region


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    place=st.sampled_from(sorted(REGION_PLACES)),
    region=st.sampled_from(KNOWN_REGIONS),
)
def test_a_misspelt_region_anywhere_is_one_warning_with_a_did_you_mean(
    tmp_path: Path, data: st.DataObject, place: str, region: str
) -> None:
    """Why: ``region_id: cn-hangzou`` passed --check-config and then showed as a ConnectionError. Every
    one-letter misspelling of every documented region, at every place a file writes a region, loads (a
    warning, not an error: regions are added without notice) and is one line naming the place, the value
    and a documented region at least as close as the one meant."""
    typo = data.draw(st.sampled_from(_region_typos(region)), label="typo")
    lines = config_warnings(_load_doc(tmp_path, REGION_PLACES[place](typo)))
    (line,) = lines  # nothing else about this file is odd
    match = re.fullmatch(
        rf"{re.escape(place)}: region '{re.escape(typo)}' is not a documented E-HPC Instant region"
        r" \(did you mean '([a-z0-9-]+)'\?\)",
        line,
    )
    assert match is not None, line
    suggested = match.group(1)
    assert suggested in KNOWN_REGIONS
    closeness = difflib.SequenceMatcher(None, typo, suggested).ratio()
    assert closeness >= difflib.SequenceMatcher(None, typo, region).ratio()


def test_the_issue_s_region_typo_and_one_repeated_in_many_places(tmp_path: Path) -> None:
    config = _load_doc(tmp_path, REGION_PLACES["api.region_id"]("cn-hangzou"))
    assert config_warnings(config) == [
        "api.region_id: region 'cn-hangzou' is not a documented E-HPC Instant region (did you mean"
        " 'cn-hangzhou'?)"
    ]
    # The same typo in 30 images is one line naming the first place and counting the others; a region
    # like no documented one has no suggestion.
    images = [
        {"id": GOOD_ID[:-2] + f"{i:02d}", "additional_regions": ["cn-bejing", "xx-nowhere-9"]}
        for i in range(30)
    ]
    assert config_warnings(_load_doc(tmp_path, {"images": images})) == [
        "images[0].additional_regions[0]: region 'cn-bejing' is not a documented E-HPC Instant region (did"
        " you mean 'cn-beijing'?) (also in 29 more places)",
        "images[0].additional_regions[1]: region 'xx-nowhere-9' is not a documented E-HPC Instant region"
        " (also in 29 more places)",
    ]


# Ids the API and the simulator hand out: the seed's examples (their masked characters filled in), the
# simulator's generated fleet, its regional copies and the shipped examples'.
def _real_image_ids() -> list[str]:
    from ehpc_simulator import generate_fleet
    from ehpc_simulator.model import region_image_id

    fleet = generate_fleet(40, ["cn-beijing"], seed=11)
    ids = [
        *(seed.replace("*", "7") for seed in SEED_IMAGE_IDS),
        *(image.image_id for image in fleet),
        *(region_image_id(image, "cn-beijing") for image in fleet),  # a Container's copy keeps its id
        "m-bp1abcdef0123456789",
        "m-bp1example0container",
    ]
    return list(dict.fromkeys(ids))


def test_real_image_ids_pass_without_a_warning(tmp_path: Path) -> None:
    ids = _real_image_ids()
    doc = {"images": [{"id": i} for i in ids], "discovery": {"enabled": True, "ids": ids}}
    assert config_warnings(_load_doc(tmp_path, doc)) == []


# Values the image id kind accepts (no whitespace, no control) that are not an image id: other resources'
# ids, upper case, too short, another separator, the issue's own example.
ODD_IMAGE_IDS = st.one_of(
    st.sampled_from(["not-an-image", "M-2ZE74G5MVY4PJG12345", "m-2ze7", "m_2ze74g5mvy4pjg12345",
                     "i-bp1abcdef0123456789", "ami-0abcdef1234567890", "2ze74g5mvy4pjg12345",
                     "m-2ze74g5mvy4pjg*****", "m-2ze74g5mvy4pjg12345.", "m--"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="$\\'\""),
            min_size=1, max_size=40),
    st.text(st.sampled_from("m-\u03b1\u03b2\u65e5\u672c0123456789abcdef"), min_size=1, max_size=30),
).filter(lambda v: IMAGE_ID_RE.fullmatch(v) is None)  # fmt: skip


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(odd=ODD_IMAGE_IDS, where=st.sampled_from(["images", "discovery.ids", "targets[1].images"]))
def test_an_odd_image_id_is_one_warning_and_loads(tmp_path: Path, odd: str, where: str) -> None:
    """Why: ``id: not-an-image`` passed --check-config and then showed as ImageNotFound. Any id of another
    shape, written as a static image, a discovery id or a target's image, is one warning naming the place
    (and the value when it is short and plain), and the file still loads."""
    if where == "images":
        doc: dict[str, Any] = {"images": [{"id": GOOD_ID}, {"id": odd}]}
        place = "images[1].id"
    elif where == "discovery.ids":
        doc = {"discovery": {"enabled": True, "ids": [GOOD_ID, odd]}}
        place = "discovery.ids[1]"
    else:
        doc = {"targets": [TARGET_A, {**TARGET_B, "images": [{"id": GOOD_ID}, {"id": odd}]}]}
        place = "targets[1].images[1].id"
    lines = config_warnings(_load_doc(tmp_path, doc))
    quoted = f" '{odd}'" if odd.isascii() and len(odd) <= 64 else ""
    assert lines == [
        f"{place}: image id{quoted} does not look like an E-HPC Instant image id ('m-' and 8 to 32"
        " lower-case letters and digits, like m-2ze74g5mvy4pjg12345)"
    ]


def test_many_odd_image_ids_are_cut_to_a_count(tmp_path: Path) -> None:
    doc = {"images": [{"id": f"img-{i}"} for i in range(MAX_SHOWN_PER_KIND + 7)]}
    lines = config_warnings(_load_doc(tmp_path, doc))
    assert len(lines) == MAX_SHOWN_PER_KIND + 1
    assert lines[0].startswith("images[0].id: image id 'img-0' does not look like")
    assert lines[-1] == "7 more image ids that do not look like one not shown"


# -- each warning once


def _fleet_doc(regions_per_target: list[int], **top: Any) -> dict[str, Any]:
    """Targets of that many regions each (every one on a remote endpoint), and ``top`` at the top level."""
    regions = iter(KNOWN_REGIONS)
    targets = [
        {
            "account": f"acct{i}",
            "regions": [{"region_id": next(regions), "endpoint": "ehpc.example.com:80"} for _ in range(n)],
            "images": [{"id": GOOD_ID}],
        }
        for i, n in enumerate(regions_per_target)
    ]
    return {**top, "targets": targets}


HTTP_WARNING = "api.protocol: 'http' sends requests (and any STS token) unencrypted; use it only for testing"
TIMEOUT_WARNING = (
    "refresh.image_timeout_seconds: longer than refresh.interval_seconds, so a slow image can make a cycle"
    " overrun the next one"
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(regions=st.lists(st.integers(1, 4), min_size=1, max_size=4).filter(lambda r: sum(r) <= 16))
def test_a_top_level_warning_is_said_once_however_many_accounts_and_regions(
    tmp_path: Path, regions: list[int]
) -> None:
    """Why: a warning about a top-level setting was printed once per (account, region): four times for
    four. Any shape of targets and regions: each warning once, as the top level's."""
    doc = _fleet_doc(
        regions, api={"protocol": "http"}, refresh={"interval_seconds": 5, "image_timeout_seconds": 6}
    )
    assert config_warnings(_load_doc(tmp_path, doc)) == [HTTP_WARNING, TIMEOUT_WARNING]


def test_a_warning_of_some_accounts_or_regions_names_them_once(tmp_path: Path) -> None:
    doc = _fleet_doc([2, 2, 1], api={"protocol": "http"})
    targets = doc["targets"]
    targets[0]["regions"][0]["endpoint"] = "http://127.0.0.1:1"  # loopback: fine over http
    targets[2]["regions"][0]["endpoint"] = "http://127.0.0.1:2"
    targets[1]["refresh"] = {"image_timeout_seconds": 120}
    targets[2]["images"] = []
    assert config_warnings(_load_doc(tmp_path, doc)) == [
        f"accounts acct0 (cn-wulanchabu), acct1: {HTTP_WARNING}",
        f"account acct1: {TIMEOUT_WARNING}",
        "account acct2: images: no images to watch and discovery is disabled",
    ]


# -- the state directory


def _state_doc(path: Path | str) -> dict[str, Any]:
    return {"images": [{"id": GOOD_ID}], "state": {"path": str(path)}}


def test_a_usable_state_path_is_no_problem(tmp_path: Path) -> None:
    assert state_path_problems(_load_doc(tmp_path, _state_doc(tmp_path / "state.db"))) == []
    (tmp_path / "state.db").write_bytes(b"")  # an existing file the exporter can read and write
    assert state_path_problems(_load_doc(tmp_path, _state_doc(tmp_path / "state.db"))) == []
    assert state_path_problems(_load_doc(tmp_path, {"images": [{"id": GOOD_ID}]})) == []


def test_a_state_path_in_a_missing_directory_is_a_problem(tmp_path: Path) -> None:
    """Why: it passed --check-config, and the exporter then started cold and kept nothing."""
    missing = tmp_path / "no" / "such" / "dir"
    config = _load_doc(tmp_path, _state_doc(missing / "state.db"))
    assert state_path_problems(config) == [
        f"state.path: directory '{missing}' does not exist; the exporter would start cold and keep no state"
        " across restarts"
    ]


def test_a_state_path_whose_directory_or_file_is_something_else_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    config = _load_doc(tmp_path, _state_doc(tmp_path / "a-file" / "state.db"))
    assert state_path_problems(config) == [
        f"state.path: '{tmp_path / 'a-file'}' is not a directory; the exporter would start cold and keep no"
        " state across restarts"
    ]
    (tmp_path / "a-dir").mkdir()
    config = _load_doc(tmp_path, _state_doc(tmp_path / "a-dir"))
    assert state_path_problems(config) == [
        f"state.path: '{tmp_path / 'a-dir'}' is not a regular file; the exporter would start cold and keep no"
        " state across restarts"
    ]


@contextlib.contextmanager
def _unwritable_directory(where: Path) -> Iterator[Path]:
    """A directory this process may not write: a read-only tmpfs when it runs as root (as CI does, and
    permissions do not stop root), else one without write permission."""
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o500)
        try:
            yield where
        finally:
            where.chmod(0o700)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], check=True, timeout=10)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, timeout=10)


def test_a_state_directory_this_user_cannot_write_is_a_problem(tmp_path: Path) -> None:
    with _unwritable_directory(tmp_path / "read-only") as directory:
        assert not os.access(directory, os.W_OK)
        config = _load_doc(tmp_path, _state_doc(directory / "state.db"))
        assert state_path_problems(config) == [
            f"state.path: directory '{directory}' is not writable by this user; the exporter would start"
            " cold and keep no state across restarts"
        ]


# --------------------------------------------------------------------------------------------------------
# Secrets too short to be real: refused, never masked, and no line garbled or quoting one.

BASELINE_SECRET = "BaselineSecretLongEnoughToBeReal0123"


# A file with other mistakes whose lines quote values and suggest keys ("did you mean 'access_key_id'?").
def short_secret_doc(secret: str, region: str = "CN-X") -> str:
    creds = {"type": "access_key", "access_key_id": "LTAI5tExampleKeyId", "access_key_secret": secret}
    doc = {
        "credentials": {**creds, "key_id": "x"},
        "api": {"region_id": region},
        "images": [{"id": "m-dup000000001"}, {"id": "m-dup000000001"}],
        "refresh": {"interval_seconds": -1},
        "imagez": [],
    }
    return yaml.safe_dump(doc, sort_keys=False)


# The words those lines and the file's keys are made of: the secrets most likely to garble them.
LINE_WORDS = sorted(
    {w for w in re.split(r"[^A-Za-z0-9_.-]+", " ".join(CASES[0][2] + CASES[1][2])) if w}
    | {"key", "id", "access", "access_key", "unknown", "mean", "did", "you", "images", "api", "region",
       "must", "least", "type", "required", "duplicate", "credentials", "x", "LTAI", "REDACTED"}
)  # fmt: skip
SHORT_SECRETS = st.one_of(
    st.sampled_from(LINE_WORDS),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="$"),
            min_size=1, max_size=MIN_SECRET_CHARS - 1),
).filter(lambda s: len(s) < MIN_SECRET_CHARS)  # fmt: skip


def _lines_for(tmp_path: Path, secret: str) -> list[str]:
    path = write(tmp_path, short_secret_doc(secret))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [line.removeprefix(f"{path}: ") for line in info.value.errors]


# What the file itself writes that a line shows: its unknown keys and the values its lines quote. A secret
# equal to one of them is withheld there (the next test); here the lines must not change at all.
SHOWN_INPUTS = ("key_id", "imagez", "CN-X", "m-dup000000001")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=SHORT_SECRETS.filter(lambda s: s not in SHOWN_INPUTS))
@example(secret="key")  # the issue's: "unknown [REDACTED] (did you mean '[REDACTED]_id'?)"
def test_a_short_secret_is_refused_and_garbles_no_line(tmp_path: Path, secret: str) -> None:
    """A secret shorter than any real one (a word, a placeholder): the file is refused with a line saying
    so, every other line is exactly what it is with a real secret (nothing masked, nothing missing: the
    lines do not depend on the secret at all), and the secret is not registered, so no later output is
    masked either."""
    baseline = _lines_for(tmp_path, BASELINE_SECRET)
    lines = _lines_for(tmp_path, secret)
    too_short = (
        f"credentials.access_key_secret: too short to be a real credential (at least {MIN_SECRET_CHARS}"
        " characters; Alibaba Cloud's AccessKey secrets have 30): a placeholder or a value cut short"
    )
    assert lines[0] == too_short
    assert lines[1:] == baseline
    assert "[REDACTED]" not in "".join(baseline)
    sample = f"unknown {secret} key (did you mean 'access_{secret}_id'?)"
    assert mask_secrets(sample) == sample  # not registered: no output masks it


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secret=SHORT_SECRETS.filter(
        lambda s: REGION_SHAPE.match(s) is None and s not in LINE_WORDS and s not in file_key_names()
    )
)
def test_a_short_secret_pasted_into_another_field_is_not_quoted(tmp_path: Path, secret: str) -> None:
    """The refused secret also written as a region id: that line says '[REDACTED]', never the value.
    (A short one that is also a key of the file, such as 'telemetry_path', is left alone by design: its
    lines name that key; the file is refused for the secret anyway.)"""
    path = write(tmp_path, short_secret_doc(secret, region=secret))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (region,) = [line for line in info.value.errors if ": api.region_id: " in line]
    assert (
        region
        == f"{path}: api.region_id: invalid region id '[REDACTED]' (expected lower-case like 'cn-hangzhou')"
    )


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secret=st.text(
        st.sampled_from(string.ascii_letters + string.digits), min_size=MIN_SECRET_CHARS, max_size=60
    )
)
def test_a_secret_long_enough_is_accepted_and_masked(tmp_path: Path, secret: str) -> None:
    path = write(
        tmp_path,
        f"credentials: {{type: access_key, access_key_id: LTAI5tX, access_key_secret: '{secret}'}}\n",
    )
    assert load_config(path).credentials is not None
    assert mask_secrets(f"x {secret} y") == "x [REDACTED] y"
