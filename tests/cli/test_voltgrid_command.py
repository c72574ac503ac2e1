"""The `voltgrid` command: CRD generation and drift check, reachability probe, delegation."""

from __future__ import annotations

from pathlib import Path

import pytest

from voltgrid.cli import main as cli
from voltgrid.cli.run import kube_context_reachable


def crds(tmp_path: Path, *flags: str) -> int:
    return cli.main(["crds", "--out", str(tmp_path / "crds"), "--reference", str(tmp_path / "ref.md"), *flags])


def test_crds_writes_then_check_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crds(tmp_path) == 0
    assert sorted(p.name for p in (tmp_path / "crds").glob("*.yaml")) == [
        "functions.voltgrid.dev.yaml",
        "sandboxes.voltgrid.dev.yaml",
        "sandboxtemplates.voltgrid.dev.yaml",
        "sessions.voltgrid.dev.yaml",
    ]
    assert crds(tmp_path, "--check") == 0


def test_crds_check_names_the_drifted_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crds(tmp_path)
    (tmp_path / "crds" / "sessions.voltgrid.dev.yaml").write_text("# edited by hand\n")
    (tmp_path / "crds" / "stale.yaml").write_text("{}\n")
    (tmp_path / "ref.md").write_text("# edited by hand\n")
    assert crds(tmp_path, "--check") == 1
    err = capsys.readouterr().err
    assert "sessions.voltgrid.dev.yaml" in err and "stale.yaml" in err and "ref.md" in err


def test_reference_shows_fields_defaults_rules_and_columns(tmp_path: Path) -> None:
    crds(tmp_path)
    ref = (tmp_path / "ref.md").read_text()
    for kind in ("## Function", "## Session", "## Sandbox"):
        assert kind in ref
    assert '| `spec.sessions.idleTimeout` | string | `"15m"` |' in ref
    assert "| `spec.image` | string (required) |" in ref
    assert "idleTimeout must not be longer than maxLifetime" in ref  # a CEL rule's message
    assert "| Expires | string | `.status.expiresAt` |" in ref  # a printer column


def test_unreachable_kubeconfig_is_not_reachable(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: x, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: x, context: {cluster: x, user: x}}]\nusers: [{name: x, user: {}}]\n"
    )
    assert kube_context_reachable(str(kubeconfig)) is False


def test_delegated_component_parses_its_own_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["gpu-slicer", "--help"])
    assert exit_info.value.code == 0
    assert "--fake" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["launch"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_bad_operator_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before kopf starts: inside it, a bad endpoint would fail a startup activity retried forever."""
    monkeypatch.setenv("VOLTGRID_OPERATOR_METRICS", "localhost:8082")
    assert cli.main(["operator"]) == 2
    assert "metrics endpoint 'localhost:8082': expected http://HOST:PORT/PATH" in capsys.readouterr().err
    monkeypatch.delenv("VOLTGRID_OPERATOR_METRICS")
    assert cli.main(["operator", "--peering", "voltgrid", "--namespace", "team-*"]) == 2
    assert "name at least one namespace literally" in capsys.readouterr().err


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Not in a cluster, an empty home (no ~/.kube/config), no KUBECONFIG: a path to point it at."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return tmp_path / "missing-kubeconfig"


def test_the_operator_without_credentials_exits_2_naming_why(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["operator"]) == 2
    assert "no Kubernetes credentials" in capsys.readouterr().err
    monkeypatch.setenv("KUBECONFIG", str(no_credentials))
    assert cli.main(["operator"]) == 2
    assert "cannot use the kubeconfig: FileNotFoundError" in capsys.readouterr().err


def test_the_gateway_on_kubernetes_without_credentials_exits_2_naming_why(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(no_credentials))
    assert cli.main(["gateway", "--backend", "kubernetes"]) == 2
    assert "--backend kubernetes needs Kubernetes credentials" in capsys.readouterr().err
