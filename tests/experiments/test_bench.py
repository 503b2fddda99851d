"""Benchmark plumbing (never timings): markdown sections and the deploy benchmark's report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sstorch.experiments.timing import markdown_sections, update_section

ROOT = Path(__file__).resolve().parents[2]


def test_update_section_replaces_only_its_block(tmp_path):
    md = tmp_path / "b.md"
    update_section(md, "deploy", "first")
    assert md.read_text() == "<!-- begin:deploy -->\nfirst\n<!-- end:deploy -->\n"
    md.write_text("# Layer speed\n\ntable\n\n" + md.read_text() + "\ntrailer\n")
    update_section(md, "deploy", "second\nrow")
    text = md.read_text()
    assert text.startswith("# Layer speed\n\ntable\n\n<!-- begin:deploy -->\nsecond\nrow\n")
    assert text.endswith("<!-- end:deploy -->\n\ntrailer\n") and "first" not in text
    assert markdown_sections(text) == {
        "deploy": "<!-- begin:deploy -->\nsecond\nrow\n<!-- end:deploy -->"}


def test_deploy_benchmark_runs_and_reports(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("deploy", ROOT / "benchmarks" / "deploy.py")
    deploy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "deploy", deploy)  # dataclasses look their module up
    spec.loader.exec_module(deploy)
    md = tmp_path / "benchmarks.md"
    md.write_text("# Layer speed benchmark\n\nkept\n")
    assert deploy.main(["--models", "dense-mlp,sep-mlp-200x", "--rounds", "1",
                        "--b1-per-round", "3", "--b64-per-round", "1", "--warmup", "1",
                        "--n-parity", "64", "--out-md", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("# Layer speed benchmark\n\nkept\n")
    section = markdown_sections(text)["deploy"]
    assert "| `dense-mlp` | 1,863,690 | 1.0× |" in section
    assert "| `sep-mlp-200x` |" in section and "`dense-mlp` / `sep-mlp-200x`" in section
    assert "ONNX file" in section and "intra-op threads: 1" in section
    assert "untrained for every model" in section
    assert "(bar ≥ 100×): **PASS**" in section  # file size does not depend on timing noise
