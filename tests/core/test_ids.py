"""``random_hex``: ids cut from one read of the system's random source, never the same twice, nor in a fork."""

from __future__ import annotations

import os
import re

from streamgw.core.ids import random_hex


def test_ids_are_hex_of_the_asked_length_and_all_different_across_refills() -> None:
    ids = [random_hex(n) for _ in range(1500) for n in (8, 16, 24)]  # several 4 KiB reads
    assert all(re.fullmatch(r"[0-9a-f]+", value) for value in ids)
    assert [len(value) for value in ids[:3]] == [16, 32, 48]
    assert len(set(ids)) == len(ids)
    assert len(random_hex(5000)) == 10000  # more than one read's worth at once


def test_a_forked_child_does_not_hand_out_the_parents_next_ids() -> None:
    random_hex(8)  # the pool holds unread bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, ",".join(random_hex(24) for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        childs = pipe.read().split(",")
    mine = [random_hex(24) for _ in range(3)]
    assert len(childs) == 3 and not set(childs) & set(mine)
