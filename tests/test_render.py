"""Rendering (codegen/_render.py): every template at every corner of the space, tidy
source, and the hashes that say whether a tuned row is current."""

from __future__ import annotations

import ast
import itertools
import shutil
from dataclasses import replace

import jinja2
import pytest

from maxsim_forge.codegen import (
    ConfigError,
    KernelConfig,
    KernelSpec,
    family,
    is_current,
    jit_kernels,
    kernel_hash,
    render,
    source_key,
    template_hash,
)
from maxsim_forge.templates import FWD_FOLDED, FWD_QUERY, TEMPLATE_DIR

# Each knob at its extremes (and q_mode and every boolean knob at each value).
CORNERS = {
    "block_q": (16, 256),
    "block_d": (16, 128),
    "block_k": (16, 128),
    "num_warps": (1, 8),
    "num_stages": (1, 4),
    "q_mode": ("loop", "grid", "fold", "tile", "persist"),
    "split_d": (1, 16),
    "exact_k": (False, True),
    "overlap_max": (False, True),
    "masked_loop": (False, True),
    "defer_max": (False, True),
}
SPECS = [
    KernelSpec(layout, dtype, dim, precision, q_mask, d_mask)
    for layout in ("padded", "allpairs", "packed", "pairs")
    for dtype, precision in (("fp16", "tf32"), ("bf16", "tf32"), ("fp32", "tf32"), ("fp32", "ieee"))
    for dim in (48, 96, 128, 320)
    for q_mask in (("none",) if layout == "pairs" else ("none", "lengths", "mask"))
    for d_mask in (("none",) if layout in ("packed", "pairs") else ("none", "lengths", "mask"))
]
NAMES = ("_max_nan", "_row_scores", "_doc_tile_max", "_doc_tile_scores", "_tile_rowmax", "_maxsim_fwd_kernel",
         "_maxsim_split_reduce_kernel")


def _variants():
    """Every corner of the space against a spread of specs, the invalid ones left out."""
    for values in itertools.product(*CORNERS.values()):
        cfg = KernelConfig(**dict(zip(CORNERS, values)))
        for spec in SPECS[hash(values) % 7:: 37]:
            if cfg.exact_k:
                cfg = replace(cfg, block_k=128)
            try:
                source = render(spec, cfg, smem_limit=10**9)
            except ConfigError:
                continue  # over the register or tile limits, or contradicting the layout: by design
            yield spec, cfg, source


def test_every_corner_renders_tidy_valid_python():
    seen = {mode: 0 for mode in CORNERS["q_mode"]}
    for spec, cfg, source in _variants():
        tree = ast.parse(source)
        kernels = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
        want = [n for n in NAMES if n != "_doc_tile_scores" or cfg.overlap_max or cfg.defer_max
                or cfg.q_mode == "persist"]
        if cfg.split_d == 1:
            want.remove("_maxsim_split_reduce_kernel")
        assert kernels == want, f"{spec.key()}.{cfg.key()}: kernels {kernels}"
        assert len(jit_kernels(source)) == len(want)
        # Kernels only: the launch is codegen's, in Python.
        assert "torch" not in source and "launch" not in source.replace("launches", "")
        lines = source.splitlines()
        assert "\n\n\n\n" not in source, f"{cfg.key()}: runs of blank lines"
        assert all(line == line.rstrip() for line in lines), f"{cfg.key()}: trailing blanks"
        assert sum(not line.strip() for line in lines) < len(lines) // 5, f"{cfg.key()}: mostly blank"
        seen[cfg.q_mode] += 1
    assert min(seen.values()) >= 20, seen


def test_each_family_has_its_template():
    assert family(KernelConfig(q_mode="fold")) == family(KernelConfig(q_mode="persist")) == FWD_FOLDED
    for mode in ("loop", "grid", "tile"):
        assert family(KernelConfig(q_mode=mode)) == FWD_QUERY
    source = render(KernelSpec("allpairs", "fp16", 128), KernelConfig(q_mode="fold"))
    assert f"templates/{FWD_FOLDED}" in source.splitlines()[0]


def test_every_spec_renders():
    cfg = KernelConfig(block_q=32, block_d=32, block_k=32, q_mode="grid", split_d=2)
    for spec in SPECS:
        ast.parse(render(spec, cfg))


