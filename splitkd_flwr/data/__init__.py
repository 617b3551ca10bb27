"""Built-in corpus, tokenizer, default tiny models, local text loading and partitioning."""
