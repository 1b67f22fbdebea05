//! A fake of the OpenAI Admin API (see `../shared/reference/openai-admin-api.md`).
