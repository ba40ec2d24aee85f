"""The HTML pages come from autoescaped Jinja2 templates: names from the user's data are text, never markup."""

from __future__ import annotations

import pytest
import torch

from imgcls.data.doctor import Finding, Record
from imgcls.metrics import evaluation_report
from imgcls.reporting import render_data_html, render_html
from imgcls.utils.templates import render

HOSTILE = "<script>alert(1)</script>"


def test_report_page_escapes_class_names_and_paths():
    classes = [HOSTILE, "b&c", "plain"]
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    result = evaluation_report(logits, torch.tensor([0, 1, 2, 1]), classes)
    result |= {"model": "m", "data": "d", "split": "test"}
    for rows in result["samples"].values():
        for row in rows:
            row["path"] = f"photos/{HOSTILE}.png"
    page = render_html(result, [])
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "b&amp;c" in page


def test_data_check_page_escapes_paths_and_reasons():
    record = Record("corrupt", "train", f"{HOSTILE}.jpg", reason="<b>bad</b>")
    finding = Finding("error", "corrupt", "undecodable images", [record], 1)
    report = {
        "dataset": HOSTILE,
        "num_images": 1,
        "seconds": 0.1,
        "ok": False,
        "stats": {"readable": 0},
        "class_counts": {"train": {HOSTILE: 1}},
        "findings": [{**finding.__dict__, "items": [record.__dict__]}],
    }
    page = render_data_html(report, {})
    assert HOSTILE not in page and "<b>bad</b>" not in page
    assert page.count("&lt;script&gt;") == 3  # the title, the class table and the finding


def test_a_misspelt_template_variable_fails_loudly():
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        render("serve.html")  # no title given
