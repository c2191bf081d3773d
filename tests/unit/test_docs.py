from pathlib import Path

from app.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    missing = [name for name in Settings.model_fields if f"KILN_{name.upper()}" not in README]
    assert missing == []


def test_readme_shows_the_two_commands():
    assert "make demo" in README and "make test" in README
