"""The two ways an error's text is quoted in a one-line message (pipeline.core.errors)."""

from pipeline.core.errors import first_line, one_line


def test_first_line_skips_blank_lines_and_sqlalchemys_preamble_and_names_a_silent_error():
    assert first_line("\n  disk I/O error  \nat line 3") == "disk I/O error"
    preamble = "(raised as a result of Query-invoked autoflush)\n(sqlite3.OperationalError) readonly database"
    assert first_line(RuntimeError(preamble)) == "(sqlite3.OperationalError) readonly database"
    assert first_line(KeyError()) == "KeyError"
    assert first_line("x" * 500, limit=10) == "x" * 10


def test_one_line_collapses_whitespace_and_cuts_with_an_ellipsis():
    assert one_line("a\n  b\tc ") == "a b c"
    assert one_line("abcdefghij", 5) == "abcd…" and len(one_line("y" * 300, 200)) == 200
