"""llmkit.tokenizer: train and load tokenizers (Hugging Face files), chat templates, streaming decode.

Built on the `tokenizers` library; behaves like `transformers.AutoTokenizer` on the same files.
"""

from llmkit.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from llmkit.tokenizer.stream import StreamDecoder
from llmkit.tokenizer.tokenizer import END_MARKERS, Tokenizer

__all__ = ["DEFAULT_CHAT_TEMPLATE", "END_MARKERS", "StreamDecoder", "Tokenizer", "render_chat"]
