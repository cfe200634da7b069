"""The HTTP protocol: every request and response shape of both APIs, as pydantic models.

native holds the native API's (and the transcription options both APIs take), openai the /v1 API's, and
validation turns pydantic's errors into the service's own 400s. The OpenAPI document is generated from them.
"""
