"""Stored responses: ``GET/DELETE /v1/responses/{id}``, ``input_items`` and ``previous_response_id``."""
