import pytest

from lmgauge.config import load_settings, normalize_host, parse_duration
from lmgauge.errors import InvalidOptionError


@pytest.mark.parametrize(
    "value, seconds",
    [(300, 300), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("-1", -1), ("0", 0), ("10s", 10)],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "", True])
def test_parse_duration_rejects_garbage(value):
    with pytest.raises(InvalidOptionError):
        parse_duration(value)


@pytest.mark.parametrize(
    "value, url",
    [
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        ("https://example.com/", "https://example.com:11434"),
        ("http://host:1234", "http://host:1234"),
    ],
)
def test_normalize_host_follows_ollama_conventions(value, url):
    assert normalize_host(value, 11434) == url


def test_file_then_environment_then_arguments(isolated_home, monkeypatch):
    isolated_home.mkdir(parents=True)
    (isolated_home / "config.toml").write_text(
        'num_ctx = 1024\nkeep_alive = "10m"\n[aliases]\n"llama3.2:1b" = "smollm2"\n'
    )
    s = load_settings()
    assert s.num_ctx == 1024 and s.keep_alive == 600 and s.aliases == {"llama3.2:1b": "smollm2"}
    monkeypatch.setenv("LMGAUGE_NUM_CTX", "2048")
    assert load_settings().num_ctx == 2048
    assert load_settings(num_ctx=512).num_ctx == 512


def test_ollama_host_env(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "10.0.0.5")
    assert load_settings().ollama_host == "http://10.0.0.5:11434"


def test_bad_settings_give_one_clear_error(isolated_home, monkeypatch):
    monkeypatch.setenv("LMGAUGE_NUM_CTX", "lots")
    with pytest.raises(InvalidOptionError, match="num_ctx"):
        load_settings()
    monkeypatch.delenv("LMGAUGE_NUM_CTX")
    isolated_home.mkdir(parents=True)
    (isolated_home / "config.toml").write_text("num_ctx = [unclosed")
    with pytest.raises(InvalidOptionError, match="config"):
        load_settings()
