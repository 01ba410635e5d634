"""llama.cpp (llama-cpp-python) on one GGUF file, in a process of its own: a crash in llama.cpp
(it segfaults on some AMX CPUs) then fails the test that asked, instead of ending pytest.

    echo '{"path": "m.gguf", "start": [1, 2], "n": 16, "texts": ["hi"]}' | python tests/llama_cpp_greedy.py

prints {"greedy": the n ids llama.cpp picks greedily after `start`, "tokens": llama.cpp's ids of each text}.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import llama_cpp
    import numpy as np

    request = json.load(sys.stdin)
    model = llama_cpp.Llama(model_path=request["path"], n_ctx=512, n_threads=2, verbose=False, logits_all=True,
                            type_k=0, type_v=0)  # f32 KV cache: its f16 default would blur the comparison
    model.reset()
    model.eval(request["start"])
    greedy = []
    for _ in range(request["n"]):
        token = int(np.argmax(model.scores[model.n_tokens - 1]))
        greedy.append(token)
        model.eval([token])
    tokens = [model.tokenize(text.encode(), add_bos=False, special=True) for text in request["texts"]]
    json.dump({"greedy": greedy, "tokens": tokens}, sys.stdout)


if __name__ == "__main__":
    main()
