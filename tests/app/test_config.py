"""Settings: environment parsing, defaults, ranges, and the one-line description of errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import DEFAULT_REPOSITORY, Settings, describe_error


def test_defaults_are_the_shipped_model_and_safe_limits():
    settings = Settings()
    assert settings.model_dir is None and settings.model_repository == DEFAULT_REPOSITORY
    assert settings.default_model == "mnist" and (DEFAULT_REPOSITORY / "mnist").is_dir()
    assert str(settings.policy) == "latest:1" and settings.poll_s == 0
    assert settings.admin_keys == ()
    assert settings.device == "auto" and settings.max_batch_size == 64
    assert settings.api_keys == () and settings.cors_origins == ()
    assert settings.max_body_bytes <= 16 * 1024 * 1024


def test_environment_is_read_with_the_vae_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("VAE_DEVICE", "cuda:1")
    monkeypatch.setenv("VAE_MAX_WAIT_MS", "0.5")
    monkeypatch.setenv("VAE_API_KEYS", " one, two ,,")
    monkeypatch.setenv("VAE_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("VAE_WARMUP_BATCH_SIZES", "1,8,32")
    settings = Settings()
    assert settings.model_dir == tmp_path and settings.device == "cuda:1"
    assert settings.max_wait_ms == 0.5
    assert settings.all_api_keys() == ("one", "two")
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.buckets.sizes == (1, 8, 32, 64)


def test_keys_are_secret_in_reprs():
    assert "hunter2" not in repr(Settings(api_keys="hunter2"))


def test_key_file_adds_keys(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# ops keys\nalpha\n\n  beta  \n")
    keys = Settings(api_keys="gamma", api_keys_file=path).all_api_keys()
    assert keys == ("gamma", "alpha", "beta")


@pytest.mark.parametrize("content", [None, "# only a comment\n"])
def test_key_file_missing_or_empty_is_an_error(tmp_path, content):
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValidationError, match="api_keys_file"):
        Settings(api_keys_file=path)


def test_default_batch_sizes_are_powers_of_two_and_the_maximum():
    assert Settings(max_batch_size=48).buckets.sizes == (1, 2, 4, 8, 16, 32, 48)
    assert Settings(max_batch_size=1).buckets.sizes == (1,)


@pytest.mark.parametrize(
    "overrides",
    [
        {"device": "gpu"},
        {"device": "cuda:x"},
        {"max_batch_size": 0},
        {"max_wait_ms": -1},
        {"max_queue": 10},
        {"warmup_batch_sizes": "128"},
        {"max_pixels": 10**9},
        {"log_level": "chatty"},
        {"request_timeout_ms": 0},
        {"version_policy": "newest"},
        {"version_policy": "specific:"},
        {"default_model": "a.b"},
        {"poll_s": -1},
    ],
)
def test_out_of_range_settings_are_refused(overrides):
    with pytest.raises(ValidationError):
        Settings(**overrides)


def test_errors_name_the_environment_variable(monkeypatch):
    monkeypatch.setenv("VAE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = describe_error(caught.value)
    assert line.startswith("invalid configuration: VAE_MAX_BATCH_SIZE:") and "\n" not in line
