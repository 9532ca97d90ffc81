"""`pydl learn hint`: one more hint per call, and a clear word when they run out."""
from pydl.cli import main
from pydl.learn import course


def _hint(capsys, ws):
    code = main(["learn", "hint", "vector_add", "--workspace", ws])
    return code, capsys.readouterr().out


def test_hints_run_out_and_point_to_the_solution(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["learn", "start", "vector_add", "--workspace", ws]) == 0
    capsys.readouterr()
    n = len(course.get("vector_add").hints())
    assert n >= 2
    for i in range(1, n + 1):
        code, out = _hint(capsys, ws)
        assert code == 0 and f"Hint {i}/{n}" in out
        assert ("no more hints" in out) == (i == n), out
    assert "pydl learn solution vector_add" in out
    code, out = _hint(capsys, ws)  # asking again after the last one
    assert code == 0 and f"That was every hint ({n} of {n})" in out and "pydl learn solution" in out
