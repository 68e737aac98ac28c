"""The playground page in a real headless Chromium against a live tiny-Llama server.

What the page shows is compared with what the API answers for the same
settings (greedy), so a page that builds the wrong request, drops streamed
text or draws other numbers than the endpoint's fails here.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser_helpers import launch_chromium, open_tab
from server_helpers import MODEL_NAME, chat, post, start_server, tiny_vector

from steering.experiments.config import compose_config

PROMPT = "Please tell me a story about a dragon."
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with launch_chromium() as b:
        yield b


@pytest.fixture
def tab(browser, server):
    with open_tab(browser, server.url + "/") as t:
        yield t


def _row(vector: str) -> str:
    return f'fieldset.vector[data-vector="{vector}"]'


def _set_prompt(tab, text: str = PROMPT, max_tokens: int = MAX_TOKENS) -> None:
    tab.page.fill("#prompt", text)
    tab.page.fill("#max-tokens", str(max_tokens))


def _generate(tab) -> None:
    runs = tab.page.evaluate("Number(document.querySelector('#generate').dataset.runs || 0)")
    tab.page.focus("#generate")
    tab.page.keyboard.press("Enter")  # the button is a real submit button: the keyboard works
    tab.wait(f"Number(document.querySelector('#generate').dataset.runs || 0) > {runs}", "both panes to finish")
    tab.idle()


def _text(tab, selector: str) -> str:
    return tab.page.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")


def test_page_loads_cleanly_and_lists_the_vectors(tab, server) -> None:
    listing = httpx.get(server.url + "/v1/vectors", timeout=30).json()
    page = tab.page
    assert page.evaluate("document.body.dataset.ready") == "true"
    names = page.eval_on_selector_all("fieldset.vector", "els => els.map(e => e.dataset.vector)")
    assert names == [v["id"] for v in listing["data"]] == ["hollow", "pre", "side", "up"]
    for vector in listing["data"]:
        row = _row(vector["id"])
        layers = page.eval_on_selector_all(f"{row} .layers input", "els => els.map(e => Number(e.value))")
        assert layers == vector["layers"]
        shown = page.inner_text(row)
        assert vector["site"] in shown and all(f"{layer}: " in shown for layer in vector["layers"])
    note = page.inner_text("#vectors-note")
    assert "broken" in note and "wide" in note  # unusable files are named, not hidden
    assert page.evaluate("document.querySelector('#model-line').textContent").startswith(f"model {MODEL_NAME}")
    assert tab.errors == []
    assert tab.foreign_hosts() == set()
    # Every form control has a label; actions are buttons.
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id)""")
    assert unlabelled == []
    assert page.evaluate("document.querySelectorAll('[onclick], [role=button], div[tabindex]').length") == 0
    # The page is served with a strict CSP; the API sends no CORS header to other origins.
    home = httpx.get(server.url + "/", timeout=30)
    assert "script-src 'self'" in home.headers["content-security-policy"]
    api = httpx.get(server.url + "/v1/vectors", headers={"Origin": "http://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in api.headers


def test_generate_streams_both_panes_and_matches_the_api(tab, client) -> None:
    page = tab.page
    _set_prompt(tab)
    slider = f"{_row('up')} input[type=range]"
    page.focus(slider)
    for _ in range(30):  # +3.0 in steps of 0.1, by keyboard
        page.keyboard.press("ArrowRight")
    coef = float(page.input_value(f"{_row('up')} input[type=number]"))
    assert coef == 3.0 and page.is_checked(f"{_row('up')} input.enable")
    page.evaluate("""() => { window.__deltas = 0;
        new MutationObserver(ms => { window.__deltas += ms.length; })
          .observe(document.querySelector('#out-steered'), {childList: true, characterData: true, subtree: true}); }""")
    _generate(tab)
    plain, steered = _text(tab, "#out-plain"), _text(tab, "#out-steered")
    assert steered == chat(client, PROMPT, [{"vector": "up", "coef": 3.0}], max_tokens=MAX_TOKENS).choices[0].message.content
    assert plain == chat(client, PROMPT, max_tokens=MAX_TOKENS).choices[0].message.content
    assert plain != steered and plain and steered
    assert page.evaluate("window.__deltas") >= 3  # filled piece by piece, as the SSE chunks came
    assert tab.errors == []


def test_several_vectors_layers_positions_and_completion_mode(tab, client) -> None:
    page = tab.page
    _set_prompt(tab, "The dragon said")
    page.check("input[name=format][value=completion]")
    page.fill(f"{_row('up')} input[type=number]", "-2.5")
    page.uncheck(f"{_row('up')} .layers input[value='1']")
    page.select_option(f"{_row('up')} select[id$=positions]", "generated")
    page.fill(f"{_row('side')} input[type=number]", "2")
    page.select_option(f"{_row('side')} select[id$=mode]", "clamp")  # every st.steer mode is served per request
    _generate(tab)
    terms = [{"vector": "side", "mode": "clamp", "coef": 2}, {"vector": "up", "coef": -2.5, "layers": [2], "apply_to": "generated"}]
    want = (
        client.completions.create(
            model=MODEL_NAME, prompt="The dragon said", max_tokens=MAX_TOKENS, temperature=0, extra_body={"steering": terms}
        )
        .choices[0]
        .text
    )
    assert _text(tab, "#out-steered") == want
    assert tab.errors == []


def test_sweep_strip_shows_one_completion_per_coefficient(tab, client) -> None:
    page = tab.page
    _set_prompt(tab)
    page.select_option("#sweep-vector", "up")
    page.fill("#sweep-max", "4")
    page.fill("#sweep-steps", "5")
    page.click("#sweep")
    tab.wait("document.querySelectorAll('#sweep-strip li').length === 5", "five sweep cells")
    tab.idle()
    cells = page.eval_on_selector_all(
        "#sweep-strip li", "els => els.map(e => [Number(e.dataset.coef), e.querySelector('.completion').textContent])"
    )
    assert [c for c, _ in cells] == [-4, -2, 0, 2, 4]
    for coef, text in cells:
        assert text == chat(client, PROMPT, [{"vector": "up", "coef": coef}], max_tokens=MAX_TOKENS).choices[0].message.content, coef
    assert len({text for _, text in cells}) >= 3
    assert tab.errors == []


def test_reading_colours_every_token_with_the_endpoints_numbers(tab, server) -> None:
    page = tab.page
    _set_prompt(tab)
    page.fill(f"{_row('up')} input[type=number]", "2")
    _generate(tab)
    page.select_option("#read-vector", "up")
    page.select_option("#read-layer", "2")
    page.select_option("#read-source", "steered")
    page.click("#read")
    tab.wait("document.querySelectorAll('#read-tokens .tok').length", "the coloured tokens")
    tab.idle()
    body = {
        "model": MODEL_NAME,
        "vector": "up",
        "layer": 2,
        "messages": [{"role": "user", "content": PROMPT}],
        "completion": _text(tab, "#out-steered"),
        "steering": [{"vector": "up", "coef": 2}],
    }
    want = post(server.url, "/v1/steering/read", body).json()["tokens"]
    spans = page.eval_on_selector_all(
        "#read-tokens .tok",
        """els => els.map(e => ({text: e.textContent, projection: Number(e.dataset.projection),
        title: e.title, colour: getComputedStyle(e).backgroundColor}))""",
    )
    assert len(spans) == len(want) > 10
    assert [s["text"] for s in spans] == [t["text"] for t in want]
    assert [s["projection"] for s in spans] == [t["projection"] for t in want]  # the same float64s
    for span, token in zip(spans, want, strict=True):
        assert f"{token['projection']:.4f}" in span["title"]
        red, _, blue = _rgb(span["colour"])
        if abs(token["projection"]) > 1e-3:  # centred on 0: red along the direction, blue against it
            assert (red > blue) == (token["projection"] > 0), (token, span["colour"])
    strongest = max(range(len(want)), key=lambda i: abs(want[i]["projection"]))
    assert min(_rgb(spans[strongest]["colour"])) < 150  # the largest number gets full colour
    page.select_option("#read-centre", "median")  # recolours around the median; the numbers stay
    recoloured = page.eval_on_selector_all(
        "#read-tokens .tok", "els => els.map(e => [Number(e.dataset.projection), getComputedStyle(e).backgroundColor])"
    )
    assert [p for p, _ in recoloured] == [t["projection"] for t in want]
    median = sorted(t["projection"] for t in want)[(len(want) - 1) // 2]
    for projection, colour in recoloured:
        red, _, blue = _rgb(colour)
        if abs(projection - median) > 1e-3:
            assert (red > blue) == (projection > median)
    assert tab.errors == []


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in css[css.index("(") + 1 : css.index(")")].split(",")[:3])


def test_copy_as_curl_python_and_cli_reproduce_the_settings(tab, server, tmp_path: Path) -> None:
    page = tab.page
    _set_prompt(tab, "Tell me 'about' your \"day\".")
    page.fill(f"{_row('up')} input[type=number]", "1.5")
    _generate(tab)
    steered = _text(tab, "#out-steered")
    curl = _text(tab, "#copy-curl")
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120, check=True).stdout
    assert json.loads(out)["choices"][0]["message"]["content"] == steered
    script = tmp_path / "snippet.py"
    script.write_text(_text(tab, "#copy-python"))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == steered + "\n"
    command = [line for line in _text(tab, "#copy-cli").splitlines() if not line.startswith("#")]
    args = shlex.split(command[0])
    assert args[:2] == ["steering", "generate"]
    cfg = compose_config("generate", args[2:])
    assert (cfg.vector, float(cfg.coef), cfg.prompt, cfg.max_new_tokens, cfg.chat) == (
        "vectors/up.safetensors",
        1.5,
        "Tell me 'about' your \"day\".",
        MAX_TOKENS,
        True,
    )


def test_api_errors_appear_next_to_the_control_that_caused_them(tab) -> None:
    page = tab.page
    _set_prompt(tab)
    page.fill(f"{_row('up')} input[type=number]", "20")  # over this server's max_coef=10
    _generate(tab)
    row_error = page.inner_text(f"{_row('up')} .error")
    assert "steering[0].coef" in row_error and "10" in row_error
    assert page.get_attribute(f"{_row('up')} input[type=number]", "aria-invalid") == "true"
    assert _text(tab, "#out-plain")  # the unsteered pane still has its answer
    page.fill("#max-tokens", "500")  # over max_tokens_limit=64
    _generate(tab)
    assert "max_tokens=500" in page.inner_text("#err-max-tokens")
    assert page.get_attribute("#max-tokens", "aria-invalid") == "true"
    page.fill("#max-tokens", "8")
    page.fill(f"{_row('up')} input[type=number]", "1")
    # A sweep over the limit: the error sits by the sweep's own |coef| box.
    page.select_option("#sweep-vector", "side")
    page.fill("#sweep-max", "30")
    page.click("#sweep")
    tab.wait("document.querySelector('#err-sweep-max').textContent", "the sweep's error")
    tab.idle()
    assert "coef" in page.inner_text("#err-sweep-max") and page.get_attribute("#sweep-max", "aria-invalid") == "true"
    assert page.inner_text(f"{_row('up')} .error") == ""  # cleared: the up row is fine now
    # Reading a layer where the vector is zero: the error sits by the reading's vector picker.
    page.select_option("#read-vector", "hollow")
    page.select_option("#read-layer", "2")
    page.click("#read")
    tab.wait("document.querySelector('#err-read-vector').textContent", "the reading's error")
    assert "zero at layer 2" in page.inner_text("#err-read-vector")
    page.select_option("#read-vector", "pre")  # its only layer is 2; the layer list follows
    assert page.eval_on_selector_all("#read-layer option", "els => els.map(e => e.value)") == ["2"]
    assert page.inner_text("body").count("steering playground") == 1


def test_tab_order_follows_the_panels(tab) -> None:
    page = tab.page
    page.focus("#prompt")
    order = []
    for _ in range(90):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    wanted = [
        "max-tokens",
        "temperature",
        "top-p",
        "seed",
        "v0-enable",
        "v0-range",
        "v0-coef",
        "v3-coef",
        "generate",
        "sweep-vector",
        "sweep-max",
        "sweep",
        "read-vector",
        "read-layer",
        "read",
        "copy-curl",
    ]
    assert all(w in order for w in wanted), [w for w in wanted if w not in order]
    assert [order.index(w) for w in wanted] == sorted(order.index(w) for w in wanted), order


def test_unknown_vector_and_wrong_key_show_readable_errors(browser, tmp_path: Path) -> None:
    folder = tmp_path / "vectors"
    folder.mkdir()
    tiny_vector(7, [1]).save(folder / "fleeting.safetensors")
    srv = start_server(folder, api_key="sesame")
    try:
        with open_tab(browser, srv.url + "/") as tab:
            page = tab.page
            assert page.is_visible("#key-form")
            assert "missing API key" in page.inner_text("#err-key")
            page.fill("#api-key", "wrong")
            page.keyboard.press("Enter")
            tab.wait("document.querySelector('#err-key').textContent.includes('incorrect API key')", "the wrong-key message")
            assert page.is_visible("#key-form") and page.evaluate("document.querySelectorAll('fieldset.vector').length") == 0
            page.fill("#api-key", "sesame")
            page.keyboard.press("Enter")
            tab.wait("document.querySelectorAll('fieldset.vector').length === 1", "the vector list after the right key")
            assert not page.is_visible("#key-form")
            assert page.evaluate("sessionStorage.getItem('steering.apiKey')") == "sesame"
            page.reload()
            tab.wait("document.querySelectorAll('fieldset.vector').length === 1", "the list again, key kept for the tab")
            assert not page.is_visible("#key-form")
            (folder / "fleeting.safetensors").unlink()  # gone after the page listed it
            page.fill(f"{_row('fleeting')} input[type=number]", "2")
            _generate(tab)
            assert "unknown vector 'fleeting'" in page.inner_text(f"{_row('fleeting')} .error")
            assert page.inner_text("body").strip()  # a readable page, not a blank one
            assert all("404" in e or "Failed to load" in e for e in tab.errors), tab.errors  # only the refused request
    finally:
        srv.stop()


def test_screenshots_and_layout_at_desktop_and_phone_widths(browser, server, tmp_path: Path) -> None:
    with open_tab(browser, server.url + "/", width=1280, height=800) as tab:
        page = tab.page
        _set_prompt(tab)
        page.fill(f"{_row('up')} input[type=number]", "3")
        _generate(tab)
        page.click("#read")
        tab.wait("document.querySelectorAll('#read-tokens .tok').length", "the coloured tokens")
        shot = tmp_path / "playground-1280x800.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and _png_size(shot) == (1280, 800)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.evaluate("getComputedStyle(document.querySelector('.layout')).gridTemplateColumns.split(' ').length") == 2
        print(f"screenshot: {shot}")
    with open_tab(browser, server.url + "/", width=390, height=844) as tab:
        page = tab.page
        assert page.evaluate("getComputedStyle(document.querySelector('.layout')).gridTemplateColumns.split(' ').length") == 1
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(tmp_path / "playground-390.png"), full_page=True)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


def test_missing_chromium_fails_under_ci_and_skips_elsewhere(monkeypatch) -> None:
    import browser_helpers

    monkeypatch.setattr(browser_helpers.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        browser_helpers.chromium_or_skip()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="make install"):
        browser_helpers.chromium_or_skip()
