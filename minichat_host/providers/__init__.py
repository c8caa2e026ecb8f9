"""LLM providers: the interface the domain calls (`base`), the adapters (`local`, `openai_responses`,
`openai_chat`), the shared SSE parser and HTTP plumbing, and the Files / Vector Stores client used by
the OpenAI and Azure storage plugins (`files_api`)."""
