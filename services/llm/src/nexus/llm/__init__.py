"""The llm service: chat and embeddings over every provider, local models, conversations,
semantic search, caching, usage and budgets."""
