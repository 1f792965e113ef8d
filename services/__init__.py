"""The jetledger services, their shared runtime and the CLI.

gRPC's fork handlers restart its pollers in a forked child; when that child is a ``subprocess``
on its way to ``exec`` (``close_fds`` closes the poller's epoll fd first), the poller aborts the
child with SIGABRT. Our processes start children while gRPC is live (``jetledger dev``, the
tests), and every child execs at once, so gRPC's fork support is of no use here: switch it off
before gRPC initialises. An explicit setting in the environment wins.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
