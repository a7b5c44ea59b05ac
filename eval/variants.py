"""One run of an ablation plan (``Variant``) and what it gave (``VariantResult``), with the labels
made from its settings: shared by the plan (``eval.ablation``), its plots and the paper's layout."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from geoguide.eval.records import RunSummary
from geoguide.eval.spec import RunSpec


class Variant(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    spec: RunSpec
    settings: dict[str, Any]  # what it sets beyond [base], as written in the plan (for labels)
    row: str = ""  # the [[variant]] it came from ("" for a grid-only plan)
    grid: dict[str, Any] = {}  # its [grid] values
    descriptor: str = ""  # the [[descriptor]] it runs with ("" for a plan without them)


class VariantResult(BaseModel):
    variant: Variant
    summary: RunSummary
    errors_km: list[float | None]  # one per photo of the run, None = no answer


def value_name(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={value_name(v)}" for k, v in settings.items()) or "base"
