from pathlib import Path

from app.settings import Settings, Tuning

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TUNING_DOC = (ROOT / "docs" / "tuning.md").read_text()


def table_rows(text: str, heading: str) -> list[str]:
    """The rows of the tables under a README heading, up to the next heading of its level."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines()
            if line.startswith("| `KILN_")]


def test_every_setting_is_in_the_readme_table():
    rows = "\n".join(table_rows(README, "## Configuration"))
    operator = [name for name in Settings.model_fields if name != "tuning"]
    missing = [f"KILN_{name.upper()}" for name in operator if f"`KILN_{name.upper()}" not in rows]
    missing += [f"KILN_TUNING__{name.upper()}" for name in Tuning.model_fields
                if f"`KILN_TUNING__{name.upper()}`" not in rows]
    assert missing == []


def test_readme_rows_are_one_short_line():
    """The reasoning behind a setting lives in docs/tuning.md, not in the table."""
    long = [row.split("|")[1].strip() for row in table_rows(README, "## Configuration")
            if len(row.split("|")[-2].strip()) > 160]
    assert long == []


def test_tuning_doc_has_a_section_per_knob():
    missing = [name for name in Tuning.model_fields
               if f"## `KILN_TUNING__{name.upper()}`" not in TUNING_DOC]
    assert missing == []


def test_readme_shows_the_two_commands():
    assert "make demo" in README and "make test" in README
