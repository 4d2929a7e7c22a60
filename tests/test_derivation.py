"""docs/derivation.md: its Python example runs and checks what the prose claims."""

import re
from pathlib import Path

DOC = Path(__file__).parent.parent / "docs" / "derivation.md"


def _python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_doc_exists_and_states_the_vector_jacobian_product():
    text = DOC.read_text(encoding="utf-8")
    assert "J^T" in text or "J.T" in text
    assert "dx = J^T dy" in text


def test_doc_has_one_python_example():
    assert len(_python_blocks(DOC.read_text(encoding="utf-8"))) == 1


def test_python_examples_run(capsys):
    blocks = _python_blocks(DOC.read_text(encoding="utf-8"))
    assert blocks, "docs/derivation.md has no ```python block"
    for i, code in enumerate(blocks):
        namespace = {"__name__": f"derivation_example_{i}"}
        exec(compile(code, f"{DOC}:python-block-{i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "row sums of J:" in out
    assert "J.T@dy" in out
