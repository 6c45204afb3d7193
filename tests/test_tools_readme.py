"""The README sections on search, tools and remote envs run as written; the tool-env example is verbatim."""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_tool_env.py"
MERGED = "### Add your own tool environment" in (ROOT / "README.md").read_text(encoding="utf-8")
SOURCE = ROOT / "README.md" if MERGED else ROOT / "notes" / "README-search-tools.md"
TEXT = SOURCE.read_text(encoding="utf-8")
# from "### Search (retrieval..." to the end of "### Add your own tool environment" (the next heading or the end)
SECTIONS = re.search(r"### Search \(retrieval.*?### Add your own tool environment.*?(?=\n#{1,3} |\Z)", TEXT, flags=re.S).group(0)
BLOCKS = re.findall(r"```python\n(.*?)```", SECTIONS, flags=re.S)


def test_example_file_is_in_the_readme_verbatim_and_short():
    code = EXAMPLE.read_text(encoding="utf-8")
    assert f"```python\n{code}```" in SECTIONS
    assert len(code.splitlines()) <= 40


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_blocks_run(code):
    exec(compile(code, str(SOURCE), "exec"), {"__name__": "readme"})
