"""Progress of long commands: a spinner on a terminal (rich), plain lines otherwise."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.console import Console

#: How a pipeline reports its steps: `with step("kbuild"): ...`.
Step = Callable[[str], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def quiet_step(name: str) -> Iterator[None]:
    """A Step that reports nothing (library use, tests)."""
    yield


class Progress:
    """Reports steps on `stream` (stderr, so --json output on stdout stays clean)."""

    def __init__(self, prefix: str, stream: TextIO | None = None) -> None:
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream) if self.stream.isatty() else None

    def note(self, text: str) -> None:
        if self.console is not None:
            self.console.print(f"{self.prefix}: {text}", highlight=False)
        else:
            print(f"{self.prefix}: {text}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        if self.console is not None:
            with self.console.status(f"{self.prefix}: {name}..."):
                yield
            self.console.print(f"[green]✓[/green] {self.prefix}: {name} "
                               f"({time.monotonic() - start:.1f} s)", highlight=False)
        else:
            print(f"{self.prefix}: {name}...", file=self.stream, flush=True)
            yield
            print(f"{self.prefix}: {name} done ({time.monotonic() - start:.1f} s)",
                  file=self.stream, flush=True)
