"""What the CLI tests share: tiny training flags and the one-line error check."""

from __future__ import annotations

#: A tiny model and windows (trains in about a second on 12x32x32 stacks), without --epochs.
TINY_MODEL = [
    "--window", "4", "--stride", "4", "--crop", "16", "--hidden", "8", "--latent", "2",
    "--batch", "4", "--device", "cpu",
]  # fmt: skip
#: The same, one epoch.
TINY = [*TINY_MODEL, "--epochs", "1"]


def error_line(capsys) -> str:
    """The single ``error:`` line a failed command printed on stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
