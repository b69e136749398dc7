"""The two families of failure pfq-omatic reports, and their exit codes.

`UserError`: the user can fix it (bad path, unknown driver, missing headers): exit 1.
`BuildError` / `InfraError`: a build, a check or the lab failed: exit 2.
Each subclass carries a message template saying what happened and what to do.
"""

from __future__ import annotations

from typing import Any, ClassVar

#: Where main() writes what kind of error ended a command, for a matrix cell (read by
#: omatic.matrix.run, then removed).
FAILURE_ENV = "PFQ_OMATIC_FAILURE_FILE"


class OmaticError(Exception):
    """Base of every expected failure; `str(err)` is the one-line message shown."""

    exit_code: ClassVar[int] = 2
    template: ClassVar[str] = "{message}"

    def __init__(self, message: str = "", **fields: Any) -> None:
        self.fields = {"message": message, **fields}
        super().__init__(self.template.format(**self.fields))


class UserError(OmaticError):
    """Something the user gave us is wrong and they can fix it."""

    exit_code = 1


class PathError(UserError):
    template = "{path}: {message}"


class RuleError(UserError):
    """A rewrite rule file in patches/ is malformed."""

    template = "{path}: {message}"


class OutputExistsError(UserError):
    template = "{path}: output directory exists and is not empty; remove it or choose another"


class OutputNotDirError(UserError):
    template = "{path}: a file is there, not a directory; choose another output directory"


class OutputError(UserError):
    """The output cannot be written where the user asked (a read-only folder, a full
    disk): theirs to fix."""

    template = "{path}: cannot write the output: {message}"

    @classmethod
    def of(cls, err: OSError, path: object) -> OutputError:
        return cls(err.strerror or str(err), path=err.filename or path)


class BuildError(OmaticError):
    """A compile, a verification or the lab failed."""


class InfraError(OmaticError):
    """A tool we depend on failed or is missing (make, QEMU...)."""
