"""One settings mechanism for every component (voltgrid.api.settings): the same boolean rule, the same
precedence (flag > env > file > default), errors that name the setting, ``--help`` that lists each
setting's flag, environment variable and default."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from voltgrid.api.settings import LayeredSettings, SettingsError, parse_bool
from voltgrid.cli.main import build_parser
from voltgrid.cli.main import main as cli_main
from voltgrid.controllers.settings import OperatorSettings
from voltgrid.gateway.settings import GatewaySettings, load_settings
from voltgrid.gpu_slicer import main as slicer_main
from voltgrid.gpu_slicer import settings as slicer
from voltgrid.webhooks import janitor, server

Load = Callable[[Sequence[str], Mapping[str, str]], Any]


def _gateway(argv: Sequence[str], env: Mapping[str, str]) -> GatewaySettings:
    """As ``voltgrid gateway`` does (voltgrid.cli.gateway.run)."""
    args = build_parser().parse_args(["gateway", *argv])
    return load_settings(args.config, env, GatewaySettings.flags_from(args, "setting_"))


def _operator(argv: Sequence[str], env: Mapping[str, str]) -> OperatorSettings:
    """As ``voltgrid operator`` does (voltgrid.cli.main._operator)."""
    args = build_parser().parse_args(["operator", *argv])
    return OperatorSettings.load(config=args.config, env=env, flags=OperatorSettings.flags_from(args))


#: component -> (its entry point's loader, its settings model)
COMPONENTS: dict[str, tuple[Load, type[LayeredSettings]]] = {
    "gateway": (_gateway, GatewaySettings),
    "operator": (_operator, OperatorSettings),
    "webhook": (server.parse_settings, server.WebhookSettings),
    "janitor": (janitor.parse_settings, janitor.JanitorSettings),
    "gpu-slicer": (slicer.load_settings, slicer.Settings),
}

#: component -> its boolean setting: (environment variable, attribute of the loaded settings)
BOOLEANS = {
    "gateway": ("VOLTGRID_GATEWAY_MANAGE_WARM_POOL", "manage_warm_pool"),
    "webhook": ("VOLTGRID_WEBHOOK_MANAGE_CERTS", "manage_certs"),
    "janitor": ("VOLTGRID_JANITOR_DRY_RUN", "dry_run"),
    "gpu-slicer": ("VOLTGRID_GPU_SLICER_FAKE", "fake"),
}

#: text -> the boolean it means, or None: an error naming the setting
BOOLEAN_RULE: dict[str, bool | None] = {
    "true": True,
    "TRUE": True,
    " yes ": True,
    "On": True,
    "1": True,
    "false": False,
    "No": False,
    "OFF": False,
    "0": False,
    "ture": None,
    "": None,
    "2": None,
    "t": None,
    "y": None,
    "enabled": None,
}

#: component -> a numeric setting: (flag, environment variable, attribute, file value, env value, flag value)
NUMBERS = {
    "gateway": ("--port", "VOLTGRID_GATEWAY_PORT", "port", 9000, 9100, 9200),
    "operator": ("--sweep-interval", "VOLTGRID_OPERATOR_SWEEP_INTERVAL", "sweep_interval", 7.0, 8.0, 9.0),
    "webhook": ("--port", "VOLTGRID_WEBHOOK_PORT", "port", 9000, 9100, 9200),
    "janitor": ("--metrics-port", "VOLTGRID_JANITOR_METRICS_PORT", "metrics_port", 9000, 9100, 9200),
    "gpu-slicer": ("--fake-gpus", "VOLTGRID_GPU_SLICER_FAKE_GPUS", "fake_gpus", 3, 4, 5),
}


@pytest.mark.parametrize("component", sorted(BOOLEANS))
@pytest.mark.parametrize(("text", "meaning"), BOOLEAN_RULE.items())
def test_one_boolean_rule_everywhere(component: str, text: str, meaning: bool | None) -> None:
    load, _ = COMPONENTS[component]
    env_name, attribute = BOOLEANS[component]
    if meaning is None:
        with pytest.raises(SettingsError, match=rf"setting {attribute} \({env_name}=.*is not a boolean"):
            load([], {env_name: text})
        with pytest.raises(ValueError, match="is not a boolean"):
            parse_bool(text)
    else:
        assert getattr(load([], {env_name: text}), attribute) is meaning
        assert parse_bool(text) is meaning


def test_a_boolean_flag_that_takes_a_value_follows_the_rule() -> None:
    assert _gateway(["--manage-warm-pool", "off"], {}).manage_warm_pool is False
    with pytest.raises(SettingsError, match=r"setting manage_warm_pool \(--manage-warm-pool 'of'\)"):
        _gateway(["--manage-warm-pool", "of"], {})


@pytest.mark.parametrize("component", sorted(NUMBERS))
def test_precedence_flag_over_env_over_file(component: str, tmp_path: Path) -> None:
    load, _ = COMPONENTS[component]
    flag, env_name, attribute, in_file, in_env, in_flag = NUMBERS[component]
    config = tmp_path / "settings.yaml"
    config.write_text(f"{attribute}: {in_file}\n")
    file_only = ["--config", str(config)]
    assert getattr(load(file_only, {}), attribute) == in_file
    assert getattr(load(file_only, {env_name: str(in_env)}), attribute) == in_env
    assert getattr(load([*file_only, flag, str(in_flag)], {env_name: str(in_env)}), attribute) == in_flag
    # The file may also be named by <prefix>CONFIG, as the chart does with a mounted ConfigMap.
    config_env = COMPONENTS[component][1].config_env()
    assert getattr(load([], {config_env: str(config)}), attribute) == in_file


@pytest.mark.parametrize("component", sorted(NUMBERS))
def test_a_bad_value_names_the_setting_and_where_it_came_from(component: str, tmp_path: Path) -> None:
    load, _ = COMPONENTS[component]
    flag, env_name, attribute, *_ = NUMBERS[component]
    with pytest.raises(SettingsError, match=rf"setting {attribute} \({env_name}='lots'\): .*valid"):
        load([], {env_name: "lots"})
    with pytest.raises(SettingsError, match=rf"setting {attribute} \({flag} 'lots'\): .*valid"):
        load([flag, "lots"], {})
    config = tmp_path / "settings.yaml"
    config.write_text("no_such_setting: 1\n")
    with pytest.raises(SettingsError, match="unknown setting no_such_setting"):
        load(["--config", str(config)], {})


def _help(component: str, capsys: pytest.CaptureFixture[str]) -> str:
    load, _ = COMPONENTS[component]
    argv = ["--help"]
    with pytest.raises(SystemExit):
        if component in ("gateway", "operator"):
            build_parser().parse_args([component, *argv])
        else:
            load(argv, {})
    return _bare(capsys.readouterr().out)


def _bare(text: str) -> str:
    """Without whitespace: argparse wraps lines, also at hyphens."""
    return "".join(text.split())


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_help_lists_every_setting_with_flag_env_and_default(component: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, model = COMPONENTS[component]
    text = _help(component, capsys)
    for ref in model.reference():
        assert ref.doc, f"{component}: {ref.name} has no description"
        if not ref.flag:  # only in the file (the gateway's JWT policies)
            continue
        assert _bare(f"{ref.flag} VALUE {ref.doc}") in text or _bare(f"{ref.flag} {ref.doc}") in text, ref.name
        assert _bare(f"[env {ref.env}; default {ref.default or 'none'}]") in text, ref.name
    assert _bare(f"[env {model.config_env()}") in text


def test_names_the_chart_and_docs_use_are_kept() -> None:
    assert OperatorSettings.flag_of("namespaces") == "--namespace"
    assert server.WebhookSettings.flag_of("trusted_users") == "--trusted-user"
    assert server.WebhookSettings.envs_of("namespace") == ("VOLTGRID_NAMESPACE", "POD_NAMESPACE")
    assert janitor.JanitorSettings.envs_of("kubeconfig") == ("KUBECONFIG",)
    parsed = _operator(["--namespace", "a", "--namespace", "b"], {"VOLTGRID_OPERATOR_NAMESPACES": "c, d"})
    assert parsed.namespaces == ("a", "b")
    assert _operator([], {"VOLTGRID_OPERATOR_NAMESPACES": "c, d"}).namespaces == ("c", "d")


def test_a_model_built_directly_reads_only_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTGRID_GATEWAY_PORT", "1")
    monkeypatch.setenv("VOLTGRID_OPERATOR_SWEEP_INTERVAL", "1")
    assert GatewaySettings().port == 8080 and OperatorSettings().sweep_interval == 10.0
    assert GatewaySettings(port=9).port == 9


#: component -> its entry point (argv -> exit status), as `voltgrid <component>` runs it
MAINS: dict[str, Callable[[list[str]], int]] = {
    "gateway": lambda argv: cli_main(["gateway", *argv]),
    "operator": lambda argv: cli_main(["operator", *argv]),
    "webhook": server.main,
    "janitor": janitor.main,
    "gpu-slicer": slicer_main.main,
}


@pytest.mark.parametrize("component", sorted(BOOLEANS))
def test_a_typo_in_a_boolean_stops_the_component_with_exit_2(
    component: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    env_name, attribute = BOOLEANS[component]
    monkeypatch.setenv(env_name, "ture")
    assert MAINS[component]([]) == 2
    assert f"setting {attribute} ({env_name}='ture'): 'ture' is not a boolean" in capsys.readouterr().err + caplog.text


def test_a_bad_operator_setting_stops_it_before_kopf(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOLTGRID_OPERATOR_REAP_GRACE", "soon")
    assert MAINS["operator"]([]) == 2
    assert "setting reap_grace (VOLTGRID_OPERATOR_REAP_GRACE='soon')" in capsys.readouterr().err
