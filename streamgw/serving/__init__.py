"""How streamgw is served: fixes and switches for the hypercorn trio worker (see ``hypercorn_trio``)."""
