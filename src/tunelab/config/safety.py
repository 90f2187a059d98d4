"""The recipe's privacy, safety and balance settings: DP-SGD (`train.privacy`), the content screen
(`data.content_screen`), the canary audit (`eval.canaries`), the bias report (`eval.bias`) and
augmentation (`data.augment`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tunelab.config.base import Section


class PrivacyConfig(Section):
    """DP-SGD through Opacus (training/privacy.py): each example's gradient is clipped, Gaussian noise is
    added to their sum, and an accountant turns the noise and the sampling rate into (epsilon, delta)."""

    target_epsilon: float = Field(
        gt=0,
        le=100,
        description="The privacy budget epsilon the whole run may spend (over 100 guarantees nothing).",
    )
    target_delta: float | None = Field(
        None, gt=0, lt=1, description="The delta of (epsilon, delta)-DP; null: 1 / the training examples."
    )
    max_grad_norm: float = Field(
        1.0,
        gt=0,
        description="Each example's gradient is clipped to this L2 norm (replaces train.max_grad_norm).",
    )
    accountant: Literal["prv", "rdp", "gdp"] = Field(
        "prv", description="Opacus' privacy accountant: prv (tightest), rdp (Renyi DP) or gdp (Gaussian DP)."
    )


class ContentScreen(Section):
    """data/screen.py: each row's texts scored for offensive content, flagged rows named by file:line."""

    scorer: Literal["profanity", "detoxify", "openai"] = Field(
        "profanity",
        description="profanity: alt-profanity-check, offline; detoxify: the detoxify package, if installed; "
        "openai: an OpenAI-compatible /moderations endpoint (data.content_screen.endpoint, OPENAI_API_KEY).",
    )
    action: Literal["report", "drop", "fail"] = Field(
        "report",
        description="report: list flagged rows in report.json; drop: also leave them out of train; fail: stop "
        "when train's flagged share is over max_flagged_share. Held-out splits are only reported.",
    )
    threshold: float = Field(0.5, ge=0, le=1, description="A text is flagged at this score or above.")
    max_flagged_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="The share of flagged train rows above which report warns and fail stops.",
    )
    endpoint: str | None = Field(
        None, description="scorer openai: the API base URL (default OPENAI_BASE_URL, else api.openai.com/v1)."
    )
    model: str = Field("omni-moderation-latest", description="scorer openai: the moderation model.")


class Canaries(Section):
    """evaluation/canaries.py: the Secret Sharer's memorisation audit (Carlini et al., 2019)."""

    repetitions: list[int] = Field(
        default_factory=lambda: [1, 4, 16],
        min_length=1,
        description="How many times each group of canaries is put in train; a group of the same size is "
        "never put in, as the control.",
    )
    per_repetition: int = Field(2, ge=1, le=50, description="Canaries in each group.")
    digits: int = Field(6, ge=3, le=12, description="Length of each canary's random secret, in digits.")
    candidates: int = Field(
        500,
        ge=10,
        description="Random secrets each canary is ranked against: exposure = log2(candidates + 1) - "
        "log2(rank), so this caps the exposure that can be measured.",
    )
    seed: int = Field(0, description="Draws the secrets, the candidates and where the canaries go in train.")

    @field_validator("repetitions")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value) or len(set(value)) != len(value):
            raise ValueError("repetitions are distinct counts of 1 or more, e.g. [1, 4, 16]")
        return sorted(value)


class BiasConfig(Section):
    """evaluation/bias.py: identity terms against labels (data) and against the classifier's errors."""

    terms: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Subgroups to add, or whose terms to replace, over the built-in list (evaluation/bias.py "
        "TERMS), e.g. {vegan: [vegan, vegans]}; matched as whole words, any case.",
    )
    max_gap: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Warn when P(label | subgroup) differs from P(label) by more, or when a subgroup's "
        "accuracy or AUC is this much below the overall figure.",
    )
    min_mentions: int = Field(20, ge=1, description="Rows a subgroup needs before a warning is given.")
    positive_label: str | None = Field(
        None, description="The class the AUCs rank by probability; default: the second of two classes."
    )


class AugmentConfig(Section):
    """data/augment.py: new classify train rows that keep their source row's label."""

    method: Literal["eda", "paraphrase"] = Field(
        "eda",
        description="eda: random swap, deletion and insertion of the row's words (Wei and Zou, 2019); "
        "paraphrase: an instruction model rewrites the row (data.augment.model or .endpoint).",
    )
    copies: int = Field(1, ge=1, le=16, description="New rows made from each train row (before the gates).")
    swap: float = Field(0.1, ge=0, le=1, description="eda: words swapped, as a share of the row's words.")
    delete: float = Field(0.1, ge=0, lt=1, description="eda: each word's chance of being left out.")
    insert: float = Field(
        0.1, ge=0, le=1, description="eda: words inserted (copies of the row's own), as a share."
    )
    model: str | None = Field(
        None,
        description="paraphrase: a local instruction model (a folder or .gguf file) run on this machine.",
    )
    endpoint: str | None = Field(
        None, description="paraphrase: an OpenAI-compatible API base URL instead (key: OPENAI_API_KEY)."
    )
    endpoint_model: str = Field("gpt-4o-mini", description="paraphrase with endpoint: the model asked.")
    prompt: str = Field(
        "Rewrite this sentence in other words. Keep its meaning and its tone. Answer with the sentence only."
        "\n\n{text}",
        description="paraphrase: the instruction, with {text} for the row's text.",
    )
    temperature: float = Field(0.7, ge=0, le=2, description="paraphrase: sampling temperature (0: greedy).")
    max_new_tokens: int = Field(64, ge=1, description="paraphrase: longest rewrite, in tokens.")
