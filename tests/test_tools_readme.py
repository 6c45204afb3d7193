"""The tool-env example of docs/envs.md is the file examples/my_tool_env.py, verbatim and short.

(tests/test_readme.py runs every block of README.md and docs/*.md, these sections included.)
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_tool_env.py"
TEXT = (ROOT / "docs" / "envs.md").read_text(encoding="utf-8")
# from "## Search (retrieval..." to the end of "## Add your own tool environment" (the next heading or the end)
SECTIONS = re.search(
    r"## Search \(retrieval.*?## Add your own tool environment.*?(?=\n#{1,2} |\Z)", TEXT, flags=re.S
).group(0)


def test_example_file_is_in_the_docs_verbatim_and_short():
    code = EXAMPLE.read_text(encoding="utf-8")
    assert f"```python\n{code}```" in SECTIONS
    assert len(code.splitlines()) <= 40
