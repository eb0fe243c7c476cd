"""Assertions shared by the CLI tests (tests/ is on sys.path: pytest's default rootdir-relative import)."""


def assert_user_error(result, *needles):
    """A click ``result`` of a user error: non-zero exit, exactly one 'Error:' line that contains every
    needle, and no traceback (nor a TypeError/AttributeError surfacing as one)."""
    assert result.exit_code != 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, AttributeError))
