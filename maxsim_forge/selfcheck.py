"""A quick end-to-end check: a ColBERT-shaped random batch through a generated kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._inputs import prepare_padded
from ._problems import relative_error, tolerance
from .codegen import torch_dtype
from .reference import maxsim_reference
from .runtime import default_config, launch_prepared


@dataclass
class CheckReport:
    device: str
    shape: str
    variant: str
    rel_err: float
    tolerance: float
    sample: list[tuple[float, float]]

    @property
    def ok(self) -> bool:
        return self.rel_err <= self.tolerance

    def text(self) -> str:
        rows = "\n".join(f"  doc {i:>3}  kernel {k:>12.5f}  float64 {r:>12.5f}"
                         for i, (k, r) in enumerate(self.sample))
        verdict = "OK" if self.ok else "MISMATCH"
        return (
            f"device   {self.device}\nshape    {self.shape}\nvariant  {self.variant}\n{rows}\n"
            f"max relative error {self.rel_err:.2e} (tolerance {self.tolerance:.0e}): {verdict}"
        )


def colbert_check(*, batch: int | None = None, dtype: str = "fp16", seed: int = 0) -> CheckReport:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = batch if batch is not None else (1024 if device == "cuda" else 8)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    lq, ld, dim = 32, 300, 128
    q = torch.randn(lq, dim, generator=gen).to(device, torch_dtype(dtype))
    d = torch.randn(batch, ld, dim, generator=gen).to(device, torch_dtype(dtype))
    d_lengths = torch.randint(1, ld + 1, (batch,), generator=gen).to(device)
    prep = prepare_padded(q, d, d_lengths=d_lengths)
    cfg = default_config(prep.spec, **prep.sizes)
    out = launch_prepared(prep, cfg)
    ref = maxsim_reference(q, d, d_lengths=d_lengths)
    rel = relative_error(out, ref, float(maxsim_reference(q, d, d_lengths=d_lengths, absolute=True).max()))
    sample = list(zip(out[:5].tolist(), ref[:5].tolist()))
    from .codegen import variant_name

    return CheckReport(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
        shape=f"q [{lq}, {dim}] x d [{batch}, {ld}, {dim}] {dtype}, ragged doc lengths",
        variant=variant_name(prep.spec, cfg),
        rel_err=rel,
        tolerance=tolerance(prep.spec),
        sample=sample,
    )
