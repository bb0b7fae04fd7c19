"""``streamgw.asgi:app`` for ASGI servers started by hand (and for ``--workers N``).

The configuration comes from ``$STREAMGW_CONFIG`` and the environment.
"""

from streamgw.app.routes import create_app
from streamgw.config import load_config

app = create_app(load_config())
