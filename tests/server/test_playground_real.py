"""The playground on SmolLM2-135M-Instruct with a sentiment vector extracted from the bundled pairs.

Screenshots (the 1280x800 view and the whole page at 1280 wide) go to the
test's tmp dir; set ``STEERING_WRITE_DOCS=1`` to also write the whole page
to ``docs/playground.png``, the README's picture.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from statistics import mean

import httpx
import pytest
from browser_helpers import launch_chromium, open_tab
from openai import OpenAI
from server_helpers import SMOL_NAME, start_smol_server

from steering.server import BackgroundServer

pytestmark = pytest.mark.slow

NAME = SMOL_NAME
PROMPT = "Write two sentences about your last trip to the supermarket."
MAX_TOKENS = 40
DOCS = Path(__file__).resolve().parents[2] / "docs" / "playground.png"


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    server = start_smol_server(tmp_path_factory.mktemp("smol_play_vectors"), [10, 12, 14])
    try:
        yield server
    finally:
        server.stop()


def _chat(client: OpenAI, steering: list[dict] | None) -> str:
    extra = {"steering": steering} if steering else None
    out = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS, temperature=0, extra_body=extra
    )
    return out.choices[0].message.content or ""


def test_playground_on_smollm2_with_a_sentiment_vector(smol_server, tmp_path: Path) -> None:
    client = OpenAI(base_url=f"{smol_server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    row = 'fieldset.vector[data-vector="sentiment"]'
    with launch_chromium() as browser, open_tab(browser, smol_server.url + "/") as tab:
        page = tab.page
        page.fill("#prompt", PROMPT)
        page.fill("#max-tokens", str(MAX_TOKENS))
        page.uncheck(f"{row} .layers input[value='10']")
        page.uncheck(f"{row} .layers input[value='14']")
        page.fill(f"{row} input[type=number]", "6")
        page.click("#generate")
        tab.wait("Number(document.querySelector('#generate').dataset.runs || 0) > 0", "both panes", timeout=300)
        tab.idle()
        term = {"vector": "sentiment", "coef": 6, "layers": [12]}
        steered, plain = page.inner_text("#out-steered"), page.inner_text("#out-plain")
        assert steered == _chat(client, [term]) and plain == _chat(client, None) and steered != plain

        page.select_option("#sweep-vector", "sentiment")
        page.fill("#sweep-max", "6")
        page.fill("#sweep-steps", "3")
        page.click("#sweep")
        tab.wait("document.querySelectorAll('#sweep-strip li').length === 3", "three sweep cells")
        tab.idle()
        cells = page.eval_on_selector_all("#sweep-strip li .completion", "els => els.map(e => e.textContent)")
        assert cells[1] == plain and cells[2] == steered and len(set(cells)) == 3

        page.select_option("#read-vector", "sentiment")
        page.select_option("#read-layer", "12")
        page.click("#read")
        tab.wait("document.querySelectorAll('#read-tokens .tok').length", "the coloured tokens", timeout=300)
        tab.idle()
        spans = page.eval_on_selector_all("#read-tokens .tok.part-completion", "els => els.map(e => Number(e.dataset.projection))")
        page.select_option("#read-centre", "median")  # the steering shifts every token; show the spread around it
        page.screenshot(path=str(tmp_path / "playground-smollm2-1280x800.png"))
        page.screenshot(path=str(tmp_path / "playground-smollm2.png"), full_page=True)
        if os.environ.get("STEERING_WRITE_DOCS") == "1":
            shutil.copyfile(tmp_path / "playground-smollm2.png", DOCS)
        assert tab.errors == [] and tab.foreign_hosts() == set()

    # The steered completion, read under its steering, points further along the sentiment direction than the plain one.
    body = {"model": NAME, "vector": "sentiment", "layer": 12, "messages": [{"role": "user", "content": PROMPT}]}
    plain_read = httpx.post(smol_server.url + "/v1/steering/read", json={**body, "completion": plain}, timeout=300).json()
    assert mean(spans) > mean(t["projection"] for t in plain_read["tokens"] if t["part"] == "completion")
