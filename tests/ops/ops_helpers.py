"""Assertions shared by the operator-command tests."""

from __future__ import annotations

from click.testing import Result


def one_line_error(result: Result) -> str:
    """The single ``Error: ...`` line of a failed command (fails the test otherwise)."""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]
