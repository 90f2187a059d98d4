"""How a data file is read for scoring and prediction: a run's own data settings unless told otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from tunelab.data.fields import Columns
from tunelab.models.restore import read_recipe


@dataclass(frozen=True)
class DataSettings:
    """How `tunelab eval` reads and cuts a data file: a run's own settings unless told otherwise, so
    scoring a run's own file gives the run's numbers."""

    format: str = "auto"
    columns: Columns = field(default_factory=Columns)
    max_seq_len: int = 512
    # Columns holding reference answers (generative metrics): each example scores its best one.
    references: tuple[str, ...] = ()

    @classmethod
    def of_run(cls, run_dir: Path | None) -> DataSettings:
        """The run's recipe.yaml data and length settings (the defaults for a base model)."""
        recipe = read_recipe(run_dir)
        data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
        train = recipe.get("train") if isinstance(recipe.get("train"), dict) else {}
        assert isinstance(data, dict) and isinstance(train, dict)
        columns = Columns(
            text=str(data.get("text_column", "text")),
            label=str(data.get("label_column", "label")),
            text_pair=data.get("text_pair_column"),
            rename=dict(data.get("columns") or {}),
            prompt_template=data.get("prompt_template"),
            system_prompt=data.get("system_prompt"),
        )
        fmt = data.get("format", "auto") if isinstance(data.get("format"), str) else "auto"
        return cls(format=fmt, columns=columns, max_seq_len=int(train.get("max_seq_len", 512)))

    def overridden(
        self,
        *,
        format: str | None = None,
        rename: dict[str, str] | None = None,
        text: str | None = None,
        label: str | None = None,
        max_seq_len: int | None = None,
        references: tuple[str, ...] = (),
    ) -> DataSettings:
        """These settings with the ones given (not None, not empty) in their place; renames add up."""
        columns = replace(
            self.columns,
            text=text or self.columns.text,
            label=label or self.columns.label,
            rename={**self.columns.rename, **(rename or {})},
        )
        return DataSettings(
            format=format or self.format,
            columns=columns,
            max_seq_len=max_seq_len or self.max_seq_len,
            references=references or self.references,
        )
