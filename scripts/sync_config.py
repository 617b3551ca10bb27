"""Regenerate pyproject's [tool.flwr.app.config] and README's config table from RunConfig."""

import re
from pathlib import Path

from splitkd_flwr.flower.config import RunConfig, config_table
from splitkd_flwr.flower.launch import toml_value

root = Path(__file__).resolve().parents[1]
pyproject = root / "pyproject.toml"
body = "\n".join(
    f"{k} = {toml_value(v)}" for k, v in RunConfig().to_run_config().items()
)
text = re.sub(
    r"(\[tool\.flwr\.app\.config\]\n(?:#[^\n]*\n)*).*?\n\n",
    lambda m: m.group(1) + body + "\n\n",
    pyproject.read_text(),
    flags=re.S,
)
pyproject.write_text(text)
readme = root / "README.md"
start, end = "<!-- config-table -->", "<!-- /config-table -->"
text = readme.read_text()
if start in text:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{config_table()}\n{end}{tail}")
