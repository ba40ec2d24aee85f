"""HTML pages from the Jinja2 templates in imgcls/templates/, autoescaped: a class or file name is
always text on the page, never markup."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("imgcls", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name in a template fails loudly, not as an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(name: str, **context: Any) -> str:
    """The template `name` (e.g. "report.html") rendered with `context`."""
    return _environment().get_template(name).render(**context)
