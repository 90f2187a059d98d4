"""The models the API answers to: the server's base models and its jobs' fine-tuned ones.

Bases load once, on first use. A LoRA (or DoRA) adapter of a job attaches to its base's one copy
under the job's model name, and each batch switches to its adapter (peft `set_adapter`), so ten
fine-tuned models of one base cost one base in memory. Adapters that cannot share (prefix or prompt
tuning, IA3 beside LoRA, a vocabulary grown in training) and full fine-tunes load on their own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.serving.config import ServeConfig
from tunelab.serving.errors import APIError
from tunelab.serving.store import Store

SHARED_PEFT_TYPES = ("LORA",)


@dataclass
class Served:
    """One model name: the module that runs it, the tokenizer (with training's chat template) and
    the adapter to switch to (None: the base itself, with every adapter off)."""

    name: str
    trained: Any  # tunelab.models.restore.Trained
    adapter: str | None = None
    shared: Any = None  # the _Base this adapter lives on

    @property
    def model(self) -> Any:
        return self.trained.model

    @property
    def tokenizer(self) -> Any:
        return self.trained.tokenizer

    @contextmanager
    def active(self) -> Iterator[None]:
        """The module set to this model's weights for one batch (the caller holds the base's lock)."""
        peft = self.shared.peft if self.shared is not None else None
        if peft is None:
            yield
        elif self.adapter is None:
            with peft.disable_adapter():
                yield
        else:
            peft.set_adapter(self.adapter)
            yield


@dataclass
class _Base:
    trained: Any
    peft: Any = None  # the PeftModel around `trained.model`, once an adapter is attached
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelPool:
    def __init__(self, config: ServeConfig, store: Store):
        self.config, self.store = config, store
        self._bases: dict[str, _Base] = {}
        self._served: dict[str, Served] = {}
        self._encoders: dict[str, tuple[Any, Any]] = {}
        self._loading = threading.Lock()

    # -- listing -----------------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        bases = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "tunelab",
                "parent": None,
                "tunelab": {"kind": m.kind},
            }
            for name, m in self.config.models.items()
        ]
        tuned = [
            {
                "id": job["state"]["fine_tuned_model"],
                "object": "model",
                "created": job["state"]["finished_at"],
                "owned_by": "tunelab",
                "parent": job["body"]["model"],
                "tunelab": {"job": job["id"]},
            }
            for job in self.store.jobs_with_status("succeeded")
        ]
        return bases + tuned

    def describe(self, name: str) -> dict[str, Any]:
        for model in self.listing():
            if model["id"] == name:
                return model
        raise APIError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")

    # -- loading ---------------------------------------------------------------------------------

    def get(self, name: str) -> Served:
        with self._loading:
            if name not in self._served:
                self._served[name] = self._load(name)
            return self._served[name]

    def encoder(self, name: str) -> tuple[Any, Any]:
        """An embedding model (`kind: embed`): the bare encoder and its tokenizer, loaded once."""
        entry = self.config.models.get(name)
        if entry is None or entry.kind != "embed":
            offered = ", ".join(n for n, m in self.config.models.items() if m.kind == "embed") or "none"
            raise APIError(
                400,
                f"{name!r} is not an embedding model here; embedding models: {offered}",
                param="model",
                code="model_not_found",
            )
        with self._loading:
            if name not in self._encoders:
                from transformers import AutoModel, AutoTokenizer

                model = AutoModel.from_pretrained(entry.path).eval()
                self._encoders[name] = (model, AutoTokenizer.from_pretrained(entry.path))
            return self._encoders[name]

    def loaded(self) -> tuple[int, int]:
        """(models held in memory, adapters attached to a shared base): each own load counts as one."""
        own = sum(1 for served in self._served.values() if served.shared is None)
        adapters = sum(1 for served in self._served.values() if served.adapter is not None)
        return len(self._bases) + own, adapters

    def lock_for(self, served: Served) -> Any:
        return served.shared.lock if served.shared is not None else nullcontext()

    def _load(self, name: str) -> Served:
        if name in self.config.models:
            base = self._base(self.config.models[name].path)
            return Served(name, base.trained, None, base)
        final = self._final_of(name)
        from tunelab.models.restore import adapter_kind, load_saved_tokenizer, load_trained, read_info

        info = read_info(final)
        base_path = info["base_model"]
        tokenizer = load_saved_tokenizer(final)
        if adapter_kind(final) != "peft" or not self._can_share(final, base_path, tokenizer):
            return Served(name, load_trained(final, precision="fp32"))
        base = self._base(base_path)
        self._attach(base, final, name)
        own = _with(base.trained, tokenizer=tokenizer, info=info, task=info["task"], final_dir=final)
        return Served(name, _with(own, model=base.peft), name, base)

    def _final_of(self, name: str) -> Path:
        for job in self.store.jobs_with_status("succeeded"):
            if job["state"].get("fine_tuned_model") == name:
                return Path(job["state"]["run_dir"]) / "final"
        raise APIError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")

    def _base(self, path: str) -> _Base:
        if path not in self._bases:
            from tunelab.models.restore import load_base

            self._bases[path] = _Base(load_base(path, precision="fp32"))
        return self._bases[path]

    def _can_share(self, final: Path, base_path: str, tokenizer: Any) -> bool:
        import json

        from tunelab.models.base_adapter import BASE_ADAPTER

        if (final / BASE_ADAPTER).is_dir():  # trained over another run's merged adapter: not the raw base
            return False
        config = json.loads((final / "adapter_config.json").read_text(encoding="utf-8"))
        base = self._base(base_path)
        same_vocab = len(tokenizer) == len(base.trained.tokenizer)
        return (
            config.get("peft_type") in SHARED_PEFT_TYPES and same_vocab and not config.get("modules_to_save")
        )

    def _attach(self, base: _Base, final: Path, name: str) -> None:
        with base.lock:  # no batch runs on the base while its modules change
            if base.peft is None:
                from peft import PeftModel

                base.peft = PeftModel.from_pretrained(base.trained.model, str(final), adapter_name=name)
                base.peft.eval()
            else:
                base.peft.load_adapter(str(final), adapter_name=name)


def _with(trained: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(trained, **changes)
