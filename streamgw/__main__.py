"""``python -m streamgw serve ...``."""

from streamgw.cli import main

main()
