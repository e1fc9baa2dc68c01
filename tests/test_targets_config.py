"""Targets: accounts x regions in one config, each (account, region) a one-target config of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import DEFAULT_ACCOUNT, Scope
from exporter.config.load import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
SECRET = "tgt-secret-0123456789abcdef"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_file_without_targets_is_one_target_named_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "api: {region_id: cn-shanghai}\nimages: [{id: m-1}]\n"))
    (scope,) = config.scopes()
    assert scope.scope == Scope(DEFAULT_ACCOUNT, "cn-shanghai")
    assert scope is config  # the one-target form is its own scope: nothing is derived


def test_targets_expand_to_one_scope_per_account_and_region(tmp_path: Path) -> None:
    """Top-level api and refresh are defaults; a target's overrides win key by key (retry merged one level
    down); region entries set region, endpoint and network; credentials and images follow the target."""
    config = load_config(
        write(
            tmp_path,
            f"""
api: {{qps: 5, max_concurrency: 7, retry: {{max_attempts: 3, base_delay_seconds: 0.5}}}}
refresh: {{interval_seconds: 30}}
targets:
  - account: prod
    credentials: {{type: access_key, access_key_id: AK1, access_key_secret: {SECRET}}}
    regions: [{{region_id: cn-hangzhou}}, {{region_id: cn-shanghai, network: vpc, endpoint: "127.0.0.1:1"}}]
    api: {{qps: 2, retry: {{max_attempts: 2}}}}
    refresh: {{interval_seconds: 90}}
    account_qps: 3
    images: [{{id: m-1}}]
  - account: staging
    assume_role: {{role_arn: "acs:ram::222222222222:role/reader", external_id: ext-1}}
    regions: [{{region_id: cn-hangzhou}}]
    discovery: {{enabled: true}}
""",
        )
    )
    scopes = {c.scope: c for c in config.scopes()}
    assert list(scopes) == [
        Scope("prod", "cn-hangzhou"),
        Scope("prod", "cn-shanghai"),
        Scope("staging", "cn-hangzhou"),
    ]
    hz, sh, st = scopes.values()
    assert (
        hz.api.qps,
        hz.api.max_concurrency,
        hz.api.retry.max_attempts,
        hz.api.retry.base_delay_seconds,
    ) == (
        2,
        7,
        2,
        0.5,
    )
    assert (sh.api.network, sh.api.endpoint, hz.api.network) == ("vpc", "127.0.0.1:1", "public")
    assert hz.refresh.interval_seconds == sh.refresh.interval_seconds == 90
    assert st.refresh.interval_seconds == 30
    assert st.api.qps == 5
    assert [i.image_id for i in hz.images] == ["m-1"]
    assert sh.images == hz.images
    assert st.images == ()
    assert st.discovery.enabled
    assert not hz.discovery.enabled
    assert hz.account_settings == sh.account_settings != st.account_settings  # one credential cache
    assert hz.account_qps == 3
    assert st.account_qps == 0
    assert st.assume_role is not None
    assert st.assume_role.external_id == "ext-1"
    assert "ext-1" not in repr(st.assume_role)
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        (
            "images: [{id: m-1}]\napi: {region_id: cn-beijing}\n"
            "targets: [{account: a, regions: [{region_id: cn-hangzhou}]}]\n",
            [
                "images: belongs inside a target when 'targets' is set (each target has its own)",
                "api.region_id: is set per region when 'targets' is set (targets[].regions[])",
            ],
        ),
        (
            "targets:\n  - {account: a, regions: [{region_id: cn-hangzhou}]}\n"
            "  - {account: a, regions: []}\n",
            [
                "targets[1].account: duplicate account 'a' (also targets[0])",
                "targets[1].regions: must have at least 1 item(s)",
            ],
        ),
        (
            "targets: [{account: a, regions: [{region_id: cn-hangzhou}, {region_id: cn-hangzhou}]}]\n",
            ["targets[0].regions[1].region_id: duplicate region 'cn-hangzhou' (also targets[0].regions[0])"],
        ),
        (
            "targets: [{account: 'a b', regions: [{region_id: cn-hangzhou}],"
            " api: {qps: 0.001, region_id: x}}]\n",
            [
                "targets[0].account: invalid account name (1-63 letters, digits, '_', '.' or '-',"
                " starting with a letter or digit): it is the value of the account label",
                "targets[0].api.qps: must be 0 (no budget) or at least 0.01",
                "targets[0].api.region_id: unknown key",
            ],
        ),
        (
            "targets: [{account: a, regions: [{region_id: cn-hangzhou}],"
            " assume_role: {role_arn: 'arn:aws:x'}}]\n",
            [
                "targets[0].assume_role.role_arn: invalid role ARN 'arn:aws:x'"
                " (expected acs:ram::<account id>:role/<name>)"
            ],
        ),
        (
            "api: {retry: {base_delay_seconds: 2}}\n"
            "targets: [{account: a, regions: [{region_id: cn-hangzhou}],"
            " api: {retry: {max_delay_seconds: 1}}}]\n",
            ["targets[0].api.retry.max_delay_seconds: must be at least retry.base_delay_seconds"],
        ),
    ],
)
def test_bad_targets_are_one_line_each_naming_where(tmp_path: Path, text: str, lines: list[str]) -> None:
    """Every problem of the targets shape, with its location; a secret is never quoted."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.errors == [f"{path}: {line}" for line in lines]


def test_oidc_fields_may_come_from_the_rrsa_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        "targets: [{account: r, credentials: {type: oidc_role_arn}, regions: [{region_id: cn-hangzhou}]}]\n"
    )
    path = write(tmp_path, text)
    for name in (
        "ALIBABA_CLOUD_ROLE_ARN",
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert len(exc.value.errors) == 3
    assert "(or set ALIBABA_CLOUD_ROLE_ARN)" in exc.value.errors[0]
    monkeypatch.setenv("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r")
    monkeypatch.setenv("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "acs:ram::1:oidc-provider/p")
    monkeypatch.setenv("ALIBABA_CLOUD_OIDC_TOKEN_FILE", str(tmp_path / "token"))
    assert load_config(path).scopes()[0].credentials is not None


def test_multi_account_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped multi-account example is valid, with the variables it documents set."""
    monkeypatch.setenv("MONITORING_ACCESS_KEY_ID", "LTAIexample")
    monkeypatch.setenv("MONITORING_ACCESS_KEY_SECRET", SECRET)
    monkeypatch.setenv("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r")
    monkeypatch.setenv("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "acs:ram::1:oidc-provider/p")
    monkeypatch.setenv("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/var/run/token")
    config = load_config(REPO / "examples" / "multi-account.yaml")
    accounts = {c.account for c in config.scopes()}
    assert {"monitoring", "prod", "research"} <= accounts
    assert len(config.scopes()) > len(accounts)  # some account watches several regions
