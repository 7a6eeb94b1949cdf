"""The OpenAI Responses API on the one tool loop: its parser (`wire`), renderers (`render`)
and handlers (`routes`), beside the Chat Completions ones."""