def _copy_templates(folder, edit=None):
    shutil.copytree(TEMPLATE_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    if edit:
        name, old, new = edit
        text = (folder / name).read_text()
        assert old in text, f"{old!r} is not in {name}"
        (folder / name).write_text(text.replace(old, new))
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def test_template_edit_changes_cache_key(tmp_path):
    spec, cfg = KernelSpec("padded", "fp16", 128), KernelConfig()
    env = _copy_templates(tmp_path / "templates", ("_fwd_base.py.j2", "# Kernels only", "# Kernels only (edited)"))
    original, changed = render(spec, cfg), render(spec, cfg, env=env)
    assert source_key(original) != source_key(changed)
    assert template_hash() != template_hash(env)
    # And the same templates render to the same key (the cache is content-addressed).
    assert source_key(render(spec, cfg)) == source_key(original)


@pytest.mark.parametrize("layout", ("padded", "pairs", "allpairs"))
def test_kernel_hash_follows_the_code_not_the_comments(tmp_path, layout):
    cfg = KernelConfig(block_q=16, block_d=32, block_k=64, num_warps=2, num_stages=2)
    comment = _copy_templates(tmp_path / "comment", (
        "maxsim_fwd_query.py.j2", "{% block queries %}\n",
        "{% block queries %}\n    # a new comment\n\n{% if SPLIT %}\n    # a new knob's block\n{% endif %}\n"))
    code = _copy_templates(tmp_path / "code", (
        "_doc_tiles.py.j2", 'm_i = tl.where(m_i == float("-inf"), 0.0, m_i)',
        'm_i = tl.where(m_i == float("-inf"), 1.0, m_i)'))
    base = kernel_hash(layout, "fp16", 64, "native", cfg)
    assert kernel_hash(layout, "fp16", 64, "native", cfg, comment) == base
    assert template_hash(comment) != template_hash()
    assert kernel_hash(layout, "fp16", 64, "native", cfg, code) != base
    # Every knob and every part of the family enters it, launch parameters included.
    assert kernel_hash(layout, "bf16", 64, "native", cfg) != base
    assert kernel_hash(layout, "fp16", 64, "native", replace(cfg, num_stages=3)) != base
    assert kernel_hash(layout, "fp16", 64, "native", replace(cfg, num_warps=4)) != base
    # A row is current by its kernel hash; one without is judged by its template hash.
    row = {"layout": layout, "dtype": "fp16", "dim": 64, "precision": "native", "config": cfg.to_dict()}
    assert is_current({**row, "kernel_hash": base, "template_hash": "0" * 16})
    assert not is_current({**row, "kernel_hash": "f" * 16, "template_hash": template_hash()})
    assert is_current({**row, "kernel_hash": "", "template_hash": template_hash()})
    assert not is_current({**row, "kernel_hash": "", "template_hash": "0" * 16})
    assert not is_current({**row, "config": {"block_q": 3}, "kernel_hash": base})


def test_launch_revision_enters_the_kernel_hash(monkeypatch):
    from maxsim_forge.codegen import _render

    cfg = KernelConfig(block_k=64)
    base = kernel_hash("padded", "fp16", 64, "native", cfg)
    monkeypatch.setattr(_render, "LAUNCH_REVISION", _render.LAUNCH_REVISION + 1)
    _render._kernel_hash.cache_clear()
    try:
        assert kernel_hash("padded", "fp16", 64, "native", cfg) != base
    finally:
        _render._kernel_hash.cache_clear()


def test_strict_undefined_catches_missing_values(tmp_path):
    env = _copy_templates(tmp_path / "templates", ("maxsim_fwd_query.py.j2", "{% block queries %}\n",
                                     "{% block queries %}\n    x = {{ NOT_A_VALUE }}\n"))
    with pytest.raises(jinja2.UndefinedError):
        render(KernelSpec("padded", "fp16", 128), KernelConfig(), env=env)


def test_kernel_hashes_read_the_same_on_every_python():
    """The syntax-tree text behind kernel hashes leaves out empty and None fields, so the
    Python that tunes (3.12 on the GPU machine, which added FunctionDef.type_params) and
    the Python that serves (3.11, 3.13, which leaves empty lists out of ast.dump) agree.
    The text below is what 3.11, 3.12 and 3.13 give."""
    import ast

    from maxsim_forge.codegen._render import _dump

    node = ast.parse("def f(x, *, n: int = 2):\n    return x[n] + 1.5\n").body[0]
    assert _dump(node) == (
        "FunctionDef(name='f', args=arguments(args=[arg(arg='x')], kwonlyargs=[arg(arg='n', annotation=Name(id='int', "
        "ctx=Load()))], kw_defaults=[Constant(value=2)]), body=[Return(value=BinOp(left=Subscript(value=Name(id='x', "
        "ctx=Load()), slice=Name(id='n', ctx=Load()), ctx=Load()), op=Add(), right=Constant(value=1.5)))])")
