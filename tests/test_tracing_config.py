"""``[tracing]``: off by default, on from the file or ``STREAMGW_TRACING``, every wrong value reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamgw import config as config_module
from streamgw.config import ConfigError, missing_otel
from streamgw.config_loader import load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamgw.toml"
    path.write_text(text)
    return path


def test_off_by_default() -> None:
    assert not load_config(None, env={}).tracing.enabled


def test_on_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert missing_otel() == []  # the test extra installs the otel extra
    path = write(tmp_path, "[tracing]\nenabled = true\n")
    assert load_config(path, env={}).tracing.enabled
    assert not load_config(path, env={"STREAMGW_TRACING": "off"}).tracing.enabled
    assert load_config(None, env={"STREAMGW_TRACING": "1"}).tracing.enabled


def test_wrong_values_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, '[tracing]\nenabled = "sometimes"\nendpoint = "http://x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"STREAMGW_TRACING": "maybe"})
    text = str(info.value)
    assert "[tracing] enabled" in text and "[tracing] endpoint: unknown key" in text
    assert 'STREAMGW_TRACING: must be 1 or 0 (true/false, yes/no, on/off), got "maybe"' in text


def test_on_without_the_extra_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "OTEL_MODULES", (("opentelemetry.sdk", "opentelemetry-sdk"),
                                                        ("streamgw_no_such_module.http", "no-such-exporter")))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[tracing]\nenabled = true\n"), env={})
    assert str(info.value).endswith("[tracing] enabled: tracing needs the otel extra: pip install "
                                    "'streamgw[otel]' (no-such-exporter not installed)")
    monkeypatch.setattr(config_module, "OTEL_MODULES", (("streamgw_no_such_module", "gone"),))
    assert load_config(None, env={}).tracing.enabled is False  # off: nothing is looked for
    with pytest.raises(ConfigError, match=r"^STREAMGW_TRACING: tracing needs the otel extra"):
        load_config(None, env={"STREAMGW_TRACING": "yes"})
