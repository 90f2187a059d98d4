"""Encoders behind `tunelab serve`: /v1/embeddings from a `kind: embed` model, and /v1/classifications
from a classifier fine-tuned through the jobs API (a served model whose recipe says task classify)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from tests.conftest import LABELED
from tests.serving import JOB_DEFAULTS, client, live_server, serve_config, upload, wait_for
from tunelab.data.inputs import PredictInput
from tunelab.inference import predict_scores
from tunelab.models.restore import load_trained
from tunelab.serving.config import load_serve_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = serve_config(tmp_path_factory.mktemp("serve"), tiny_bert)
    models = {"enc": {"path": str(tiny_bert), "kind": "embed"},
              "bert": {"path": str(tiny_bert), "recipe": {"task": "classify", "data": {"template": "auto"}}}}  # fmt: skip
    config = load_serve_config(None, root=base.root, models=models, job_defaults=JOB_DEFAULTS, poll_s=0.1)
    with live_server(config) as (url, key):
        yield client(url, key)


def test_embeddings_are_the_encoders_unit_mean_pooled_vectors(api: openai.OpenAI, tiny_bert: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["what is my balance", "send fifty dollars to my savings please"]
    reply = api.embeddings.create(model="enc", input=texts)
    assert [d.index for d in reply.data] == [0, 1] and reply.usage.prompt_tokens > 0
    model, tokenizer = AutoModel.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)
    for text, item in zip(texts, reply.data, strict=True):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(0), dim=0)
        torch.testing.assert_close(torch.tensor(item.embedding), expected, atol=1e-5, rtol=0)
    with pytest.raises(openai.BadRequestError):
        api.embeddings.create(model="bert", input="not an embedding model")


def test_a_classifier_fine_tuned_through_jobs_answers_with_labels_and_probabilities(
    api: openai.OpenAI, tmp_path: Path
) -> None:
    training = upload(api, tmp_path / "labels.jsonl", LABELED)
    job = wait_for(api, api.fine_tuning.jobs.create(model="bert", training_file=training.id).id)
    assert job.status == "succeeded", job.error
    texts = ["how much is in my account", "my card was stolen"]
    reply = api.post("/classifications", cast_to=object, body={"model": job.fine_tuned_model, "input": texts})
    trained = load_trained(Path(job.tunelab["run_dir"]), precision="fp32")
    expected = predict_scores(trained, [PredictInput(text=t) for t in texts], batch_size=8, max_seq_len=512)
    for got, want in zip(reply["data"], expected, strict=True):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
    with pytest.raises(openai.BadRequestError) as caught:  # a classifier does not chat
        api.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_generative"
