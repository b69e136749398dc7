"""Generated files (Kbuild, initramfs init, dkms.conf...) come from the jinja2 templates
in this folder, never from strings pasted together in code."""

from __future__ import annotations

from typing import Any

import jinja2

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("omatic", "templates"),
    keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    undefined=jinja2.StrictUndefined, autoescape=False)


def render(name: str, **context: Any) -> str:
    """Render template `name` of this folder with `context`."""
    return _ENV.get_template(name).render(**context)
