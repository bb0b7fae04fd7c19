"""streamgw: a Trio-based streaming gateway serving the OpenAI Responses API in front of many providers."""

__version__ = "0.1.0"
