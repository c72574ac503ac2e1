"""Settings precedence (flag > env > file > default) and the errors bad values get."""

from __future__ import annotations

from pathlib import Path

import pytest

from voltgrid.gpu_slicer.errors import ConfigError
from voltgrid.gpu_slicer.settings import DEFAULT_MPS_ROOT, Settings, load_settings


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "slicer.yaml"
    path.write_text("profile: half\nfake_gpus: 3\nmps_root: /srv/mps\n")
    return path


def test_defaults(tmp_path: Path) -> None:
    # No config file at the default path on a test machine.
    assert load_settings([], {}) == Settings()
    assert Settings().kubelet_dir == Path("/var/lib/kubelet/device-plugins")


@pytest.mark.parametrize(
    ("argv", "env", "expected_profile", "expected_gpus"),
    [
        ([], {}, "half", 3),
        ([], {"VOLTGRID_GPU_SLICER_PROFILE": "eighth"}, "eighth", 3),
        (["--profile", "quarter"], {"VOLTGRID_GPU_SLICER_PROFILE": "eighth"}, "quarter", 3),
        (["--fake-gpus", "1"], {"VOLTGRID_GPU_SLICER_FAKE_GPUS": "5"}, "half", 1),
        ([], {"VOLTGRID_GPU_SLICER_FAKE_GPUS": "5"}, "half", 5),
    ],
)
def test_precedence(
    config: Path, argv: list[str], env: dict[str, str], expected_profile: str, expected_gpus: int
) -> None:
    settings = load_settings(["--config", str(config), *argv], env)
    assert (settings.profile, settings.fake_gpus) == (expected_profile, expected_gpus)
    assert settings.mps_root == Path("/srv/mps")


def test_config_from_env_and_flags(config: Path) -> None:
    settings = load_settings(
        ["--fake", "--kubelet-dir", "/k"], {"VOLTGRID_GPU_SLICER_CONFIG": str(config), "VOLTGRID_GPU_SLICER_FAKE": "0"}
    )
    assert settings.fake is True
    assert settings.kubelet_dir == Path("/k")
    assert settings.profile == "half"
    assert load_settings([], {"VOLTGRID_GPU_SLICER_FAKE": "yes"}).fake is True
    assert load_settings([], {}).mps_root == DEFAULT_MPS_ROOT


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("profile: third\n", {}, "profile 'third' is not one of eighth, quarter, half"),
        ("fake_gpus: 0\n", {}, "fake_gpus 0 must be between 1 and 64"),
        ("fake_gpus: many\n", {}, r"setting fake_gpus \(config file .* key fake_gpus\): .*valid integer"),
        ("fake_gpus: true\n", {}, r"setting fake_gpus \(config file .* key fake_gpus\): True is not an integer"),
        ("gpus: 2\n", {}, "unknown setting gpus"),
        ("- profile\n", {}, "must be a mapping"),
        ("profile: [\n", {}, "cannot read config file"),
        (
            "",
            {"VOLTGRID_GPU_SLICER_FAKE": "maybe"},
            r"fake \(VOLTGRID_GPU_SLICER_FAKE='maybe'\): 'maybe' is not a boolean",
        ),
    ],
)
def test_bad_values(tmp_path: Path, content: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "slicer.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(["--config", str(path)], env)


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(["--config", str(tmp_path / "nope.yaml")], {})
