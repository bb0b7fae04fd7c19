"""``streamgw.asgi:app`` for ASGI servers started by hand (``hypercorn -k trio streamgw.asgi:app``).

The configuration comes from ``$STREAMGW_CONFIG`` and the environment; an invalid one ends the
importing process with status 2 and its problems on stderr.

The graceful drain on SIGTERM (``/readyz`` at 503, in-flight streams ended with an honest
``response.failed`` at ``[server] drain_timeout``) is a feature of ``streamgw serve``, which runs
its own accept loop (``streamgw.serving.worker``).  A server started by hand tells the application of its
shutdown only through the lifespan protocol, after every connection has finished or been cut, so
under it hypercorn's own ``--graceful-timeout`` applies and streams still running then are cut
without a terminal event.  Importing this module does install the connection fixes of
``streamgw.serving.hypercorn_trio`` (HTTP/2 writes, scheduling) into hypercorn.
"""

from streamgw.cli import exit_on_config_error, require_versions

require_versions()  # before hypercorn's internals are imported: a mismatch is named, not an ImportError
from streamgw.app.routes import create_app  # noqa: E402
from streamgw.config import ConfigError  # noqa: E402
from streamgw.config_loader import load_config  # noqa: E402
from streamgw.serving.hypercorn_trio import install  # noqa: E402

install()  # hypercorn's trio worker with serialised writes and fair HTTP/2 scheduling (see that module)
try:
    _config = load_config()
except ConfigError as _error:
    # A clear line and exit status 2 from the process importing the app, not a traceback.
    exit_on_config_error(_error)
app = create_app(_config)
