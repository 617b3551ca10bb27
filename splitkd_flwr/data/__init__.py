"""Built-in corpus, tokenizer, default tiny models, text loading and partitioning."""
