"""The recipe's privacy and safety settings: DP-SGD (`train.privacy`) and the content screen
(`data.content_screen`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config.base import Section


class PrivacyConfig(Section):
    """DP-SGD through Opacus (training/privacy.py): each example's gradient is clipped, Gaussian noise is
    added to their sum, and an accountant turns the noise and the sampling rate into (epsilon, delta)."""

    target_epsilon: float = Field(gt=0, description="The privacy budget epsilon the whole run may spend.")
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
