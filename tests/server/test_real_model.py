"""The server on the real SmolLM2-135M-Instruct: +coef and -coef change the answer, batching stays exact."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI
from server_helpers import SMOL_NAME, start_smol_server, wait_until

import steering as st
from steering.server import BackgroundServer

pytestmark = pytest.mark.slow

NAME = SMOL_NAME
PROMPT = "Write one sentence about your weekend."


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    server = start_smol_server(tmp_path_factory.mktemp("smol_vectors"), [12])
    try:
        yield server
    finally:
        server.stop()


def _ask(client: OpenAI, coef: float | None) -> str:
    steering = None if coef is None else {"steering": [{"vector": "sentiment", "coef": coef}]}
    out = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PROMPT}], max_tokens=24, extra_body=steering)
    return out.choices[0].message.content or ""


def test_plus_and_minus_coef_change_the_completion(smol_server) -> None:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    client = OpenAI(base_url=f"{smol_server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    plain, happy, sad = _ask(client, None), _ask(client, 4.0), _ask(client, -4.0)
    assert len({plain, happy, sad}) == 3, (plain, happy, sad)
    model, tok = st.load_model(NAME)  # the library's own steered generation, on a second instance
    vector = st.SteeringVector.load(smol_server.app.state.serving.ctx.store.path_of("sentiment"))
    assert [happy, sad] == [st.generate(model, tok, PROMPT, vector, c, max_new_tokens=24) for c in (4.0, -4.0)]
    vader = SentimentIntensityAnalyzer()
    assert vader.polarity_scores(happy)["compound"] > vader.polarity_scores(sad)["compound"], (happy, sad)

    engine = smol_server.app.state.serving.engine
    with ThreadPoolExecutor(3) as pool:
        with engine.paused():
            futures = [pool.submit(_ask, client, coef) for coef in (None, 4.0, -4.0)]
            wait_until(lambda: engine.load[1] == 3, "the three requests to queue")
        assert [f.result(timeout=300) for f in futures] == [plain, happy, sad]
